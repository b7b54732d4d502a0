"""locodiff: compositional generalization in conditional diffusion models through locality.

Stages (one subpackage each) meet at a few plain types:
``scenes.Scene``/``scenes.SceneBatch`` -> ``conditioning.Conditioning`` -> ``Denoiser`` protocol.
"""

__version__ = "0.1.0"

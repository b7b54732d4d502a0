"""locodiff models as diffusers users expect them: a ``ModelMixin`` model, a ``DiffusionPipeline``
and ``locodiff export RUN OUT``, which writes a trained run as a folder diffusers loads.

Needs the optional ``diffusers`` dependency (``pip install locodiff[diffusers]``); nothing else in
locodiff imports this package.
"""

from .folder import export_run
from .model import LocodiffModel
from .pipeline import LocodiffPipeline

__all__ = ["LocodiffModel", "LocodiffPipeline", "export_run"]

"""Post hoc locality: masked composition of a trained model's single-conditioner predictions.

Exp 2's network sees every conditioner everywhere, so nothing stops a location token from
changing pixels far away, and asking it for many objects at once is out of distribution. The
intervention rebuilds the prediction for k conditioners from k calls with one conditioner each
(the model saw single labels in training) and lets conditioner j act only inside a window m_j
around its own location:

    D_hat(x) = D_bg(x) + sum_j m_j * (D(x | c_j) - D_bg(x))

Because the score is affine in D, this is exactly the score composition
``s_bg + sum_j m_j (s_j - s_bg)`` of the paper (form (c) in PAPER_NOTES): a local conditional
score by construction in its conditioners, whatever the network does inside each window. No
retraining; the cost is k + 1 network calls per step (batched into one call).
"""

from __future__ import annotations

from torch import Tensor

from ..conditioning import Conditioning, location_windows
from ..denoiser import Denoiser
from ..diffusion.guidance import Background, ScoreComposition


def masked_composition(
    denoiser: Denoiser, radius_px: float, background: Background = "null", softness_px: float = 0.5,
    chunk_size: int | None = None,
) -> ScoreComposition:
    """``denoiser`` made conditionally local: each conditioner acts only within ``radius_px`` of
    its location (see module doc). ``background`` as in ``ScoreComposition``."""
    location_windows(Conditioning.empty(1), 1, 1, radius_px, softness_px)  # validate now, not mid-sampling

    def windows(cond: Conditioning, x: Tensor) -> Tensor:
        return location_windows(cond, x.shape[-2], x.shape[-1], radius_px, softness_px)

    return ScoreComposition(denoiser, background, weights=windows, chunk_size=chunk_size)

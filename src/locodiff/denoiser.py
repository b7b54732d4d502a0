"""The ``Denoiser`` protocol: the seam between networks and every analysis tool.

A denoiser maps a noisy image ``x`` at noise level ``sigma`` and a conditioning to an estimate of
the clean image ``x0``. Images live in [-1, 1], shape [B, C, H, W]; ``sigma`` is a [B] tensor.
The score follows from Tweedie's formula: ``score = (D(x; sigma, c) - x) / sigma^2``.
Anything callable with this signature (a trained locodiff model, an analytic denoiser, a wrapped
diffusers UNet) works with the samplers, the evaluator and the locality probe.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from .conditioning import Conditioning


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor: ...


ConditionedOn = Literal["locations", "captions"]


def conditioned_on(denoiser: Denoiser) -> ConditionedOn:
    """What a denoiser reads of a ``Conditioning``, as it declares in its ``conditioned_on``:
    "captions" for a caption model (its locations are words, so a location Jacobian says nothing
    about it), "locations" for one that declares nothing (analytic, adapted, locodiff's own)."""
    return getattr(denoiser, "conditioned_on", "locations")


def as_sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a scalar or [B] sigma to a [B] tensor on ``x``'s device and dtype."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(x.shape[0])


def score(denoiser: Denoiser, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
    """The score ``grad_x log p_sigma(x | c) = (D(x; sigma, c) - x) / sigma^2``."""
    s = as_sigma_batch(sigma, x)
    return (denoiser(x, s, cond) - x) / s.reshape(-1, 1, 1, 1) ** 2

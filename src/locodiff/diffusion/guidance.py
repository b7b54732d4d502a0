"""Combining denoisers: classifier-free guidance and score composition.

Both are linear combinations of scores at the same ``(x, sigma)``. Because the score is affine in
the denoiser's output, ``s = (D - x) / sigma^2``, any combination ``sum_j a_j s_j`` with
``sum_j a_j = 1`` is the score of the denoiser ``sum_j a_j D_j``; so both wrappers work in x0 space
and are themselves Denoisers that any sampler or probe accepts.

Why the background of a composition matters
-------------------------------------------
Composition builds the score for k conditioners from single-conditioner scores,

    s_hat = s_b + sum_i w_i (s_i - s_b),

where each difference ``s_i - s_b`` is "what conditioner i changes relative to the background".
This is exact (a *projective composition*, Bradley et al. 2025) when the distribution factorizes:
each conditioner governs its own pixel region and ``p_b`` describes everything else. For scenes of
objects, the region outside every object is *empty floor*, so the right background is the
distribution of empty scenes. Using the unconditional distribution instead (the model's null
conditioning, i.e. Bayes composition ``p(x) prod_i p(x|c_i)/p(x)``) subtracts the *typical*
training image, which already holds 1-3 objects; the objects the background "expects" compete
with the requested ones and the composed samples contain too few objects as k grows. The
predecessor paper observed exactly this: empty-scene backgrounds compose many objects,
unconditional backgrounds do not. Hence ``background`` is a required, explicit choice here.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning
from ..denoiser import Denoiser, as_sigma_batch
from .schedule import InputError

Background = Union[str, Conditioning, Denoiser]


class ClassifierFreeGuidance(nn.Module):
    """Guided denoiser ``D_null + scale (D_cond - D_null)`` (Ho & Salimans 2022, in x0 space).

    The null conditioning is the empty set, which a model trained with conditioning dropout has
    learned as "unconditional". ``scale = 1`` is the conditional model itself (one pass);
    ``scale = 0`` the unconditional one; ``scale > 1`` sharpens towards the condition. Both passes
    run as one batch of 2B images unless ``chunk_size`` caps the batch size per call.
    """

    def __init__(self, denoiser: Denoiser, scale: float, chunk_size: int | None = None) -> None:
        super().__init__()
        _check_chunk(chunk_size)
        self.denoiser = denoiser
        self.scale = float(scale)
        self.chunk_size = chunk_size

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        _check_batch(x, cond)
        if self.scale == 1.0:
            return self.denoiser(x, sigma, cond)
        sigma = as_sigma_batch(sigma, x)
        null = cond.drop(torch.zeros(x.shape[0], dtype=torch.bool, device=cond.device))
        out = _call_batched(
            self.denoiser,
            torch.cat([x, x]),
            torch.cat([sigma, sigma]),
            Conditioning.cat([cond, null]),
            self.chunk_size,
        )
        d_cond, d_null = out.chunk(2)
        return d_null + self.scale * (d_cond - d_null)


class ScoreComposition(nn.Module):
    """Compose single-conditioner scores: ``s_hat = s_b + sum_i w_i (s_i - s_b)`` (see module doc).

    ``s_i`` is the model's score given conditioner i alone; only slots present in an image's mask
    contribute, so images with different numbers of conditioners share a batch and an image with
    none gets the background. ``background`` is one of

    - ``"null"``: the model's own null (empty-set) conditioning, i.e. the unconditional model;
    - a ``Conditioning`` (batch 1 or B) meaning the background, e.g. "an empty scene";
    - another Denoiser, e.g. a model trained on empty scenes (called with null conditioning).

    ``weights``: None (all 1), a float, a tensor [N] per slot, [B, N] per image and slot, or
    [B, N, H, W] per pixel (spatial windows, as in masked composition); or a callable
    ``(cond, x) -> tensor`` of one of those shapes, evaluated at every call.
    All single-conditioner passes (and the background pass, if it uses the same model) are
    concatenated into one call, or calls of at most ``chunk_size`` images.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        background: Background,
        weights: Tensor | float | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(background, str) and background != "null":
            raise InputError(
                f"background must be 'null', a Conditioning or a Denoiser, got {background!r}"
            )
        if not isinstance(background, (str, Conditioning)) and not callable(background):
            raise InputError(
                f"background must be 'null', a Conditioning or a Denoiser, got {type(background)}"
            )
        _check_chunk(chunk_size)
        self.denoiser = denoiser
        self.background = background
        self.weights = weights
        self.chunk_size = chunk_size

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        _check_batch(x, cond)
        b, n = cond.batch_size, cond.slots
        sigma = as_sigma_batch(sigma, x)
        img, slot = cond.mask.nonzero(as_tuple=True)  # one row per present conditioner
        # Conditioning with only conditioner `slot` of image `img`, for every present pair.
        only = torch.nn.functional.one_hot(slot, n).bool()
        attrs = None if cond.attributes is None else cond.attributes[img]
        singles = Conditioning(cond.locations[img], only, attrs)

        xs, sigmas, conds = [x[img]], [sigma[img]], [singles]
        own_background = isinstance(self.background, (str, Conditioning))
        if own_background:
            xs.append(x)
            sigmas.append(sigma)
            conds.append(self._background_conditioning(cond))
        else:
            null = cond.drop(torch.zeros(b, dtype=torch.bool, device=cond.device))
            d_back = self.background(x, sigma, null)
            if len(img) == 0:  # nothing to compose: spare the model an empty batch
                return d_back
        batch = (torch.cat(xs), torch.cat(sigmas), Conditioning.cat(conds))
        out = _call_batched(self.denoiser, *batch, self.chunk_size)
        d_single = out[: len(img)]
        d_back = out[len(img) :] if own_background else d_back.to(out.dtype)

        w = self._weights(cond, x)[img, slot]
        w = w[:, None] if w.ndim == 3 else w.reshape(-1, 1, 1, 1)
        diffs = w * (d_single - d_back[img])
        return d_back.index_add(0, img, diffs)

    def _background_conditioning(self, cond: Conditioning) -> Conditioning:
        if isinstance(self.background, str):  # "null"
            return cond.drop(torch.zeros(cond.batch_size, dtype=torch.bool, device=cond.device))
        bg = self.background.to(cond.device)
        if bg.batch_size == 1:
            bg = bg.repeat(cond.batch_size)
        if bg.batch_size != cond.batch_size:
            raise InputError(
                f"background conditioning has batch size {bg.batch_size}; expected 1 or "
                f"{cond.batch_size}"
            )
        return bg

    def _weights(self, cond: Conditioning, x: Tensor) -> Tensor:
        """Weights as a [B, N] or [B, N, H, W] tensor."""
        b, n = cond.batch_size, cond.slots
        if self.weights is None:
            return x.new_ones(b, n)
        weights = self.weights(cond, x) if callable(self.weights) else self.weights
        w = torch.as_tensor(weights).to(dtype=x.dtype, device=x.device)
        if w.ndim == 0 or tuple(w.shape) in ((n,), (b, n)):
            return w.expand(b, n)
        if tuple(w.shape) == (b, n, *x.shape[-2:]):
            return w
        raise InputError(
            f"weights of shape {tuple(w.shape)} do not fit {b} images x {n} slots; expected a "
            f"float, [{n}] (one per slot), [{b}, {n}] or [{b}, {n}, {x.shape[-2]}, {x.shape[-1]}] (per pixel)"
        )


def _call_batched(
    denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Conditioning, chunk_size: int | None
) -> Tensor:
    """One denoiser call on the whole batch, or several calls of at most ``chunk_size`` images."""
    if chunk_size is None or x.shape[0] <= chunk_size:
        return denoiser(x, sigma, cond)
    parts = [
        denoiser(x[i : i + chunk_size], sigma[i : i + chunk_size], cond[i : i + chunk_size])
        for i in range(0, x.shape[0], chunk_size)
    ]
    return torch.cat(parts)


def _check_batch(x: Tensor, cond: Conditioning) -> None:
    if x.ndim != 4:
        raise InputError(f"x must have shape [B, C, H, W], got {tuple(x.shape)}")
    if cond.batch_size != x.shape[0]:
        raise InputError(
            f"conditioning has batch size {cond.batch_size} but x has {x.shape[0]} images"
        )


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size must be None or >= 1, got {chunk_size}")

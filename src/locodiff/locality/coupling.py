"""Where the coupling lives: the extrapolation probe again, with GroupNorm statistics held fixed.

A GroupNorm pools its mean and variance over the whole image, so every object in the scene
rescales every other object's features: a coupling through *how much* is drawn that no
Jacobian at 1-3 objects would flag. ``NormStatistics`` records each GroupNorm's per-image
statistics in one pass and imposes them in another. The probe uses it twice: the full set with
and without conditioner i, each with the statistics of a single-conditioner (or empty) pass, for
the efficacy; and the full set with the near context's statistics, for the far residual. What
stays away from locality is carried by the convolutions' receptive field and the attention; what
is restored was carried by the normalisation statistics. Networks without GroupNorm, and
compositions (whose inner passes differ between the two sets), are skipped.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conditioning import Conditioning
from ..denoiser import Denoiser
from ..diffusion.guidance import ScoreComposition


def group_norms(denoiser: Denoiser) -> list[nn.GroupNorm]:
    """The GroupNorm layers of a plain network denoiser (none for a composition)."""
    if not isinstance(denoiser, nn.Module) or any(isinstance(m, ScoreComposition) for m in denoiser.modules()):
        return []
    return [m for m in denoiser.modules() if isinstance(m, nn.GroupNorm)]


class NormStatistics:
    """Records each GroupNorm's per-image (mean, variance) in one pass and imposes them in the
    next pass of the same batch size (calls are matched by their order)."""

    def __init__(self, norms: list[nn.GroupNorm]) -> None:
        self.norms = norms
        self.saved: list[tuple[Tensor, Tensor]] = []
        self.mode = "off"
        self._cursor = 0

    def _forward(self, norm: nn.GroupNorm, x: Tensor) -> Tensor:
        if self.mode == "off":
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        groups = x.reshape(x.shape[0], norm.num_groups, -1)
        if self.mode == "record":
            stats = (groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True))
            self.saved.append(stats)
        else:
            stats = self.saved[self._cursor]
            self._cursor += 1
        y = ((groups - stats[0]) / torch.sqrt(stats[1] + norm.eps)).reshape_as(x)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return y * norm.weight.reshape(shape) + norm.bias.reshape(shape)

    @contextmanager
    def installed(self) -> Iterator["NormStatistics"]:
        originals = [norm.forward for norm in self.norms]
        for norm in self.norms:
            norm.forward = (lambda x, _n=norm: self._forward(_n, x))  # type: ignore[method-assign]
        try:
            yield self
        finally:
            for norm, forward in zip(self.norms, originals):
                norm.forward = forward  # type: ignore[method-assign]

    @torch.no_grad()
    def borrow(self, denoiser: Denoiser, x: Tensor, sigma: Tensor, donor: Conditioning,
               receiver: Conditioning) -> Tensor:
        """``D(x; sigma, receiver)`` computed with the normalisation statistics of ``D(x; sigma, donor)``."""
        with self.installed():
            self.saved, self._cursor, self.mode = [], 0, "record"
            denoiser(x, sigma, donor)
            self.mode = "replay"
            out = denoiser(x, sigma, receiver)
            self.mode = "off"
        return out

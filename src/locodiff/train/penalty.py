"""Locality enforced during training: a penalty on what a conditioner changes far from itself.

The paper enforces local conditional scores by architecture or post hoc and leaves open whether
an ordinary network can be *trained* into them. This loss adds, to the usual EDM loss, the
squared change of the prediction outside a window around a conditioner when that conditioner
moves:

    penalty = lambda(sigma) * mean_pixels[ (1 - m_j) * |D(x; c with c_j + eps v) - D(x; c)|^2 / eps^2 ]

for one random present conditioner j per image and a random unit direction v (an unbiased
sample of every conditioner's off-window sensitivity). The derivative is taken as a finite
difference on purpose: it costs one extra forward pass, stays differentiable with respect to
the weights through any kernel (fused attention has no forward-mode AD), and at eps = 1e-2 of
the image side it is within a fraction of a pixel of the derivative. With ``fraction < 1`` only
that share of each batch gets the extra pass, its penalty scaled by ``1 / fraction`` so that the
expected loss is unchanged while the cost drops from ~2x to ~(1 + fraction)x.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..conditioning import Conditioning, location_windows
from ..denoiser import Denoiser
from ..diffusion.loss import EDMLoss, Rows
from ..errors import ConfigError


@dataclass
class LocalityPenaltyLoss:
    """EDM loss + ``weight`` x the off-window conditioner sensitivity (see module doc), per example."""

    weight: float = 1.0
    window_px: float = 3.0
    eps: float = 1e-2
    fraction: float = 1.0
    base: EDMLoss = field(default_factory=EDMLoss)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"locality penalty weight={self.weight}: expected >= 0")
        if self.window_px <= 0 or self.eps <= 0:
            raise ConfigError(f"locality penalty window_px={self.window_px}, eps={self.eps}: expected > 0")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"locality penalty fraction={self.fraction}: expected in (0, 1]")

    def __call__(self, denoiser: Denoiser, x0: Tensor, cond: Conditioning,
                 generator: torch.Generator | None = None, rows: Rows = Rows()) -> Tensor:
        b = x0.shape[0]
        x, sigma, lam = self.base.noisy(x0, generator, rows=rows)
        d = denoiser(x, sigma, cond)
        loss = lam * (d.float() - x0.float()).square().flatten(1).mean(1)
        moved, outside, has = self._perturbation(cond, x0, generator, rows)
        if self.fraction < 1:  # the batch is already shuffled: penalise the global batch's first share
            first = max(1, round(self.fraction * (rows.total or b)))
            has = has & (torch.arange(rows.start, rows.start + b, device=x0.device) < first)
        if self.weight == 0 or not has.any():
            return loss
        d_moved = denoiser(x[has], sigma[has], moved[has])
        change = (d_moved.float() - d[has].float()) / self.eps
        penalty = lam[has] * (change.square() * outside[has][:, None]).flatten(1).mean(1)
        return loss.index_add(0, has.nonzero(as_tuple=True)[0], (self.weight / self.fraction) * penalty)

    def _perturbation(self, cond: Conditioning, x0: Tensor, generator: torch.Generator | None, rows: Rows):
        """Conditioning with one random present conditioner moved by eps, the [B,H,W] region
        outside its window, and which images have a conditioner at all."""
        b, n = cond.batch_size, cond.slots
        has = cond.mask.any(1)
        where = generator.device if generator is not None else x0.device
        scores = rows.take(lambda m: torch.rand(m, n, generator=generator, device=where), b).to(x0.device)
        slot = (scores * cond.mask).argmax(1)  # a random present conditioner
        angle = rows.take(lambda m: torch.rand(m, generator=generator, device=where), b).to(x0.device) * 2 * torch.pi
        step = torch.stack([angle.cos(), angle.sin()], -1) * self.eps
        here = cond.locations[torch.arange(b), slot]
        step = torch.where(((here + step) < 0) | ((here + step) > 1), -step, step)  # stay inside the image
        shift = torch.zeros_like(cond.locations)
        shift[torch.arange(b), slot] = step.to(shift.dtype)
        chosen = Conditioning(here[:, None], has[:, None])
        window = location_windows(chosen, x0.shape[-2], x0.shape[-1], self.window_px, softness_px=0.0)[:, 0]
        return cond.with_locations(cond.locations + shift), 1.0 - window, has

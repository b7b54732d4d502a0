"""Locality enforced during training: a penalty on what a conditioner changes far from itself.

The paper enforces local conditional scores by architecture or post hoc and leaves open whether
an ordinary network can be *trained* into them. This loss adds, to the usual EDM loss, a
measure of how much one random present conditioner j of each image changes the prediction
outside a window m_j around its location. Two measures of "changes", two scales:

- ``form="shift"``: the conditioner *moves* by eps in a random direction v,
  ``change = (D(x; c with c_j + eps v) - D(x; c)) / eps`` (a finite-difference derivative: one
  extra forward pass, differentiable through any kernel, within a fraction of a pixel of the
  derivative at eps = 1e-2 of the side);
- ``form="presence"``: the conditioner is *removed*, ``change = D(x; c) - D(x; c without j)``.
  This is the property composition needs (a pixel far from j must not notice whether j is
  there), and a network can be local under small shifts yet not under removal: a token may
  change the whole image through how many tokens there are, not where they are.

and

- ``relative=False``: ``lambda(sigma) * mean_pixels[(1 - m_j) |change|^2]``, in loss units;
- ``relative=True``: the off-window *share* ``sum (1 - m_j)|change|^2 / sum |change|^2``, in
  [0, 1] and unchanged when the conditioner's effect is scaled, so that ignoring the
  conditioner (the cheapest way to have no off-window effect) earns nothing.

``start_images`` switches the penalty on only after that many training images, so that the
label is learned first. With ``fraction < 1`` only that share of each batch gets the extra pass,
its penalty scaled by ``1 / fraction`` (expected loss unchanged, cost ~(1 + fraction)x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..conditioning import Conditioning, location_windows
from ..denoiser import Denoiser
from ..diffusion.loss import EDMLoss, Rows
from ..errors import ConfigError
from .config import PENALTY_FORMS

PenaltyForm = Literal["shift", "presence"]


@dataclass
class LocalityPenaltyLoss:
    """EDM loss + ``weight`` x one conditioner's off-window effect (see module doc), per example."""

    weight: float = 1.0
    window_px: float = 3.0
    eps: float = 1e-2
    fraction: float = 1.0
    form: PenaltyForm = "shift"
    relative: bool = False
    start_images: int = 0
    base: EDMLoss = field(default_factory=EDMLoss)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"locality penalty weight={self.weight}: expected >= 0")
        if self.window_px <= 0 or self.eps <= 0:
            raise ConfigError(f"locality penalty window_px={self.window_px}, eps={self.eps}: expected > 0")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"locality penalty fraction={self.fraction}: expected in (0, 1]")
        if self.form not in PENALTY_FORMS:
            raise ConfigError(f"locality penalty form={self.form!r}: expected one of {', '.join(PENALTY_FORMS)}")
        if self.start_images < 0:
            raise ConfigError(f"locality penalty start_images={self.start_images}: expected >= 0")

    def __call__(self, denoiser: Denoiser, x0: Tensor, cond: Conditioning,
                 generator: torch.Generator | None = None, rows: Rows = Rows(), images_seen: int = 0) -> Tensor:
        b = x0.shape[0]
        x, sigma, lam = self.base.noisy(x0, generator, rows=rows)
        d = denoiser(x, sigma, cond)
        loss = lam * (d.float() - x0.float()).square().flatten(1).mean(1)
        other, outside, has = self._counterpart(cond, x0, generator, rows)
        if self.fraction < 1:  # the batch is already shuffled: penalise the global batch's first share
            first = max(1, round(self.fraction * (rows.total or b)))
            has = has & (torch.arange(rows.start, rows.start + b, device=x0.device) < first)
        if self.weight == 0 or images_seen < self.start_images or not has.any():
            return loss
        d_other = denoiser(x[has], sigma[has], other[has])
        change = (d_other.float() - d[has].float()).square().sum(1)  # [m, H, W]
        if self.form == "shift":
            change = change / self.eps**2
        off = (change * outside[has]).flatten(1)
        if self.relative:
            penalty = off.sum(1) / (change.flatten(1).sum(1) + 1e-12)
        else:
            penalty = lam[has] * off.mean(1) / x0.shape[1]
        return loss.index_add(0, has.nonzero(as_tuple=True)[0], (self.weight / self.fraction) * penalty)

    def _counterpart(self, cond: Conditioning, x0: Tensor, generator: torch.Generator | None, rows: Rows):
        """The conditioning with one random present conditioner moved by eps (shift) or removed
        (presence), the [B,H,W] region outside its window, and which images have a conditioner."""
        b, n = cond.batch_size, cond.slots
        has = cond.mask.any(1)
        where = generator.device if generator is not None else x0.device
        scores = rows.take(lambda m: torch.rand(m, n, generator=generator, device=where), b).to(x0.device)
        slot = (scores * cond.mask).argmax(1)  # a random present conditioner
        angle = rows.take(lambda m: torch.rand(m, generator=generator, device=where), b).to(x0.device) * 2 * torch.pi
        here = cond.locations[torch.arange(b), slot]
        chosen = Conditioning(here[:, None], has[:, None])
        window = location_windows(chosen, x0.shape[-2], x0.shape[-1], self.window_px, softness_px=0.0)[:, 0]
        if self.form == "presence":
            mask = cond.mask.clone()
            mask[torch.arange(b), slot] = False
            return Conditioning(cond.locations, mask, cond.attributes), 1.0 - window, has
        step = torch.stack([angle.cos(), angle.sin()], -1) * self.eps
        step = torch.where(((here + step) < 0) | ((here + step) > 1), -step, step)  # stay inside the image
        shift = torch.zeros_like(cond.locations)
        shift[torch.arange(b), slot] = step.to(shift.dtype)
        return cond.with_locations(cond.locations + shift), 1.0 - window, has

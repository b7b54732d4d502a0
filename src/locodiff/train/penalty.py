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
from ..diffusion.guidance import ScoreComposition
from ..diffusion.loss import EDMLoss, Rows
from ..errors import ConfigError
from .config import TrainConfig

PenaltyForm = Literal["shift", "presence"]  # LocalityPenaltyLoss; "composition" is CompositionLoss


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
        if self.form not in ("shift", "presence"):
            raise ConfigError(f"locality penalty form={self.form!r}: expected shift or presence "
                              "(the composition form is CompositionLoss)")
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


@dataclass
class CompositionLoss:
    """EDM loss + ``weight`` x the distance to the network's own masked composition, on more
    conditioners than the data has:

        weight * lambda(sigma) * mean_pixels |D(x; C) - sg[D_bg + sum_j m_j (D(x; c_j) - D_bg)]|^2

    with C = the image's labels plus up to ``extra`` phantom labels at random free locations,
    D_bg = D(x; null), m_j the window of ``window_px`` around c_j and sg = no gradient. Exp 2's
    data never shows more than one label, so nothing tells a network what several labels should
    do; the masked composition of its single-label predictions (the post hoc Exp 3, which is
    local by construction) says it, and this loss teaches it to the ordinary network, which then
    needs one call per step at test instead of k + 1. The target costs k + 1 forward passes
    without gradients and the composed pass one more with them, on ``fraction`` of each batch.
    """

    weight: float = 1.0
    window_px: float = 4.0
    extra: int = 4
    min_separation: float = 0.12  # phantoms keep this far (share of the side) from other labels
    fraction: float = 0.25
    start_images: int = 0
    base: EDMLoss = field(default_factory=EDMLoss)

    def __post_init__(self) -> None:
        if self.weight < 0 or self.window_px <= 0 or self.extra < 1 or not 0 < self.fraction <= 1:
            raise ConfigError(f"composition loss weight={self.weight}, window_px={self.window_px}, "
                              f"extra={self.extra}, fraction={self.fraction}: expected weight >= 0, "
                              "window > 0, extra >= 1 and fraction in (0, 1]")

    def __call__(self, denoiser: Denoiser, x0: Tensor, cond: Conditioning,
                 generator: torch.Generator | None = None, rows: Rows = Rows(), images_seen: int = 0) -> Tensor:
        b = x0.shape[0]
        x, sigma, lam = self.base.noisy(x0, generator, rows=rows)
        loss = lam * (denoiser(x, sigma, cond).float() - x0.float()).square().flatten(1).mean(1)
        first = max(1, round(self.fraction * (rows.total or b)))
        chosen = (torch.arange(rows.start, rows.start + b, device=x0.device) < first).nonzero(as_tuple=True)[0]
        if self.weight == 0 or images_seen < self.start_images or len(chosen) == 0:
            return loss
        sub = self._with_phantoms(cond, x0, generator, rows, chosen)
        with torch.no_grad():
            target = ScoreComposition(denoiser, "null", weights=self._windows)(x[chosen], sigma[chosen], sub)
        gap = (denoiser(x[chosen], sigma[chosen], sub).float() - target.float()).square().flatten(1).mean(1)
        return loss.index_add(0, chosen, (self.weight / self.fraction) * lam[chosen] * gap)

    def _windows(self, cond: Conditioning, x: Tensor) -> Tensor:
        return location_windows(cond, x.shape[-2], x.shape[-1], self.window_px)

    def _with_phantoms(self, cond: Conditioning, x0: Tensor, generator: torch.Generator | None, rows: Rows,
                       chosen: Tensor) -> Conditioning:
        """Rows ``chosen`` of ``cond``, each plus up to ``extra`` labels at uniform locations that keep
        ``min_separation`` from every other label (candidates that do not are skipped). The draws
        are for the global batch (``rows``), so any number of processes gives the same phantoms."""
        tries = 4 * self.extra
        where = generator.device if generator is not None else x0.device
        draw = rows.take(lambda m: torch.rand(m, tries, 2, generator=generator, device=where), cond.batch_size)
        wanted = rows.take(lambda m: torch.randint(1, self.extra + 1, (m,), generator=generator, device=where),
                           cond.batch_size)
        cond, candidates, wanted = cond[chosen], (0.05 + 0.9 * draw[chosen.cpu()]).to(cond.locations), wanted[chosen.cpu()]
        b, n = cond.batch_size, cond.slots
        locations = torch.cat([cond.locations, torch.zeros_like(candidates[:, :self.extra])], 1)
        mask = torch.cat([cond.mask, torch.zeros(b, self.extra, dtype=torch.bool, device=cond.mask.device)], 1)
        for i in range(b):
            taken = [cond.locations[i, j] for j in range(n) if cond.mask[i, j]]
            added = 0
            for c in candidates[i]:
                if added == int(wanted[i]):
                    break
                if all(float((c - t).norm()) >= self.min_separation for t in taken):
                    locations[i, n + added], mask[i, n + added] = c, True
                    taken.append(c)
                    added += 1
        attributes = None if cond.attributes is None else torch.cat(
            [cond.attributes, cond.attributes.new_full((b, self.extra, cond.attributes.shape[-1]), -1)], 1)
        return Conditioning(locations, mask, attributes)


def training_loss(train: TrainConfig) -> EDMLoss | LocalityPenaltyLoss | CompositionLoss:
    """The run's loss: the EDM loss, with ``train.locality``'s penalty when its weight is above 0."""
    base, p = EDMLoss(p_mean=train.p_mean, p_std=train.p_std), train.locality
    if p.weight == 0:
        return base
    if p.form == "composition":
        return CompositionLoss(p.weight, p.window_px, p.extra_tokens, fraction=p.fraction,
                               start_images=p.start_images, base=base)
    return LocalityPenaltyLoss(p.weight, p.window_px, fraction=p.fraction, form=p.form, relative=p.relative,
                               start_images=p.start_images, base=base)

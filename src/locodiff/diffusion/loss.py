"""The EDM training loss (EDM eq. 2 and 8, Table 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..denoiser import Denoiser, as_sigma_batch
from .precond import SIGMA_DATA
from .schedule import sample_training_sigmas


@dataclass(frozen=True)
class Rows:
    """The rows of the global batch that this process holds. Random draws are made for the whole
    global batch and each process keeps its rows, so training does not depend on how many
    processes share a batch (and no two processes draw the same noise)."""

    start: int = 0
    total: int | None = None  # rows of the global batch; None = this process holds all of them

    def take(self, draw: Callable[[int], Tensor], local: int) -> Tensor:
        """``draw(n)`` for the global ``n`` rows, then this process's ``local`` of them."""
        return draw(self.total or local)[self.start: self.start + local]


@dataclass(frozen=True)
class EDMLoss:
    """Weighted denoising loss ``lambda(sigma) |D(x0 + sigma n; sigma, c) - x0|^2``, per example.

    ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2`` makes the
    loss on the raw network's output unit-weighted at every noise level (EDM eq. 8). Returns one
    value per image (mean over pixels) so that the trainer can log it per noise-level bin.
    """

    p_mean: float = -1.2  # mean of ln(sigma) during training
    p_std: float = 1.2  # std of ln(sigma) during training
    sigma_data: float = SIGMA_DATA  # std of the clean data

    def __call__(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        cond: Conditioning,
        generator: torch.Generator | None = None,
        sigma: Tensor | float | None = None,
        return_sigma: bool = False,
        rows: Rows = Rows(),
        images_seen: int = 0,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Loss [B]; ``sigma`` overrides the log-normal draw; ``return_sigma`` also returns it.
        ``images_seen`` is the training clock, unused here (a penalty's schedule reads it)."""
        x, sigma, weight = self.noisy(x0, generator, sigma, rows)
        d = denoiser(x, sigma, cond)
        loss = weight * (d.float() - x0.float()).square().flatten(1).mean(1)
        return (loss, sigma) if return_sigma else loss

    def noisy(self, x0: Tensor, generator: torch.Generator | None = None,
              sigma: Tensor | float | None = None, rows: Rows = Rows()) -> tuple[Tensor, Tensor, Tensor]:
        """The noisy input ``x0 + sigma n``, its [B] noise levels (drawn unless given) and their
        loss weights ``lambda(sigma)``: the part of the loss every variant shares. Draws happen on
        the generator's device (a CPU generator gives the same numbers on any device)."""
        b, where = x0.shape[0], generator.device if generator is not None else x0.device
        if sigma is None:
            sigma = rows.take(lambda n: sample_training_sigmas(n, generator, self.p_mean, self.p_std, where), b)
        sigma = as_sigma_batch(sigma, x0)
        noise = rows.take(lambda n: torch.randn((n, *x0.shape[1:]), generator=generator, device=where,
                                                dtype=x0.dtype), b).to(x0.device)
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        return x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma, weight

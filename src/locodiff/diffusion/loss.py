"""The EDM training loss (EDM eq. 2 and 8, Table 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..denoiser import Denoiser, as_sigma_batch
from .precond import SIGMA_DATA
from .schedule import sample_training_sigmas


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
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Loss [B]; ``sigma`` overrides the log-normal draw; ``return_sigma`` also returns it."""
        b = x0.shape[0]
        if sigma is None:
            sigma = sample_training_sigmas(b, generator, self.p_mean, self.p_std, x0.device)
        sigma = as_sigma_batch(sigma, x0)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        s = sigma.reshape(-1, 1, 1, 1)
        d = denoiser(x0 + s * noise, sigma, cond)
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        loss = weight * (d.float() - x0.float()).square().flatten(1).mean(1)
        return (loss, sigma) if return_sigma else loss

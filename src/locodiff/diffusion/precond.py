"""EDM preconditioning: turn a raw network into a well-scaled ``Denoiser``.

A raw network ``F`` sees inputs and produces outputs of unit variance at every noise level if we
write the denoiser as (EDM eq. 7)

    D(x; sigma, c) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), c)

with the coefficients of EDM Table 1 / Appendix B.6 (``sigma_data`` = std of the clean data):

    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)        input  x has variance sigma^2 + sigma_data^2
    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)  minimises the variance of F's target
    c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

At low noise ``c_skip -> 1`` and ``c_out -> 0``: D passes x through and F only corrects it; at high
noise ``c_skip -> 0``: F predicts x0 itself. Either way F's training target
``(x0 - c_skip x) / c_out`` has unit variance.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning
from ..denoiser import as_sigma_batch, conditioned_on
from .schedule import InputError

# A raw network: (scaled input [B,C,H,W], c_noise [B], conditioning) -> output [B,C,H,W].
RawNet = Callable[[Tensor, Tensor, Conditioning], Tensor]

# [-1, 1] images have a per-pixel std of roughly 0.5 (EDM's value for CIFAR/ImageNet).
SIGMA_DATA = 0.5


def preconditioning(
    sigma: Tensor, sigma_data: float = SIGMA_DATA
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` (EDM Table 1), same shape."""
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = total.rsqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """Wrap a raw network ``net(x_in, c_noise, cond)`` into a Denoiser ``(x, sigma, cond) -> x0``.

    The skip connection and output scaling run in float32 (float64 for float64 inputs) even under
    autocast, because at low noise ``x0 ~ x`` and a half-precision skip would throw away the
    detail the network is correcting. The network itself runs in whatever dtype autocast picks.
    The result has the input's dtype.
    """

    def __init__(self, net: RawNet, sigma_data: float = SIGMA_DATA) -> None:
        super().__init__()
        if sigma_data <= 0:
            raise InputError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)
        self.conditioned_on = conditioned_on(net)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        if x.ndim != 4:
            raise InputError(f"x must have shape [B, C, H, W], got {tuple(x.shape)}")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        x_hi = x.to(dtype)
        sigma_b = as_sigma_batch(sigma, x_hi)
        c_skip, c_out, c_in, c_noise = (
            c.reshape(-1, 1, 1, 1) for c in preconditioning(sigma_b, self.sigma_data)
        )
        f = self.net(c_in * x_hi, c_noise.reshape(-1), cond)
        if f.shape != x.shape:
            raise InputError(
                f"network output shape {tuple(f.shape)} differs from its input {tuple(x.shape)}"
            )
        return (c_skip * x_hi + c_out * f.to(dtype)).to(x.dtype)

"""Noise levels: the Karras sampling schedule and the log-normal training distribution.

Both follow EDM (Karras, Aittala, Aila, Laine 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models"). The forward process is ``x = x0 + sigma * n`` with
``n ~ N(0, I)``, so ``sigma`` is the noise standard deviation in image units ([-1, 1] images).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError


def karras_sigmas(
    n_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The ``n_steps + 1`` noise levels of an ``n_steps``-step sampler, from ``sigma_max`` to 0.

    EDM eq. 5, for ``i = 0..N-1``, then ``sigma_N = 0``:

        sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho

    A large ``rho`` spends more steps at low noise, where fine detail is decided.
    With ``n_steps == 1`` the schedule is ``[sigma_max, 0]``.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise InputError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if not 0 < sigma_min <= sigma_max:
        raise InputError(
            f"expected 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    if rho <= 0:
        raise InputError(f"rho must be positive, got {rho}")
    # float64 so that the power round trip returns sigma_min and sigma_max to float32 precision.
    i = torch.arange(n_steps, dtype=torch.float64)
    frac = i / max(n_steps - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + frac * (lo - hi)) ** rho
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(device=device, dtype=dtype)


def sample_training_sigmas(
    batch: int,
    generator: torch.Generator | None = None,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``batch`` training noise levels with ``ln(sigma) ~ N(p_mean, p_std^2)`` (EDM Table 1).

    The defaults put most training effort at intermediate noise (median sigma ~0.3), where the
    loss can still be reduced; very low and very high noise are nearly trivial to denoise.
    The generator must live on ``device`` (torch's rule for random draws).
    """
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    if p_std < 0:
        raise InputError(f"p_std must be >= 0, got {p_std}")
    if device is None and generator is not None:
        device = generator.device
    n = torch.randn(batch, generator=generator, device=device)
    return (p_mean + p_std * n).exp()

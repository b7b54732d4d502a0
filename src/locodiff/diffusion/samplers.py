"""Samplers: plain functions over any Denoiser ``(x, sigma, cond) -> x0``.

All of them integrate the probability-flow ODE of EDM (eq. 4 with ``sigma(t) = t``),

    dx / dsigma = (x - D(x; sigma, c)) / sigma,

from ``x ~ N(0, sigma_max^2 I)`` down the given noise levels; the stochastic one adds and removes
noise on the way (Langevin-like "churn"). Call signature shared by all samplers:

    sample_*(denoiser, noise_or_shape, cond, steps, generator=None,
             return_trajectory=False, progress=False, ...)

``noise_or_shape`` is either standard-normal noise [B, C, H, W] (scaled here by ``sigmas[0]``) or
the shape to draw it in. ``steps`` is a number of Karras steps or an explicit decreasing schedule
(normally ending in 0; if it ends above 0 the result is the noisy ``x`` at that level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..conditioning import Conditioning
from ..denoiser import Denoiser
from ..errors import InputError
from ..progress import track
from .schedule import karras_sigmas


@dataclass
class Trajectory:
    """What a sampler saw on its way down: useful for locality probes along real paths."""

    sigmas: Tensor  # [T] the schedule, T = steps + 1
    xs: Tensor  # [T, B, C, H, W] x at each sigma (xs[0] is the initial noise, xs[-1] the sample)
    x0s: Tensor  # [T-1, B, C, H, W] the denoiser's x0 prediction at each step's first evaluation


Sample = Tensor | tuple[Tensor, Trajectory]


@dataclass(frozen=True)
class Churn:
    """EDM's stochastic churn (Algorithm 2): how much fresh noise each step adds, and where."""

    s_churn: float = 40.0
    s_min: float = 0.05
    s_max: float = 50.0
    s_noise: float = 1.003

    def __post_init__(self) -> None:
        if self.s_churn < 0 or self.s_noise < 0 or self.s_min > self.s_max:
            raise InputError(
                f"expected s_churn >= 0, s_noise >= 0 and s_min <= s_max, got s_churn={self.s_churn}, "
                f"s_noise={self.s_noise}, s_min={self.s_min}, s_max={self.s_max}"
            )


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    noise_or_shape: Tensor | Sequence[int],
    cond: Conditioning,
    steps: int | Tensor = 18,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
) -> Sample:
    """Deterministic 2nd-order sampler (EDM Algorithm 1): Euler step, then trapezoidal correction.

    Costs ``2 * steps - 1`` denoiser calls (the last step to sigma = 0 is plain Euler).
    """
    return sample_stochastic(denoiser, noise_or_shape, cond, steps, generator, return_trajectory, progress,
                             Churn(s_churn=0.0))


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    noise_or_shape: Tensor | Sequence[int],
    cond: Conditioning,
    steps: int | Tensor = 18,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
) -> Sample:
    """Deterministic 1st-order sampler: one denoiser call per step (DDIM in EDM's framing)."""
    x, sigmas = _setup(denoiser, noise_or_shape, cond, steps, generator)
    path = _Recorder(x, return_trajectory)
    n = len(sigmas) - 1
    for i in track(range(n), "euler", "step", enabled=progress):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x0 = _denoise(denoiser, x, t_cur, cond)
        x = x + (t_next - t_cur) * (x - x0) / t_cur  # EDM eq. 4, one Euler step
        path.add(x, x0)
    return path.finish(x, sigmas)


@torch.no_grad()
def sample_stochastic(
    denoiser: Denoiser,
    noise_or_shape: Tensor | Sequence[int],
    cond: Conditioning,
    steps: int | Tensor = 18,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    churn: Churn = Churn(),
) -> Sample:
    """Stochastic 2nd-order sampler (EDM Algorithm 2).

    At each step with ``s_min <= sigma_i <= s_max`` noise is first raised to
    ``sigma_hat = (1 + gamma) sigma_i`` with ``gamma = min(s_churn / N, sqrt(2) - 1)`` by adding
    fresh noise (std ``s_noise`` slightly > 1 offsets the denoiser's tendency to over-smooth), then
    a Heun step goes from ``sigma_hat`` to ``sigma_{i+1}``. The churn corrects errors made earlier
    on the path. ``Churn()`` is EDM's ImageNet-64 setting; ``s_churn = 0`` is Algorithm 1 (Heun).
    In the trajectory, ``x0s[i]`` is the prediction at ``sigma_hat``, not ``sigma_i``.
    """
    s_churn, s_min, s_max, s_noise = churn.s_churn, churn.s_min, churn.s_max, churn.s_noise
    x, sigmas = _setup(denoiser, noise_or_shape, cond, steps, generator)
    path = _Recorder(x, return_trajectory)
    n = len(sigmas) - 1
    gamma_max = min(s_churn / n, math.sqrt(2) - 1)
    name = "heun" if s_churn == 0 else "stochastic"
    for i in track(range(n), name, "step", enabled=progress):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        # Churn: raise the noise level from t_cur to t_hat (Alg. 2, lines 4-6).
        gamma = gamma_max if s_min <= float(t_cur) <= s_max else 0.0
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:
            eps = _randn(x.shape, generator, x.device, x.dtype) * s_noise
            x = x + (t_hat**2 - t_cur**2).sqrt() * eps
        # Euler step from t_hat to t_next (lines 7-8).
        x0 = _denoise(denoiser, x, t_hat, cond)
        d = (x - x0) / t_hat
        x_next = x + (t_next - t_hat) * d
        # Second-order (trapezoidal) correction unless we landed on sigma = 0 (lines 9-11).
        if t_next > 0:
            d_next = (x_next - _denoise(denoiser, x_next, t_next, cond)) / t_next
            x_next = x + (t_next - t_hat) * (d + d_next) / 2
        x = x_next
        path.add(x, x0)
    return path.finish(x, sigmas)


def sample_in_batches(
    denoiser: Denoiser, cond: Conditioning, resolution: int, steps: int, generator: torch.Generator,
    batch_size: int, sampler: Callable[..., Tensor] | None = None, device: torch.device | str = "cpu",
) -> Iterator[tuple[int, Conditioning, Tensor]]:
    """Sample one image per row of ``cond``, ``batch_size`` rows at a time: yields ``(start, part,
    images)``. Each batch's noise comes from ``generator`` in order, so the images do not depend on
    the device, only on the generator and the batch size."""
    sampler = sampler or sample_heun
    for start in range(0, cond.batch_size, batch_size):
        part = cond[start: start + batch_size]
        noise = torch.randn(part.batch_size, 3, resolution, resolution, generator=generator)
        yield start, part, sampler(denoiser, noise.to(device), part.to(device), steps, generator=generator)


def get_sampler(name: str) -> Callable[..., Sample]:
    """Look a sampler up by config name: ``"heun"``, ``"euler"`` or ``"stochastic"``."""
    samplers = {"heun": sample_heun, "euler": sample_euler, "stochastic": sample_stochastic}
    if name not in samplers:
        raise InputError(f"unknown sampler {name!r}; expected one of {sorted(samplers)}")
    return samplers[name]


# ----- shared plumbing -----------------------------------------------------------------------


def _setup(
    denoiser: Denoiser,
    noise_or_shape: Tensor | Sequence[int],
    cond: Conditioning,
    steps: int | Tensor,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Validate inputs; return the initial ``x`` (noise * sigma_max) and the schedule."""
    if not callable(denoiser):
        raise InputError(f"denoiser must be callable as (x, sigma, cond), got {denoiser!r}")
    if not isinstance(cond, Conditioning):
        raise InputError(f"cond must be a Conditioning, got {type(cond).__name__}")
    if isinstance(noise_or_shape, Tensor):
        noise = noise_or_shape
    else:
        shape = tuple(noise_or_shape)
        if not all(isinstance(s, int) and s > 0 for s in shape):
            raise InputError(f"noise shape must be positive integers, got {shape}")
        noise = _randn(shape, generator, cond.device, torch.float32)
    if noise.ndim != 4:
        raise InputError(f"noise must have shape [B, C, H, W], got {tuple(noise.shape)}")
    if not noise.is_floating_point():
        raise InputError(f"noise must be a floating-point tensor, got {noise.dtype}")
    if cond.batch_size != noise.shape[0]:
        raise InputError(
            f"conditioning has batch size {cond.batch_size} but noise has {noise.shape[0]}; "
            "give one conditioning row per image"
        )

    if isinstance(steps, Tensor):
        sigmas = steps.to(device=noise.device, dtype=noise.dtype)
        if sigmas.ndim != 1 or len(sigmas) < 2:
            raise InputError(f"sigmas must be 1-D with >= 2 levels, got {tuple(sigmas.shape)}")
        if not torch.isfinite(sigmas).all() or (sigmas < 0).any() or sigmas[0] <= 0:
            raise InputError(f"sigmas must be finite, >= 0 and start above 0, got {sigmas}")
        if (sigmas[1:] > sigmas[:-1]).any():
            raise InputError(f"sigmas must be non-increasing, got {sigmas.tolist()}")
        if (sigmas[:-1] == 0).any():
            raise InputError(f"only the last sigma may be 0, got {sigmas.tolist()}")
    else:
        sigmas = karras_sigmas(steps, device=noise.device, dtype=noise.dtype)

    return noise * sigmas[0], sigmas


class _Recorder:
    """Collects x and the x0 prediction per step when a trajectory was asked for."""

    def __init__(self, x_init: Tensor, enabled: bool) -> None:
        self.enabled = enabled
        self.xs: list[Tensor] = [x_init] if enabled else []
        self.x0s: list[Tensor] = []

    def add(self, x: Tensor, x0: Tensor) -> None:
        if self.enabled:
            self.xs.append(x)
            self.x0s.append(x0)

    def finish(self, x: Tensor, sigmas: Tensor) -> Sample:
        if not self.enabled:
            return x
        return x, Trajectory(sigmas, torch.stack(self.xs), torch.stack(self.x0s))


def _denoise(denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
    """Call the denoiser with sigma as a [B] tensor, as the protocol asks."""
    return denoiser(x, sigma.expand(x.shape[0]), cond).to(x.dtype)


def _randn(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``.

    A CPU generator thus gives the same noise whatever device the model runs on.
    """
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)

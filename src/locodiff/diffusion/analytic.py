"""Closed-form denoisers: exact posterior means for Gaussian and Gaussian-mixture data.

They give tests and analyses a ground truth: a sampler run on ``GaussianDenoiser`` must reproduce
that Gaussian, a composition of factorized Gaussians must equal the product's exact score, and a
locality probe on a denoiser with a known Jacobian must find it. Each one also has the log-density
of its noisy marginal, ``log p_sigma(x | c)``, so the score ``(D - x) / sigma^2`` can be checked
against ``grad_x log p_sigma`` (Tweedie's formula).

Any parameter can be a fixed tensor (the conditioning is ignored) or a function of the
conditioning returning a batched tensor (one distribution per image), e.g. a mean with a bump at
each requested location. Everything is written without in-place ops or host syncs, so
``torch.func`` (``jacrev``, ``jvp``, ``vmap``) works through it.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning
from ..denoiser import as_sigma_batch
from .schedule import InputError

# A parameter: a fixed tensor, or a function of the conditioning giving one value per image.
Param = Union[Tensor, float, Callable[[Conditioning], Tensor]]


class GaussianDenoiser(nn.Module):
    """Exact denoiser for ``x0 ~ N(mean, var I)``: ``D = mu + v / (v + sigma^2) (x - mu)``.

    ``mean``: [C, H, W], or ``f(cond) -> [B, C, H, W]``.
    ``var``: a float (isotropic), a tensor broadcastable to [C, H, W] (per-pixel variances), or
    ``f(cond) -> tensor broadcastable to [B, C, H, W]``. ``var = 0`` is a point mass.
    """

    def __init__(self, mean: Param, var: Param) -> None:
        super().__init__()
        if not callable(mean) and not (isinstance(mean, Tensor) and mean.ndim == 3):
            shape = tuple(mean.shape) if isinstance(mean, Tensor) else mean
            raise InputError(f"mean must have shape [C, H, W] or be a function, got {shape}")
        _store(self, "mean", mean)
        _store(self, "var", var, nonnegative=True)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        mu, v, s2 = self._params(x, sigma, cond)
        return mu + v / (v + s2) * (x - mu)

    def log_prob(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """``log p_sigma(x | c)`` [B] of the noisy marginal ``N(mu, (v + sigma^2) I)``."""
        mu, v, s2 = self._params(x, sigma, cond)
        total = (v + s2).expand_as(x)
        lp = -0.5 * ((x - mu).square() / total + (2 * math.pi * total).log())
        return lp.flatten(1).sum(1)

    def _params(
        self, x: Tensor, sigma: Tensor | float, cond: Conditioning
    ) -> tuple[Tensor, Tensor, Tensor]:
        mu = _resolve(self._mean, cond, x)
        v = _resolve(self._var, cond, x)
        s2 = as_sigma_batch(sigma, x).reshape(-1, 1, 1, 1).square()
        return mu, v, s2


class GaussianMixtureDenoiser(nn.Module):
    """Exact denoiser for a mixture of isotropic Gaussians ``sum_k w_k N(mu_k, v_k I)``.

    The posterior mean is ``D = sum_k r_k(x) (mu_k + v_k/(v_k+s^2) (x - mu_k))`` with
    responsibilities ``r_k`` = posterior probability of component k under the noisy marginal
    ``sum_k w_k N(mu_k, (v_k + s^2) I)``. Sampling it tests whether a sampler keeps mode weights.

    ``means``: [K, C, H, W] or ``f(cond) -> [B, K, C, H, W]``.
    ``weights``: [K] (need not sum to 1) or ``f(cond) -> [B, K]``; None = uniform.
    ``var``: a float or a [K] tensor, one variance per component. With ``var = 0`` and the
    training images as means this is the ideal denoiser of a finite training set, which can
    only reproduce training images (the memorizing baseline of Kamb & Ganguli and Niedoba et al.).
    """

    def __init__(
        self, means: Param, weights: Param | None = None, var: Tensor | float = 0.0
    ) -> None:
        super().__init__()
        if not callable(means) and not (isinstance(means, Tensor) and means.ndim == 4):
            shape = tuple(means.shape) if isinstance(means, Tensor) else means
            raise InputError(f"means must have shape [K, C, H, W], got {shape}")
        k = means.shape[0] if isinstance(means, Tensor) else None
        k_name = k or "K"
        if weights is None:
            if k is None:
                raise InputError("weights are required when means is a function")
            weights = torch.ones(k)
        if isinstance(weights, (Tensor, float)):
            weights = torch.as_tensor(weights, dtype=torch.float32)
            if weights.ndim != 1 or (k is not None and len(weights) != k):
                raise InputError(
                    f"weights must have shape [{k_name}], got {tuple(weights.shape)}"
                )
            if (weights < 0).any() or weights.sum() <= 0:
                raise InputError(
                    f"weights must be >= 0 with a positive sum, got {weights.tolist()}"
                )
        var = torch.as_tensor(var, dtype=torch.float32)
        if var.ndim > 1 or (var.ndim == 1 and k is not None and len(var) != k):
            raise InputError(
                f"var must be a float or have shape [{k_name}], got {tuple(var.shape)}"
            )
        _store(self, "means", means)
        _store(self, "weights", weights, nonnegative=True)
        _store(self, "var", var, nonnegative=True)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        mu, v, s2, logits = self._components(x, sigma, cond)
        r = logits.softmax(dim=1)[..., None, None, None]  # [B, K, 1, 1, 1]
        shrink = (v / (v + s2))[..., None, None, None]  # [B, K, 1, 1, 1]
        x0_k = mu + shrink * (x[:, None] - mu)  # posterior mean given component k
        return (r * x0_k).sum(dim=1)

    def log_prob(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """``log p_sigma(x | c)`` [B] of the noisy mixture."""
        return self._components(x, sigma, cond)[3].logsumexp(dim=1)

    def _components(
        self, x: Tensor, sigma: Tensor | float, cond: Conditioning
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Means [(B,) K, C, H, W], variances [1, K or 1], sigma^2 [B, 1], log w_k N_k(x) [B, K]."""
        mu = _resolve(self._means, cond, x)
        w = _resolve(self._weights, cond, x)
        v = _resolve(self._var, cond, x).reshape(1, -1)  # [1, 1] or [1, K]
        s2 = as_sigma_batch(sigma, x).reshape(-1, 1).square()
        total = v + s2  # [B, 1] or [B, K]
        dim = math.prod(x.shape[1:])
        sq = (x[:, None] - mu).square().flatten(2).sum(-1)  # [B, K]
        log_w = (w / w.sum(dim=-1, keepdim=True)).log()
        logits = log_w - 0.5 * sq / total - 0.5 * dim * (2 * math.pi * total).log()
        return mu, v, s2, logits


def _store(module: nn.Module, name: str, value: Param, nonnegative: bool = False) -> None:
    """Keep a tensor parameter as buffer ``_name`` (``.to(device)`` moves it), a function as is."""
    if callable(value) and not isinstance(value, Tensor):
        setattr(module, f"_{name}", value)
        return
    value = torch.as_tensor(value, dtype=torch.float32)
    if not torch.isfinite(value).all():
        raise InputError(f"{name} contains NaN or infinite values")
    if nonnegative and (value < 0).any():
        raise InputError(f"{name} must be >= 0, got min {value.min().item()}")
    module.register_buffer(f"_{name}", value)


def _resolve(param: Param, cond: Conditioning, x: Tensor) -> Tensor:
    """The parameter's value for this batch, in ``x``'s dtype and device."""
    value = param(cond) if callable(param) and not isinstance(param, Tensor) else param
    return torch.as_tensor(value).to(dtype=x.dtype, device=x.device)

"""Samplers reach known distributions when driven by exact (analytic) denoisers."""

import math

import pytest
import torch

from locodiff.conditioning import Conditioning
from locodiff.diffusion import (
    Churn,
    GaussianDenoiser,
    GaussianMixtureDenoiser,
    get_sampler,
    karras_sigmas,
    sample_euler,
    sample_heun,
    sample_stochastic,
)
from locodiff.errors import InputError

MU = torch.tensor([0.3, -0.2, 0.5, 0.0]).reshape(1, 2, 2)
VAR = 0.25
N = 4096
SAMPLERS = [sample_heun, sample_euler, sample_stochastic]


class Counting:
    """Wraps a denoiser and counts calls; fails if called with gradients enabled."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, cond):
        assert not torch.is_grad_enabled(), "samplers must run under torch.no_grad()"
        assert sigma.shape == (x.shape[0],)
        self.calls += 1
        return self.denoiser(x, sigma, cond)


# Steps chosen so the discretisation error is below the sampling error of 4096 samples
# (Euler is first order and needs many more steps than the second-order samplers).
@pytest.mark.parametrize(
    "sampler, steps", [(sample_heun, 40), (sample_euler, 400), (sample_stochastic, 100)]
)
def test_samplers_reach_the_gaussian(sampler, steps):
    n = 4 * N  # four pixels each: cheap
    x = sampler(GaussianDenoiser(MU, VAR), (n, 1, 2, 2), Conditioning.empty(n), steps,
                generator=torch.Generator().manual_seed(0))
    assert (x.mean(0) - MU).abs().max().item() < 0.025  # std error 0.004
    assert (x.var(0) - VAR).abs().max().item() < 0.02  # std error 0.003


def test_heun_is_second_order_and_euler_first_order():
    # For Gaussian data the ODE is solvable: x(0) = mu + (x_T - mu) sqrt(v / (v + sigma_max^2)).
    d, cond = GaussianDenoiser(MU, VAR), Conditioning.empty(1)
    noise = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    exact = MU + (80 * noise - MU) * math.sqrt(VAR / (VAR + 80**2))

    def error(sampler, steps):
        return (sampler(d, noise, cond, steps) - exact).abs().max().item()

    heun_ratio = error(sample_heun, 32) / error(sample_heun, 64)
    euler_ratio = error(sample_euler, 32) / error(sample_euler, 64)
    assert heun_ratio > 3.2  # ~4 for a second-order method
    assert 1.6 < euler_ratio < 2.6  # ~2 for a first-order one
    assert error(sample_heun, 256) < 1e-3


def test_heun_keeps_the_mode_proportions_of_a_mixture():
    means = torch.stack([torch.full((1, 2, 2), 0.8), torch.full((1, 2, 2), -0.8)])
    d = GaussianMixtureDenoiser(means, torch.tensor([0.3, 0.7]), 0.01)
    x = sample_heun(d, (N, 1, 2, 2), Conditioning.empty(N), 18,
                    generator=torch.Generator().manual_seed(1))
    upper = x.mean((1, 2, 3)) > 0
    assert upper.float().mean().item() == pytest.approx(0.3, abs=0.025)  # std error 0.007
    # Every sample landed on a mode, not between them.
    assert (x.mean((1, 2, 3)).abs() - 0.8).abs().max().item() < 0.3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_trajectory_shapes_and_contents(sampler):
    d = Counting(GaussianDenoiser(MU, VAR))
    noise = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x, traj = sampler(d, noise, Conditioning.empty(3), 5, generator=g, return_trajectory=True)
    assert traj.sigmas.shape == (6,)
    assert traj.xs.shape == (6, 3, 1, 2, 2)
    assert traj.x0s.shape == (5, 3, 1, 2, 2)
    torch.testing.assert_close(traj.xs[0], noise * 80)
    assert torch.equal(traj.xs[-1], x)
    torch.testing.assert_close(traj.sigmas, karras_sigmas(5))


def test_denoiser_call_counts():
    cond = Conditioning.empty(2)
    for sampler, expected in [(sample_euler, 10), (sample_heun, 19)]:
        d = Counting(GaussianDenoiser(MU, VAR))
        sampler(d, (2, 1, 2, 2), cond, 10, generator=torch.Generator().manual_seed(0))
        assert d.calls == expected, sampler.__name__


def test_explicit_schedule_equals_step_count_and_seeds_reproduce():
    d, cond = GaussianDenoiser(MU, VAR), Conditioning.empty(4)

    def run(steps, seed):
        g = torch.Generator().manual_seed(seed)
        return sample_stochastic(d, (4, 1, 2, 2), cond, steps, generator=g)

    assert torch.equal(run(12, 0), run(karras_sigmas(12), 0))
    assert not torch.equal(run(12, 0), run(12, 1))


def test_heun_is_stochastic_sampler_without_churn():
    d, cond = GaussianDenoiser(MU, VAR), Conditioning.empty(4)
    noise = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    heun = sample_heun(d, noise, cond, 7)
    torch.testing.assert_close(heun, sample_stochastic(d, noise, cond, 7, churn=Churn(s_churn=0)))
    assert not torch.allclose(
        sample_heun(d, noise, cond, 7),
        sample_stochastic(d, noise, cond, 7, generator=torch.Generator().manual_seed(0)),
    )


def test_get_sampler():
    assert get_sampler("heun") is sample_heun
    with pytest.raises(InputError, match="unknown sampler 'ddpm'"):
        get_sampler("ddpm")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cond=Conditioning.empty(3)), "conditioning has batch size 3 but noise has 2"),
        (dict(steps=0), "n_steps must be an integer >= 1"),
        (dict(steps=torch.tensor([1.0, 2.0, 0.0])), "non-increasing"),
        (dict(steps=torch.tensor([2.0, 0.0, 0.0])), "only the last sigma may be 0"),
        (dict(steps=torch.tensor([2.0])), ">= 2 levels"),
        (dict(noise=torch.zeros(2, 4)), r"\[B, C, H, W\]"),
        (dict(noise=(2, 0, 2, 2)), "positive integers"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    args = dict(noise=torch.zeros(2, 1, 2, 2), cond=Conditioning.empty(2), steps=4) | kwargs
    for sampler in SAMPLERS:
        with pytest.raises(InputError, match=message):
            sampler(GaussianDenoiser(MU, VAR), args["noise"], args["cond"], args["steps"])

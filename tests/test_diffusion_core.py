"""Schedule, preconditioning, loss and the closed-form denoisers."""

import math

import pytest
import torch
from torch import nn

from locodiff.conditioning import Conditioning
from locodiff.denoiser import Denoiser
from locodiff.diffusion import (
    EDMLoss,
    EDMPrecond,
    GaussianDenoiser,
    GaussianMixtureDenoiser,
    karras_sigmas,
    preconditioning,
    sample_training_sigmas,
)
from locodiff.errors import InputError

SD = 0.5


# ----- schedule -------------------------------------------------------------------------------


def test_karras_sigmas_endpoints_and_formula():
    s = karras_sigmas(10, sigma_min=0.01, sigma_max=20.0, rho=7.0)
    assert s.shape == (11,)
    assert s[0].item() == pytest.approx(20.0)
    assert s[-2].item() == pytest.approx(0.01)
    assert s[-1].item() == 0
    assert (s[1:] < s[:-1]).all()
    # EDM eq. 5 at i = 3 of N = 10.
    expected = (20.0 ** (1 / 7) + 3 / 9 * (0.01 ** (1 / 7) - 20.0 ** (1 / 7))) ** 7
    assert s[3].item() == pytest.approx(expected, rel=1e-6)
    assert karras_sigmas(1).tolist() == [80.0, 0.0]


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_karras_sigmas_rejects_bad_step_counts(bad):
    with pytest.raises(InputError, match="n_steps must be an integer >= 1"):
        karras_sigmas(bad)


def test_training_sigmas_are_log_normal_and_seeded():
    a = sample_training_sigmas(20000, torch.Generator().manual_seed(3), p_mean=-1.2, p_std=1.2)
    b = sample_training_sigmas(20000, torch.Generator().manual_seed(3), p_mean=-1.2, p_std=1.2)
    assert torch.equal(a, b)
    assert a.log().mean().item() == pytest.approx(-1.2, abs=0.05)
    assert a.log().std().item() == pytest.approx(1.2, abs=0.05)


# ----- preconditioning ------------------------------------------------------------------------

SIGMAS = torch.tensor([1e-3, 0.1, 0.5, 2.0, 80.0], dtype=torch.float64)


def test_preconditioning_identities():
    c_skip, c_out, c_in, c_noise = preconditioning(SIGMAS, SD)
    total = SIGMAS**2 + SD**2
    torch.testing.assert_close(c_in**2 * total, torch.ones_like(SIGMAS))  # unit-variance input
    torch.testing.assert_close(c_skip + c_out**2 / SD**2, torch.ones_like(SIGMAS))
    torch.testing.assert_close(c_noise, SIGMAS.log() / 4)
    # The loss weight lambda = 1 / c_out^2 (EDM eq. 8).
    lam = total / (SIGMAS * SD) ** 2
    torch.testing.assert_close(lam * c_out**2, torch.ones_like(SIGMAS))
    # Variance of the raw network's target (x0 - c_skip x) / c_out is 1 for Var(x0) = SD^2.
    target_var = ((1 - c_skip) ** 2 * SD**2 + c_skip**2 * SIGMAS**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(SIGMAS))


def test_preconditioned_training_target_has_unit_variance_empirically():
    g = torch.Generator().manual_seed(0)
    x0 = SD * torch.randn(200_000, generator=g, dtype=torch.float64)
    n = torch.randn(200_000, generator=g, dtype=torch.float64)
    for sigma in [0.01, 0.5, 20.0]:
        c_skip, c_out, c_in, _ = preconditioning(torch.tensor(sigma, dtype=torch.float64), SD)
        x = x0 + sigma * n
        assert ((x0 - c_skip * x) / c_out).var().item() == pytest.approx(1.0, abs=0.02)
        assert (c_in * x).var().item() == pytest.approx(1.0, abs=0.02)


class Recorder(nn.Module):
    """A tiny conv net that records what it is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x_in, c_noise, cond):
        out = self.conv(x_in)
        self.seen.append((x_in.detach(), c_noise.detach(), out.detach()))
        return out


def test_precond_feeds_network_unit_variance_and_c_noise():
    net = Recorder()
    d = EDMPrecond(net)
    g = torch.Generator().manual_seed(0)
    x0 = SD * torch.randn(64, 3, 8, 8, generator=g)
    cond = Conditioning.empty(64)
    for sigma in [0.02, 1.0, 50.0]:
        d(x0 + sigma * torch.randn(x0.shape, generator=g), sigma, cond)  # scalar sigma accepted
        x_in, c_noise, _ = net.seen[-1]
        assert x_in.var().item() == pytest.approx(1.0, abs=0.05)
        torch.testing.assert_close(c_noise, torch.full((64,), math.log(sigma) / 4))


def test_precond_limits_identity_at_low_noise_and_network_at_high_noise():
    torch.manual_seed(0)
    net = Recorder()
    d = EDMPrecond(net)
    x = torch.randn(4, 3, 8, 8)
    cond = Conditioning.empty(4)
    with torch.no_grad():
        torch.testing.assert_close(d(x, torch.full((4,), 1e-5), cond), x, atol=1e-4, rtol=0)
        high = d(x, torch.full((4,), 1e5), cond)
        torch.testing.assert_close(high, SD * net.seen[-1][2], atol=1e-4, rtol=1e-4)


def test_precond_under_autocast_returns_input_dtype_and_keeps_skip_precise():
    torch.manual_seed(0)
    net = Recorder()
    d = EDMPrecond(net)
    x = torch.randn(2, 3, 8, 8)
    cond = Conditioning.empty(2)
    with torch.no_grad():
        ref = d(x, 0.01, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = d(x, 0.01, cond)
    assert net.seen[-1][2].dtype == torch.bfloat16  # the network ran in bf16
    assert out.dtype == torch.float32
    # At low noise D ~ x: a bf16 skip would be off by ~1e-2; only the tiny c_out * F is bf16.
    assert (out - ref).abs().max().item() < 1e-3


def test_precond_rejects_bad_shapes():
    d = EDMPrecond(lambda x, c, cond: x[:, :1])
    with pytest.raises(InputError, match="network output shape"):
        d(torch.zeros(1, 3, 4, 4), 1.0, Conditioning.empty(1))
    with pytest.raises(InputError, match=r"\[B, C, H, W\]"):
        d(torch.zeros(3, 4, 4), 1.0, Conditioning.empty(1))


# ----- loss -----------------------------------------------------------------------------------

MU = torch.tensor([0.3, -0.2, 0.5, 0.0]).reshape(1, 2, 2)


def test_loss_is_zero_for_the_exact_denoiser_of_a_point_mass():
    x0 = MU.expand(256, 1, 2, 2)
    loss = EDMLoss()(GaussianDenoiser(MU, 0.0), x0, Conditioning.empty(256),
                     torch.Generator().manual_seed(0))
    assert loss.shape == (256,)
    assert loss.abs().max().item() < 1e-10
    bad = EDMLoss()(GaussianDenoiser(MU + 0.1, 0.0), x0, Conditioning.empty(256),
                    torch.Generator().manual_seed(0))
    assert (bad > 0).all()


def test_loss_of_exact_gaussian_denoiser_is_the_irreducible_minimum():
    v, n = 0.1, 8192
    g = torch.Generator().manual_seed(1)
    x0 = MU + math.sqrt(v) * torch.randn(n, 1, 2, 2, generator=g)
    cond = Conditioning.empty(n)
    loss_fn = EDMLoss()
    loss, sigma = loss_fn(GaussianDenoiser(MU, v), x0, cond, torch.Generator().manual_seed(2),
                          return_sigma=True)
    # E|D - x0|^2 per pixel = v sigma^2 / (v + sigma^2) for the posterior mean; times lambda.
    lam = (sigma**2 + SD**2) / (sigma * SD) ** 2
    expected = lam * v * sigma**2 / (v + sigma**2)
    assert (loss / expected).mean().item() == pytest.approx(1.0, abs=0.05)
    # Any other denoiser does worse on the same draws.
    for wrong in [GaussianDenoiser(MU, 4 * v), GaussianDenoiser(MU + 0.2, v)]:
        worse = loss_fn(wrong, x0, cond, torch.Generator().manual_seed(2))
        assert worse.mean() > 1.1 * loss.mean()


def test_loss_is_reproducible_and_accepts_given_sigma():
    x0 = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    cond = Conditioning.empty(8)
    d = GaussianDenoiser(MU, 0.3)
    a = EDMLoss()(d, x0, cond, torch.Generator().manual_seed(5))
    b = EDMLoss()(d, x0, cond, torch.Generator().manual_seed(5))
    c = EDMLoss()(d, x0, cond, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    _, sigma = EDMLoss()(d, x0, cond, torch.Generator().manual_seed(0), sigma=0.7,
                         return_sigma=True)
    assert torch.equal(sigma, torch.full((8,), 0.7))


def test_loss_trains_a_preconditioned_network():
    """Gradients reach the network through EDMPrecond, and following them lowers the loss: a few
    hundred Adam steps on one fixed batch, the loss measured on the same noise before and after."""
    torch.manual_seed(0)
    net = Recorder()
    denoiser, loss_fn = EDMPrecond(net), EDMLoss()
    x0 = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cond = Conditioning.empty(8)

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(loss_fn(denoiser, x0, cond, torch.Generator().manual_seed(99)).mean())

    before = held_out_loss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(300):
        opt.zero_grad()
        loss_fn(denoiser, x0, cond, torch.Generator().manual_seed(step)).mean().backward()
        opt.step()
    assert net.conv.weight.grad is not None and net.conv.weight.grad.abs().sum() > 0
    assert held_out_loss() < 0.8 * before  # measured: 1.53 -> 1.10 (one 3x3 conv can do only so much)


# ----- analytic denoisers ---------------------------------------------------------------------


def _tweedie(denoiser, x, sigma, cond):
    """x + sigma^2 grad log p_sigma(x): the posterior mean from the density alone."""
    grad = torch.func.grad(lambda y: denoiser.log_prob(y, sigma, cond).sum())(x)
    return x + sigma.reshape(-1, 1, 1, 1) ** 2 * grad


def _gmm() -> GaussianMixtureDenoiser:
    means = torch.stack([torch.full((1, 2, 2), 0.6), torch.full((1, 2, 2), -0.4), MU])
    weights, var = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([0.05, 0.1, 0.02])
    return GaussianMixtureDenoiser(means, weights, var)


def _diagonal_gaussian() -> GaussianDenoiser:
    return GaussianDenoiser(MU, torch.tensor([0.1, 0.2]).reshape(1, 1, 2))


@pytest.mark.parametrize("make", [_diagonal_gaussian, _gmm])
def test_analytic_denoisers_satisfy_tweedie(make):
    d = make()
    assert isinstance(d, Denoiser)
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.2, 0.5, 1.0, 3.0], dtype=torch.float64)
    cond = Conditioning.empty(5)
    torch.testing.assert_close(d(x, sigma, cond), _tweedie(d, x, sigma, cond))


def test_gaussian_jacobian_is_the_shrinkage_factor():
    d = GaussianDenoiser(MU, 0.3)
    x = torch.randn(1, 1, 2, 2)
    jac = torch.func.jacrev(lambda y: d(y, torch.tensor([0.5]), Conditioning.empty(1)))(x)
    torch.testing.assert_close(jac.reshape(4, 4), 0.3 / (0.3 + 0.25) * torch.eye(4))


# torch's first jvp call scripts decompositions with the deprecated torch.jit.script.
@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")
def test_mixture_works_under_torch_func_transforms():
    d = _gmm()
    cond = Conditioning.empty(1)
    sigma = torch.tensor([0.3])
    f = lambda y: d(y, sigma, cond)  # noqa: E731
    x = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    jac = torch.func.jacrev(f)(x).reshape(4, 4)
    v = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    _, jv = torch.func.jvp(f, (x,), (v,))
    torch.testing.assert_close(jv.reshape(4), jac @ v.reshape(4), atol=1e-5, rtol=1e-5)
    # vmap over a stack of single-image batches.
    xs = torch.randn(3, 1, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(torch.func.vmap(f)(xs), torch.cat([f(xi) for xi in xs])[:, None])


def test_single_component_mixture_is_the_gaussian():
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    sigma, cond = torch.tensor([0.1, 1.0, 10.0]), Conditioning.empty(3)
    gmm = GaussianMixtureDenoiser(MU[None], var=0.2)
    torch.testing.assert_close(gmm(x, sigma, cond), GaussianDenoiser(MU, 0.2)(x, sigma, cond))


def test_analytic_parameters_can_depend_on_the_conditioning():
    # Mean = +1 in the pixel column of the first conditioner's x, 0 elsewhere.
    def mean(cond):
        col = (cond.locations[:, 0, 0] * 2).long().clamp(max=1)
        one_hot = torch.nn.functional.one_hot(col, 2).float().reshape(-1, 1, 1, 2)
        return one_hot * cond.mask[:, :1, None, None]

    d = GaussianDenoiser(mean, 0.1)
    cond = Conditioning.from_lists([[(0.1, 0.5)], [(0.9, 0.5)], []])
    out = d(torch.zeros(3, 1, 1, 2), torch.full((3,), 1e4), cond)  # huge noise: D ~ mean
    expected = torch.tensor([[1.0, 0], [0, 1], [0, 0]]).reshape(3, 1, 1, 2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_mixture_weights_and_means_can_depend_on_the_conditioning():
    # Given any conditioner only the first mode is allowed; given none, both equally.
    means = torch.stack([torch.full((1, 2, 2), 0.8), torch.full((1, 2, 2), -0.8)])
    weights = lambda c: torch.where(  # noqa: E731
        c.mask.any(1, keepdim=True), torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])
    )
    d = GaussianMixtureDenoiser(lambda c: means.expand(c.batch_size, 2, 1, 2, 2), weights, 0.01)
    cond = Conditioning.from_lists([[(0.5, 0.5)], []])
    out = d(torch.zeros(2, 1, 2, 2), torch.full((2,), 1e3), cond)  # huge noise: D ~ E[x0]
    torch.testing.assert_close(out[0], means[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], torch.zeros(1, 2, 2), atol=1e-4, rtol=0)


def test_analytic_denoisers_reject_bad_parameters():
    with pytest.raises(InputError, match=r"mean must have shape \[C, H, W\]"):
        GaussianDenoiser(torch.zeros(2, 2), 0.1)
    with pytest.raises(InputError, match="var must be >= 0"):
        GaussianDenoiser(MU, -0.1)
    with pytest.raises(InputError, match=r"weights must have shape \[2\]"):
        GaussianMixtureDenoiser(torch.zeros(2, 1, 2, 2), torch.ones(3), 0.1)
    with pytest.raises(InputError, match="positive sum"):
        GaussianMixtureDenoiser(torch.zeros(2, 1, 2, 2), torch.zeros(2), 0.1)
    with pytest.raises(InputError, match=r"var must be a float or have shape \[2\]"):
        GaussianMixtureDenoiser(torch.zeros(2, 1, 2, 2), None, torch.ones(3))

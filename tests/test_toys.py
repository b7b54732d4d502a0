"""The CPC <-> LCS equivalence on toys with an exact score: a CPC distribution has a local
conditional score (zero Jacobians across regions), one that breaks CPC does not, and the
composition s_b + sum_j (s_j - s_b) is exact only in the CPC case."""

from __future__ import annotations

import pytest
import torch

from locodiff.conditioning import Conditioning
from locodiff.diffusion import ScoreComposition
from locodiff.errors import ConfigError
from locodiff.analytic.toys import (
    RegionMixtureToy,
    ToyOptions,
    compose_single_scores,
    measure_locality,
    squares_dataset,
)
from locodiff.errors import InputError

# three conditioners, off the pixel centres, well apart (regions are 1 px Chebyshev discs)
COND = Conditioning.from_lists([[(0.22, 0.2), (0.71, 0.33), (0.4, 0.77)], [(0.6, 0.6)]])
TOYS = {
    "cpc": dict(),
    "global_shift": dict(global_shift=0.3),
    "shared_sign": dict(shared_sign=True),
}


def _x(seed: int = 0, scale: float = 0.7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", list(TOYS))
@pytest.mark.parametrize("sigma", [0.05, 0.5])
def test_closed_form_score_is_the_gradient_of_the_exact_log_density(name, sigma):
    toy = RegionMixtureToy(ToyOptions(**TOYS[name]))
    x = _x().requires_grad_(True)
    cond = Conditioning(COND.locations.double(), COND.mask)
    (grad,) = torch.autograd.grad(toy.log_prob(x, sigma, cond).sum(), x)
    assert torch.allclose(toy.score(x.detach(), sigma, cond), grad, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("sigma", [0.1, 1.0])
def test_cpc_toy_has_a_local_conditional_score(sigma):
    toy = RegionMixtureToy()
    assert toy.is_cpc
    check = measure_locality(toy, _x(1), sigma, COND, toy.regions(COND), toy.blocks(COND))
    # conditional locality: a conditioner changes nothing outside its region ...
    assert check.off_region_conditioner.abs().max() == 0
    # ... though inside it the probe does see a real dependence
    assert (check.in_region_conditioner[COND.mask] > 1e-3).all()
    # pixel locality: no coupling between independent blocks, real coupling within them
    assert check.cross_block_pixel.max() == 0
    assert (check.within_block_pixel > 1e-3).all()


@pytest.mark.parametrize("name", ["global_shift", "shared_sign"])
def test_toys_that_break_cpc_have_no_local_conditional_score(name):
    toy = RegionMixtureToy(ToyOptions(**TOYS[name]))
    assert not toy.is_cpc
    x = _x(1)
    check = measure_locality(toy, x, 0.3, COND, toy.regions(COND), toy.blocks(COND))
    # image 0 has three conditioners: each one acts far outside its region
    assert (check.off_region_conditioner[0] > 1e-2).all()
    if name == "shared_sign":  # objects are coupled: pixels of one region move another's score
        assert check.cross_block_pixel[0] > 1e-2
    else:  # a global shift leaves pixels independent: the failure is purely conditional
        assert check.cross_block_pixel.max() == 0


@pytest.mark.parametrize("name", list(TOYS))
def test_composing_single_conditioner_scores_is_exact_only_for_cpc(name):
    toy = RegionMixtureToy(ToyOptions(**TOYS[name]))
    x, sigma = _x(2), 0.3
    exact = toy.score(x, sigma, COND)
    composed = compose_single_scores(toy, x, sigma, COND)
    error = (composed - exact).abs().max()
    if toy.is_cpc:
        assert error < 1e-9
        # the project's composition wrapper (x0 space, null background) agrees
        d_hat = ScoreComposition(toy, "null")(x, torch.full((2,), sigma, dtype=x.dtype), COND)
        assert torch.allclose((d_hat - x) / sigma**2, exact, atol=1e-8)
    else:
        assert error > 1e-2


def test_overlapping_regions_and_bad_shapes_are_rejected():
    toy = RegionMixtureToy()
    close = Conditioning.from_lists([[(0.5, 0.5), (0.55, 0.5)]])
    with pytest.raises(InputError, match="overlap"):
        toy.score(torch.zeros(1, 1, 8, 8), 0.5, close)
    with pytest.raises(InputError, match=r"\[B, 1, 8, 8\]"):
        toy.score(torch.zeros(1, 3, 8, 8), 0.5, COND[:1])
    with pytest.raises(ConfigError, match="radius_px"):
        RegionMixtureToy(ToyOptions(radius_px=0.0))


def test_squares_dataset_puts_each_square_on_its_conditioner():
    gen = torch.Generator().manual_seed(0)
    images, cond = squares_dataset(20, size=8, counts=(1, 2, 3), generator=gen)
    assert images.shape == (20, 3, 8, 8) and cond.batch_size == 20
    assert set(cond.counts().tolist()) <= {1, 2, 3}
    for i in range(20):
        for x, y in cond.locations[i][cond.mask[i]].tolist():
            r, c = int(y * 8), int(x * 8)  # pixel just below-right of the centre
            assert (images[i, :, r, c] != -0.5).any() and (images[i, :, r - 1, c - 1] != -0.5).any()

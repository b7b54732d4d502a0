"""Locality statistics: known radii and indices on analytic maps and denoisers; intervals."""

import math

import pytest
import torch
import torch.nn.functional as F

from locodiff.conditioning import Conditioning
from locodiff.locality.jacobian import conditioner_sensitivity, pixel_jacobian
from locodiff.locality.stats import (
    Estimate,
    bootstrap_mean,
    conditional_locality,
    conditional_locality_index,
    distance_maps,
    effective_radius,
    locations_to_pixels,
    mass_within,
    mean_ci,
    normal_mean,
    pixel_locality,
    row_energy,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP oversubscription on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


D64 = torch.float64


def ring_blur(x, sigma, cond):
    """D(x)_i = x_i + 0.5 * (4 neighbours at distance 2): energy 1 at the centre, 4 * 0.25 on a
    ring of radius 2 — half the mass at r = 0, all of it at r = 2."""
    k = torch.zeros(5, 5, dtype=x.dtype)
    k[2, 2] = 1.0
    k[0, 2] = k[4, 2] = k[2, 0] = k[2, 4] = 0.5
    c = x.shape[1]
    return F.conv2d(x, k[None, None].expand(c, 1, -1, -1), padding=2, groups=c)


def test_ring_kernel_has_known_mass_curve_and_effective_radii():
    x = torch.randn(1, 1, 11, 11, dtype=D64)
    pixels = torch.tensor([[[5, 5], [3, 6]]])  # interior: the full ring fits
    rows = pixel_jacobian(ring_blur, x, 1.0, Conditioning.empty(1), pixels, target="x0")
    pl = pixel_locality(row_energy(rows), pixels, radii=[0, 1, 1.9, 2, 5],
                        quantiles=[0.3, 0.5, 0.51, 0.9, 0.99])
    expected = torch.tensor([0.5, 0.5, 0.5, 1.0, 1.0], dtype=D64)
    assert torch.allclose(pl.fractions, expected.expand(1, 2, -1))
    assert pl.radii_q[0, 0].tolist() == [0.0, 0.0, 2.0, 2.0, 2.0]
    assert torch.allclose(pl.total, torch.full((1, 2), 2.0, dtype=D64))


def test_effective_radius_on_the_grid_and_zero_mass_is_nan():
    energy = torch.zeros(2, 7, 7)
    energy[0, 3, 3] = 1.0
    energy[0, 4, 4] = 3.0  # distance sqrt(2) from the centre: 75% of the mass
    dist = distance_maps(torch.tensor([[3.0, 3.0], [3.0, 3.0]]), 7, 7)
    r = effective_radius(energy, dist, [0.2, 0.25, 0.5, 1.0])
    assert r[0].tolist() == pytest.approx([0.0, 0.0, math.sqrt(2), math.sqrt(2)])
    assert torch.isnan(r[1]).all() and torch.isnan(mass_within(energy, dist, [1.0])[1]).all()


def test_locations_map_to_pixel_centres():
    # pixel (row 2, col 5) of an 8x10 image has its centre at x = 5.5/10, y = 2.5/8
    rc = locations_to_pixels(torch.tensor([[0.55, 2.5 / 8]]), 8, 10)
    assert torch.allclose(rc, torch.tensor([[2.0, 5.0]]))


class CutoffBumps:
    """D(x, c)_i = x_i (1 + sum_k phi(|p_i - c_k|)), phi = (1 - d^2/d0^2)^2 inside d0."""

    def __init__(self, d0):
        self.d0 = d0

    def __call__(self, x, sigma, cond):
        h, w = x.shape[-2:]
        rc = locations_to_pixels(cond.locations, h, w)
        d2 = distance_maps(rc, h, w).pow(2)
        u = (1 - d2 / self.d0**2).clamp_min(0)
        return x * (1 + (u**2 * cond.mask[:, :, None, None]).sum(1, keepdim=True))


class GlobalGain:
    """D(x, c)_i = x_i (1 + sum_k sin(3 x_k) cos(2 y_k)): every pixel hears every conditioner
    equally (times x_i). With x = 1 every sensitivity map is flat: the chance level exactly."""

    def __call__(self, x, sigma, cond):
        loc = cond.locations
        g = ((3 * loc[..., 0]).sin() * (2 * loc[..., 1]).cos() * cond.mask).sum(1)
        return x * (1 + g[:, None, None, None])


def scenes():
    return Conditioning.from_lists(
        [[(0.2, 0.25), (0.75, 0.7)], [(0.5, 0.5)], [(0.15, 0.8), (0.8, 0.2), (0.45, 0.45)]]
    )


def index_at(model, cond, radius, x=None, h=20, w=20):
    x = torch.randn(cond.batch_size, 2, h, w, dtype=D64) if x is None else x
    cond = Conditioning(cond.locations.to(D64), cond.mask)
    sens = conditioner_sensitivity(model, x, 0.5, cond)
    cl = conditional_locality(sens, cond.locations, cond.mask, radii=[radius])
    gen = torch.Generator().manual_seed(0)
    summary = conditional_locality_index(cl.own_share[..., 0], cl.chance[..., 0], cl.valid, cl.inert, radius, None,
                                         lambda values, groups: mean_ci(values, groups, gen))
    return cl, summary


def test_cutoff_bumps_are_perfectly_local_at_their_cutoff_and_not_below():
    cl, at_cutoff = index_at(CutoffBumps(d0=3.0), scenes(), radius=3.0)
    assert at_cutoff.index.mean == pytest.approx(1.0, abs=1e-12)
    assert at_cutoff.normalised.mean == pytest.approx(1.0, abs=1e-12)
    assert at_cutoff.n_conditioners == 6 and at_cutoff.n_inert == 0
    # conditioners are > 2 d0 apart, so every pixel hears only its nearest one
    assert cl.nearest_share[1].isnan()  # a single conditioner: undefined
    assert torch.allclose(cl.nearest_share[[0, 2]], torch.ones(2, dtype=D64))
    _, inside = index_at(CutoffBumps(d0=3.0), scenes(), radius=1.5)
    assert inside.index.mean < 0.9


def test_global_conditioning_scores_the_chance_level():
    cond = scenes()
    ones = torch.ones(3, 1, 20, 20, dtype=D64)
    cl, s = index_at(GlobalGain(), cond, radius=3.0, x=ones)
    # chance = share of the 400 pixels within 3 px of each location
    rc = locations_to_pixels(cond.locations.to(D64), 20, 20)
    area = (distance_maps(rc, 20, 20) <= 3.0 + 1e-9).to(D64).mean((-2, -1))
    assert torch.allclose(cl.chance[..., 0][cond.mask], area[cond.mask])
    assert s.index.mean == pytest.approx(s.chance.mean, abs=1e-12)
    assert s.normalised.mean == pytest.approx(0.0, abs=1e-12)
    assert (cl.nearest_share[[0, 2]] < 0.75).all()  # far from 1: pixels hear all conditioners
    assert s.index.mean < 0.15


def test_inert_conditioners_are_counted_not_averaged():
    def ignores(x, sigma, cond):
        return x * 2 + 0 * cond.locations.sum()

    cl, s = index_at(ignores, scenes(), radius=3.0)
    assert s.n_inert == 6 and s.n_conditioners == 0 and math.isnan(s.index.mean)


def test_bootstrap_is_seeded_covers_the_mean_and_widens_with_clustering():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(400, generator=g, dtype=D64) + 1.0
    a = bootstrap_mean(values, None, torch.Generator().manual_seed(1))
    b = bootstrap_mean(values, None, torch.Generator().manual_seed(1))
    assert a == b and a.lo < 1.0 < a.hi and a.lo < a.mean < a.hi
    n = normal_mean(values)
    assert n.hi - n.lo == pytest.approx(a.hi - a.lo, rel=0.2)
    # 20 scenes of 20 identical units: the interval must reflect 20 clusters, not 400 units
    clustered = values[:20].repeat_interleave(20)
    groups = torch.arange(20).repeat_interleave(20)
    wide = bootstrap_mean(clustered, groups, torch.Generator().manual_seed(1))
    naive = bootstrap_mean(clustered, None, torch.Generator().manual_seed(1))
    assert (wide.hi - wide.lo) > 3 * (naive.hi - naive.lo)
    assert wide.groups == 20 and wide.n == 400
    nan = bootstrap_mean(torch.tensor([1.0, math.nan, 3.0]), None, g)
    assert nan.mean == 2.0 and nan.n == 2


def test_estimate_json_round_trip_turns_nan_into_none():
    e = Estimate(0.5, math.nan, math.nan, 1, 1)
    d = e.to_dict()
    assert d["lo"] is None
    back = Estimate.from_dict(d)
    assert back.mean == 0.5 and math.isnan(back.lo)

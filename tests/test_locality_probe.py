"""The locality probe end to end: local vs global tiny models, save/load/merge, sampling error,
figures."""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from locodiff.conditioning import Conditioning
from locodiff.locality.probe import ProbeSpec, SamplingErrorOptions, probe_locality, sample_pixels, sampling_error
from locodiff.locality.result import LocalityResult, merge_results
from locodiff.locality.stats import distance_maps, locations_to_pixels


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP oversubscription on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def compact_bumps(cond, h, w, radius=2.0):
    """[B, 1, H, W] smooth bumps that are exactly zero beyond ``radius`` pixels."""
    d2 = distance_maps(locations_to_pixels(cond.locations, h, w), h, w).pow(2)
    u = (1 - d2 / radius**2).clamp_min(0) ** 2
    return (u * cond.mask[:, :, None, None]).sum(1, keepdim=True)


class LocalNet(nn.Module):
    """Two 3x3 convs over [x, bump map]: conditioner footprint <= 2 + 2*sqrt(2) < 5 pixels."""

    def __init__(self, c=3, width=16):
        super().__init__()
        self.a = nn.Conv2d(c + 1, width, 3, padding=1)
        self.b = nn.Conv2d(width, c, 3, padding=1)

    def forward(self, x, sigma, cond):
        m = compact_bumps(cond, *x.shape[-2:])
        return self.b(torch.tanh(self.a(torch.cat([x, 3 * m], 1))))


class GlobalNet(nn.Module):
    """Locations pooled into one vector that modulates every pixel (FiLM)."""

    def __init__(self, c=3, width=16):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.film = nn.Linear(width, 2 * width)
        self.a = nn.Conv2d(c, width, 3, padding=1)
        self.b = nn.Conv2d(width, c, 3, padding=1)

    def forward(self, x, sigma, cond):
        loc = cond.locations * math.pi
        m = cond.mask[..., None].to(x.dtype)
        pooled = (torch.tanh(self.embed(torch.cat([loc.sin(), loc.cos()], -1))) * m).sum(1)
        scale, shift = self.film(pooled)[:, :, None, None].chunk(2, 1)
        return self.b(torch.tanh(self.a(x) * (1 + scale) + shift))


def data(seed=0, n=4, size=16):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    cond = Conditioning.from_lists(
        [[(0.2, 0.25), (0.75, 0.7)], [(0.5, 0.5)], [], [(0.15, 0.8), (0.8, 0.2), (0.45, 0.45)]][:n]
    )
    return images, cond


def probe(net_cls, seed=0, **kw):
    torch.manual_seed(seed)  # model init
    net = net_cls()
    images, cond = data(seed)
    spec = ProbeSpec((0.2, 2.0), 6, **{"radius": 5.0, "n_boot": 200, **kw})
    return probe_locality(net.eval(), images, cond, spec, torch.Generator().manual_seed(seed), progress=False)


def test_local_model_scores_local_and_global_model_scores_near_chance():
    local = probe(LocalNet)
    glob = probe(GlobalNet)
    for s_local, s_glob in zip(local.summaries, glob.summaries):
        assert s_local.index.index.mean == pytest.approx(1.0, abs=1e-6)
        assert s_local.index.n_conditioners == 6  # the empty scene adds none
        assert s_glob.index.normalised.hi < 0.3
        assert s_glob.index.index.mean < 0.5 * s_local.index.index.mean
        # two 3x3 convs: all pixel mass within Chebyshev 2, i.e. Euclidean sqrt(8)
        r3 = local.radii.index(3.0)
        assert s_local.mass_fraction[r3].mean == pytest.approx(1.0, abs=1e-6)
        assert s_local.effective_radius[-1].mean <= math.sqrt(8) + 1e-6


class CountNet(LocalNet):
    """LocalNet plus a global brightening by the number of conditioners: local under every small
    move of a location, global in whether a conditioner is there."""

    def forward(self, x, sigma, cond):
        return super().forward(x, sigma, cond) + 0.3 * cond.mask.sum(1).to(x.dtype)[:, None, None, None]


def test_the_presence_index_catches_what_location_derivatives_cannot():
    local, count, glob = probe(LocalNet), probe(CountNet), probe(GlobalNet)
    for s_local, s_count, s_glob in zip(local.summaries, count.summaries, glob.summaries):
        assert s_local.presence_index.index.mean == pytest.approx(1.0, abs=1e-6)
        assert s_local.presence_index.n_conditioners == 6
        assert s_count.index.index.mean == pytest.approx(1.0, abs=1e-6)  # moves: local
        assert s_count.presence_index.normalised.hi < 0.3  # removal: global
        assert s_glob.presence_index.normalised.hi < 0.3


def test_probe_is_deterministic_given_the_generator():
    a, b = probe(LocalNet, seed=3), probe(LocalNet, seed=3)
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    assert torch.equal(a.arrays["pixels"], b.arrays["pixels"])


def test_save_load_round_trip_and_merge(tmp_path):
    res = probe(LocalNet, keep_maps=True, ci="normal")
    res.save(tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"summary.json", "maps.safetensors"}
    back = LocalityResult.load(tmp_path / "run")
    assert back.to_dict() == json.loads(json.dumps(res.to_dict()))
    assert back.arrays["cond_sensitivity"].shape == (2, 4, 3, 16, 16)
    other = probe(LocalNet, seed=1, keep_maps=False)
    merged = merge_results([res, other], torch.Generator().manual_seed(0))
    assert merged.arrays["own_share"].shape[1] == 8
    assert merged.summaries[0].index.n_conditioners == 12
    assert merged.arrays["scene_group"].unique().numel() == 8
    by_run = merge_results([res, other], torch.Generator().manual_seed(0), cluster="run")
    assert by_run.summaries[0].index.index.groups == 2


def test_sampling_error_is_zero_with_every_pixel_and_small_with_a_sample():
    net = LocalNet().eval()
    images, cond = data()
    everything = sampling_error(net, images[:2], 0.5, cond[:2], 16 * 16, torch.Generator())
    assert everything.max_relative_error < 1e-5
    some = sampling_error(net, images[:2], 0.5, cond[:2], 24, torch.Generator().manual_seed(0),
                          SamplingErrorOptions(radii=(1.0, 2.0), quantiles=(0.5, 0.9)))
    assert some.max_relative_error < 0.2
    assert all(se >= 0 for se in some.sampled_fraction_se)


def test_analytic_blur_gives_its_known_radius_at_every_sigma():
    def ring_blur(x, sigma, cond):  # energy 1 at the centre and 4 * 0.25 at distance 2
        k = torch.zeros(5, 5)
        k[2, 2] = 1.0
        k[0, 2] = k[4, 2] = k[2, 0] = k[2, 4] = 0.5
        return F.conv2d(x, k[None, None].expand(3, 1, -1, -1), padding=2, groups=3)

    images, cond = data()
    res = probe_locality(ring_blur, images, cond, ProbeSpec((0.5, 5.0), 8, target="x0", radius=2.0, n_boot=100),
                         torch.Generator().manual_seed(0), progress=False)
    for s in res.summaries:
        at_2 = s.mass_fraction[res.radii.index(2.0)]
        assert at_2.mean == pytest.approx(1.0) and at_2.lo == pytest.approx(1.0)
        assert s.effective_radius[-1].mean == pytest.approx(2.0)  # 99%: the ring
        assert s.index.n_inert == 6  # a blur ignores its conditioners


def test_sample_pixels_are_distinct_in_range_and_stratified():
    for n, strat in ((5, True), (20, True), (20, False)):  # 20 > 7 columns: plain sampling
        pix = sample_pixels(9, 7, n, torch.Generator().manual_seed(0), batch=3, stratified=strat)
        assert pix.shape == (3, n, 2)
        flat = pix[..., 0] * 7 + pix[..., 1]
        assert all(f.unique().numel() == n for f in flat)
        assert pix[..., 0].max() < 9 and pix[..., 1].max() < 7 and pix.min() >= 0
    lhs = sample_pixels(32, 32, 8, torch.Generator().manual_seed(1), batch=4)
    for b in range(4):  # one row in each band of 4 rows, one column in each band of 4 columns
        assert (lhs[b, :, 0] // 4).sort().values.tolist() == list(range(8))
        assert (lhs[b, :, 1] // 4).sort().values.tolist() == list(range(8))
    assert sample_pixels(2, 2, 10, torch.Generator()).shape == (1, 4, 2)


def test_figures_are_written(tmp_path):
    from locodiff.locality import figures  # sets the Agg backend before pyplot loads

    import matplotlib.pyplot as plt

    res = probe(LocalNet)
    glob = probe(GlobalNet)
    figs = {
        "p.png": figures.pixel_sensitivity_figure(res, scene=0),
        "c.png": figures.conditioner_sensitivity_figure(res, scene=3),
        "r.png": figures.radius_vs_sigma_figure({"local": res, "global": glob.to_dict()}),
        "i.pdf": figures.index_vs_sigma_figure({"local": res, "global": glob}),
    }
    paths = [figures.save_figure(fig, tmp_path / name) for name, fig in figs.items()]
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
    assert not any(plt.fignum_exists(fig.number) for fig in figs.values())  # closed: a report draws dozens

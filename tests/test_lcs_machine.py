"""The local conditional score machine: it memorises at tiny noise, is local in pixels and in
conditioners by construction, matches a plain per-candidate reference, chunks without changing
its answer, calibrates its own patch size, and can be sampled."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from locodiff.conditioning import Conditioning
from locodiff.diffusion import sample_heun
from locodiff.errors import ConfigError, LocodiffError
from locodiff.analytic import (
    LCSMachine,
    PatchSchedule,
    calibrate_patch_schedule,
    r2_against,
    squares_dataset,
)
from locodiff.locality.jacobian import pixel_jacobian
from locodiff.errors import InputError


def _data(n: int = 24, seed: int = 0, counts=(1, 2)):
    return squares_dataset(n, size=8, counts=counts, generator=torch.Generator().manual_seed(seed))


IMAGES, CONDS = _data()


def _noisy(images: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return images + sigma * torch.randn(images.shape, generator=gen, dtype=images.dtype)


def _sig(sigma: float, b: int) -> torch.Tensor:
    return torch.full((b,), sigma)


# ----- a plain reference: one Python iteration per training candidate -------------------------


def _reference_pixel(machine: LCSMachine, x, sigma, cond, b, row, col, size):
    """Output pixel (row, col) of image b, written from the rule in the module doc."""
    n, c, h, w = machine.images.shape
    half, reach = size // 2, size / 2 + machine.margin_px
    tol2 = machine.tolerance_px**2

    def window(img, r, k):
        return F.pad(img.double(), (half,) * 4)[:, r : r + size, k : k + size]

    def nearby(locs, mask, r, k):
        found = []
        for (lx, ly), present in zip(locs.tolist(), mask.tolist()):
            d = (lx * w - (k + 0.5), ly * h - (r + 0.5))
            if present and max(abs(d[0]), abs(d[1])) <= reach:
                found.append(d)
        return found

    def match(a, t):
        if len(a) != len(t):
            return None
        if not a:
            return 0.0
        d2 = [[(p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 for q in t] for p in a]
        best_a, best_t = [min(r) for r in d2], [min(col) for col in zip(*d2)]
        return None if max(best_a + best_t) > tol2 else (sum(best_a) + sum(best_t)) / 2

    query = window(x[b], row, col)
    wanted = nearby(cond.locations[b], cond.mask[b], row, col)
    radius = machine.locality_radius
    logw, logw_any, values = [], [], []
    for i in range(n):
        for r in range(h):
            for k in range(w):
                if radius is not None and max(abs(r - row), abs(k - col)) > radius:
                    continue
                sq = float((query - window(machine.images[i], r, k)).square().sum())
                lw = -sq / (2 * sigma**2)
                cost = match(wanted, nearby(machine.locations[i], machine.mask[i], r, k))
                if cost is not None and machine.bandwidth_px is not None:
                    lw_c = lw - cost / (2 * machine.bandwidth_px**2)
                else:
                    lw_c = lw if cost is not None else -math.inf
                logw.append(lw_c)
                logw_any.append(lw)
                values.append(machine.images[i, :, r, k].double())
    logw = torch.tensor(logw, dtype=torch.float64)
    if not torch.isfinite(logw).any():
        logw = torch.tensor(logw_any, dtype=torch.float64)
    return (logw.softmax(0)[:, None] * torch.stack(values)).sum(0)


@pytest.mark.parametrize("radius, bandwidth", [(None, None), (None, 0.8), (1, None)])
def test_machine_matches_the_plain_reference(radius, bandwidth):
    machine = LCSMachine(IMAGES[:6], CONDS[:6], 3, locality_radius=radius, bandwidth_px=bandwidth,
                         tolerance_px=1.0)
    held_out, held_conds = _data(2, seed=5)
    # image 1: three conditioners close together, more than any training window holds
    crowded = Conditioning.from_lists([[(0.3, 0.3)], [(0.4, 0.4), (0.6, 0.4), (0.5, 0.6)]])
    cond = Conditioning.cat([held_conds[:1], crowded[1:]])
    sigma = 0.4
    x = _noisy(held_out.double(), sigma)
    out = machine(x, _sig(sigma, 2).double(), cond)
    assert out.dtype == torch.float64
    pixels = [(0, 6, 1), (0, 2, 3), (0, 0, 7), (1, 3, 4), (1, 0, 6), (1, 7, 0)]
    for b, row, col in pixels:
        ref = _reference_pixel(machine, x, sigma, cond, b, row, col, 3)
        assert torch.allclose(out[b, :, row, col], ref, atol=1e-8), (b, row, col)
    assert machine.fallback_pixels > 0  # the crowded centre of image 1 had no compatible patch
    # the conditioners matter at some of these pixels (e.g. image 1 shows an unlabelled square
    # at (0, 6); the machine, told nothing is there, must explain it with background patches)
    blind = LCSMachine(IMAGES[:6], Conditioning.empty(6), 3, locality_radius=radius)
    ignored = blind(x, _sig(sigma, 2).double(), Conditioning.empty(2))
    assert max((out - ignored)[b, :, r, k].abs().max() for b, r, k in pixels) > 0.1


# ----- behaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [None, 0])
@pytest.mark.parametrize("size", [3, 5])
def test_tiny_noise_returns_the_training_image(radius, size):
    machine = LCSMachine(IMAGES, CONDS, size, locality_radius=radius)
    x = _noisy(IMAGES[:4], 0.01)
    out = machine(x, _sig(0.01, 4), CONDS[:4])
    assert (out - IMAGES[:4]).abs().max() < 1e-3
    assert machine.fallback_pixels == 0 and machine.query_pixels == 4 * 64


@pytest.mark.parametrize("radius", [None, 1])
def test_far_conditioners_and_far_pixels_change_nothing(radius):
    machine = LCSMachine(IMAGES, CONDS, 3, locality_radius=radius, margin_px=1.0)
    # window around pixel (2, 2): rows and cols 1..3; conditioners count within 1.5 + 1 px of
    # its centre (2.5, 2.5) in pixel units
    sigma, row, col = 0.5, 2, 2
    x = _noisy(IMAGES[:1], sigma)
    cond = Conditioning.from_lists([[(0.3, 0.3), (0.8, 0.7)]])
    moved = cond.with_locations(torch.tensor([[[0.3, 0.3], [0.65, 0.9]]]))  # still far from (2, 2)
    base = machine(x, _sig(sigma, 1), cond)
    assert torch.equal(machine(x, _sig(sigma, 1), moved)[..., row, col], base[..., row, col])
    far_pixels = x.clone()
    far_pixels[..., 5:, :] = 0.9  # rows 5..7 are outside the window around row 2
    far_pixels[..., :, 4:] = -0.9
    out = machine(far_pixels, _sig(sigma, 1), cond)
    assert torch.equal(out[..., row, col], base[..., row, col])
    # a nearby conditioner does matter: the locality is not vacuous
    nearer = cond.with_locations(torch.tensor([[[0.3, 0.3], [0.45, 0.45]]]))
    assert not torch.equal(machine(x, _sig(sigma, 1), nearer)[..., row, col], base[..., row, col])


def test_locality_probe_sees_exactly_the_patch_window():
    machine = LCSMachine(IMAGES, CONDS, 3)
    # pixel (2, 6) of image 1 lies inside a square: its compatible training patches show squares
    # of every colour, so the output really depends on the noisy pixels (elsewhere the
    # conditioners alone can pin a pixel to the background, with a zero Jacobian)
    x = _noisy(IMAGES[1:2], 1.0)
    jac = pixel_jacobian(machine, x, 1.0, CONDS[1:2], [[2, 6]], target="x0")  # [1, 1, C, H, W]
    support = jac[0, 0].abs().sum(0) > 0  # [H, W]
    window = torch.zeros(8, 8, dtype=torch.bool)
    window[1:4, 5:8] = True
    assert (support <= window).all() and support[2, 6] and support.sum() > 3


@pytest.mark.parametrize("radius", [None, 1])
def test_chunked_and_unchunked_agree(radius):
    sigma = 0.3
    x = _noisy(IMAGES[:3], sigma)
    opts = dict(locality_radius=radius, bandwidth_px=1.0, tolerance_px=1.5)
    whole = LCSMachine(IMAGES, CONDS, 5, query_chunk=10**6, train_chunk=10**7, **opts)
    chunked = LCSMachine(IMAGES, CONDS, 5, query_chunk=7, train_chunk=50, **opts)
    a = whole(x, _sig(sigma, 3), CONDS[:3])
    b = chunked(x, _sig(sigma, 3), CONDS[:3])
    assert torch.allclose(a, b, atol=1e-5)


def test_compute_dtype_is_an_option_and_the_output_keeps_the_input_dtype():
    x = _noisy(IMAGES[:2], 0.2)
    exact = LCSMachine(IMAGES, CONDS, 5)(x.double(), _sig(0.2, 2).double(), CONDS[:2])
    out = LCSMachine(IMAGES, CONDS, 5, dtype=torch.float64)(x, _sig(0.2, 2), CONDS[:2])
    assert out.dtype == torch.float32 and torch.allclose(out.double(), exact, atol=1e-6)


def test_pixels_without_a_compatible_patch_get_the_unconditional_posterior():
    machine = LCSMachine(IMAGES, CONDS, 3)
    crowded = Conditioning.from_lists([[(0.4, 0.4), (0.6, 0.4), (0.5, 0.6)]])
    x, sigma = _noisy(IMAGES[:1], 0.5), _sig(0.5, 1)
    out = machine(x, sigma, crowded)
    assert 0 < machine.fallback_pixels < machine.query_pixels and 0 < machine.fallback_rate < 1
    blind = LCSMachine(IMAGES, Conditioning.empty(len(IMAGES)), 3)(x, sigma, Conditioning.empty(1))
    centre = out[..., 4, 4]  # 3 conditioners within reach: no training window had as many
    assert torch.allclose(centre, blind[..., 4, 4], atol=1e-6)
    machine.reset_counts()
    assert machine.fallback_pixels == 0
    strict = LCSMachine(IMAGES, CONDS, 3, fallback="error")
    with pytest.raises(InputError, match="no training patch"):
        strict(x, sigma, crowded)


def test_a_schedule_gives_each_image_its_own_patch_size():
    schedule = PatchSchedule((0.1, 1.0), (3, 7))
    machine = LCSMachine(IMAGES, CONDS, schedule)
    assert machine.size_for(0.05) == 3 and machine.size_for(2.0) == 7 and machine.size_for(0.3) == 3
    x = _noisy(IMAGES[:2], 0.5)
    sigma = torch.tensor([0.1, 1.0])
    both = machine(x, sigma, CONDS[:2])
    one = machine.with_patch_size(3)(x[:1], sigma[:1], CONDS[:1])
    other = machine.with_patch_size(7)(x[1:], sigma[1:], CONDS[1:2])
    assert torch.allclose(both, torch.cat([one, other]), atol=1e-6)
    grow = PatchSchedule.log_linear(3, 7, 0.05, 5.0)
    sizes = [grow(s) for s in (0.01, 0.1, 1.0, 10.0)]
    assert sizes == sorted(sizes) and sizes[0] == 3 and sizes[-1] == 7


def test_calibration_recovers_the_patch_size_of_a_machine_used_as_the_model():
    truth = LCSMachine(IMAGES, CONDS, 5, locality_radius=1)
    held_out, held_conds = _data(4, seed=7)  # on training images every size just memorises
    gen = torch.Generator().manual_seed(3)
    schedule, table = calibrate_patch_schedule(
        truth.with_patch_size(3), truth, held_out, held_conds, [0.2, 0.6], [3, 5, 7], gen
    )
    assert table.shape == (2, 3) and schedule.sigmas == (0.2, 0.6)
    assert schedule.sizes == (5, 5) and torch.allclose(table[:, 1], torch.ones(2), atol=1e-6)
    assert (table[:, [0, 2]] < 0.9).all()
    r2 = r2_against(truth, truth, held_out, held_conds, [0.3], torch.Generator().manual_seed(0))
    assert r2.shape == (1,) and abs(float(r2[0]) - 1) < 1e-9


@pytest.mark.parametrize("locations", [
    [[(0.5, 0.5)]],
    [[(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]],
])
def test_sampling_the_machine_gives_finite_images(locations):
    machine = LCSMachine(IMAGES, CONDS, PatchSchedule.log_linear(3, 7, 0.05, 3.0))
    cond = Conditioning.from_lists(locations * 2)
    gen = torch.Generator().manual_seed(0)
    steps = torch.tensor([10.0, 2.0, 0.6, 0.2, 0.05, 0.0])
    out = sample_heun(machine, (2, 3, 8, 8), cond, steps, generator=gen)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    assert out.abs().max() <= 1.0 + 1e-4  # a posterior mean of training pixels stays in range


def test_from_dataset_builds_a_machine_over_a_scene_dataset(tmp_path):
    from locodiff.scenes import DataConfig, SceneDataset

    cfg = DataConfig(resolution=16, supersample=1, train_images=6, test_images_per_count=1,
                     test_counts=(1,), shard_size=6)
    data = SceneDataset.from_config(cfg, tmp_path)
    machine = LCSMachine.from_dataset(data, policy="all", max_images=4, patch_size=3,
                                      locality_radius=0)
    assert machine.images.shape == (4, 3, 16, 16) and machine.mask.shape[0] == 4
    assert torch.equal(machine.mask.sum(1), data.tensors["counts"][:4])
    x = _noisy(machine.images[:1], 0.005)
    cond = Conditioning(machine.locations[:1], machine.mask[:1])
    # renders are smooth, so neighbouring images' patches compete a little even at low noise
    assert (machine(x, _sig(0.005, 1), cond) - machine.images[:1]).abs().max() < 0.01


# ----- bad inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("make, error, fragment", [
    (lambda: LCSMachine(IMAGES[:0], CONDS[:0], 3), ConfigError, "empty"),
    (lambda: LCSMachine(IMAGES[0], CONDS[:1], 3), ConfigError, r"\[N, C, H, W\]"),
    (lambda: LCSMachine(IMAGES, CONDS[:3], 3), ConfigError, "one row per image"),
    (lambda: LCSMachine(IMAGES, CONDS, 9), ConfigError, "larger than the 8x8"),
    (lambda: LCSMachine(IMAGES, CONDS, 4), ConfigError, "odd integer"),
    (lambda: LCSMachine(IMAGES, CONDS, 3, locality_radius=-1), ConfigError, "locality_radius"),
    (lambda: LCSMachine(IMAGES, CONDS, 3, tolerance_px=0), ConfigError, "tolerance_px"),
    (lambda: LCSMachine(IMAGES, CONDS, 3, bandwidth_px=0.0), ConfigError, "bandwidth_px"),
    (lambda: LCSMachine(IMAGES, CONDS, 3, dtype=torch.int64), ConfigError, "dtype"),
    (lambda: PatchSchedule((0.1,), (3, 5)), ConfigError, "one size per sigma"),
])
def test_bad_options_are_rejected(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()


def test_bad_calls_are_rejected():
    machine = LCSMachine(IMAGES, CONDS, 3)
    x = IMAGES[:2]
    with pytest.raises(InputError, match="sigma must be finite and > 0"):
        machine(x, _sig(0.0, 2), CONDS[:2])
    with pytest.raises(InputError, match=r"\(3, 16, 16\)"):
        machine(torch.zeros(2, 3, 16, 16), _sig(0.5, 2), CONDS[:2])
    with pytest.raises(InputError, match="batch size 3"):
        machine(x, _sig(0.5, 2), CONDS[:3])
    with pytest.raises(LocodiffError, match="larger than"):
        machine.with_patch_size(lambda s: 11)(x, _sig(0.5, 2), CONDS[:2])

"""The probe in the extrapolation regime: exact values on toys, exact zeros on local networks."""

import math

import pytest
import torch

from locodiff.conditioning import Conditioning
from locodiff.evaluate.runner import k_generator, scene_conditionings
from locodiff.intervene.masked import masked_composition
from locodiff.analytic.toys import CountCoupledToy, measure_locality
from locodiff.locality.config import ExtrapolationOptions, SceneDraw
from locodiff.locality.extrapolation import ExtrapolationResult, plan_scene, probe_extrapolation
from locodiff.stages.probe import extrapolation_scenes
from locodiff.models import ModelConfig, build_network
from locodiff.models.config import LocalOptions
from locodiff.stages.config import load_study_config

torch.set_num_threads(2)

SIZE = 24
# Conditioner centres (column, row) on pixel centres, regions of radius 1 px never touching; some
# pairs within FAR px of each other, some beyond.
GRID = [(4, 4), (4, 9), (12, 12), (20, 4), (20, 20), (12, 20), (4, 16), (16, 8)]
WINDOW, FAR = 1.0, 6.0


def toy_scenes(k: int, n_scenes: int = 2, channels: int = 1):
    """k -> (images, conditioning): n_scenes copies of the first k GRID locations."""
    locs = torch.tensor([[(c + 0.5) / SIZE, (r + 0.5) / SIZE] for c, r in GRID[:k]])
    cond = Conditioning(locs.expand(n_scenes, k, 2).clone(), torch.ones(n_scenes, k, dtype=torch.bool))
    images = torch.zeros(n_scenes, channels, SIZE, SIZE)
    return images, cond


def options(counts, **kw) -> ExtrapolationOptions:
    base = dict(counts=tuple(counts), scenes=2, sigmas=(0.5, 2.0, 5.0), band=(2.0, 20.0), window_px=WINDOW,
                far_px=FAR, draw=SceneDraw(per_count=2))
    return ExtrapolationOptions(**{**base, **kw})


def run(denoiser, counts, channels=1, **kw) -> ExtrapolationResult:
    return probe_extrapolation(denoiser, lambda k: toy_scenes(k, channels=channels), options(counts, **kw),
                               torch.Generator().manual_seed(0))


def near_counts(k: int) -> list[int]:
    """Per conditioner: how many of the first k GRID locations lie within FAR px (itself included)."""
    pts = GRID[:k]
    return [sum(math.dist(p, q) <= FAR for q in pts) for p in pts]


def expected(k: int, limit: int) -> dict[str, float]:
    """The statistics of CountCoupledToy in closed form (every window holds the same bump)."""
    a = lambda n: min(1.0, limit / n)  # noqa: E731
    far = [n for n in near_counts(k) if n < k]
    return {"far_residual": math.sqrt(sum((a(k) - a(n)) ** 2 for n in far) / len(far)),
            "efficacy_gap": sum(a(k) - a(n) for n in far) / len(far),
            "efficacy": a(k)}


def test_plan_runs_each_subset_once_and_finds_the_far_context():
    pts = torch.tensor([[0.0, 0.0], [3.0, 0.0], [20.0, 0.0]])
    plan = plan_scene(pts, far_px=5.0)
    assert len(plan.subsets) == len(set(plan.subsets))
    assert plan.has_far == [True, True, True]
    assert plan.subsets[plan.units[0]["near"]] == (0, 1)
    assert plan.subsets[plan.units[2]["near"]] == (2,)
    assert plan_scene(pts[:2], far_px=5.0).has_far == [False, False]


def test_pure_composition_reads_exactly_local():
    result = run(CountCoupledToy(SIZE, SIZE, count_limit=None), [2, 4, 6, 8])
    for k in (4, 6, 8):
        assert result.band("far_residual", k).mean < 1e-6
        assert abs(result.band("efficacy_gap", k).mean) < 1e-6
        assert result.band("efficacy", k).mean == pytest.approx(1.0, abs=1e-6)


def test_count_coupling_is_invisible_to_moves_and_below_the_limit_but_measured_beyond():
    toy = CountCoupledToy(SIZE, SIZE, count_limit=3)
    images, cond = toy_scenes(6, n_scenes=1)
    check = measure_locality(toy, images + 0.3, 1.0, cond, toy.geometry.regions(cond), toy.geometry.blocks(cond))
    assert check.off_region_conditioner.max() == 0 and check.in_region_conditioner.min() > 0
    result = run(toy, [3, 6, 8])
    assert result.band("far_residual", 3).mean < 1e-6  # a composition up to count_limit
    for k in (6, 8):
        want = expected(k, limit=3)
        for name, value in want.items():
            assert result.band(name, k).mean == pytest.approx(value, abs=1e-5), (k, name)
        assert want["far_residual"] > 0.1 and want["efficacy_gap"] < -0.1
    assert result.departure("efficacy", 8) == pytest.approx(1 - 3 / 8, abs=1e-5)


def test_a_local_network_reads_zero_beyond_its_reach_and_a_global_one_does_not():
    torch.manual_seed(0)
    # reach: 2 px of 3x3 convs plus bumps cut at 2 * 1 px -> 4 px per axis, 5.7 px Euclidean
    local = build_network(ModelConfig(arch="local", image_size=SIZE, local=LocalOptions(radius=2, width=8),
                                      bump_sigma_px=1.0, bump_cutoff=2.0)).eval()
    kw = dict(channels=3, window_px=1.0, far_px=7.0)
    result = run(local, [4, 8], **kw)
    own = result.band("efficacy", 8)
    assert own.n > 0 and not math.isnan(own.mean)
    for k in (4, 8):
        assert result.band("far_residual", k).mean < 1e-5
        assert abs(result.band("efficacy_gap", k).mean) < 1e-5
    glob = build_network(ModelConfig(arch="global", image_size=SIZE, channels=(8, 16), norm_groups=4)).eval()
    assert run(glob, [8], **kw).band("far_residual", 8).mean > 1e-3


def test_masked_composition_of_a_global_network_reads_about_zero():
    torch.manual_seed(0)
    glob = build_network(ModelConfig(arch="global", image_size=SIZE, channels=(8, 16), norm_groups=4)).eval()
    masked = masked_composition(glob, radius_px=2.0, softness_px=0.5)
    result = run(masked, [8], channels=3, window_px=1.0, far_px=10.0)  # tails: sigmoid(-(10-1-2)/0.5) ~ 1e-6
    assert result.band("far_residual", 8).mean < 1e-4
    # windows that never reach another conditioner's: each acts as it does alone (efficacy 1)
    tight = run(masked_composition(glob, radius_px=1.5, softness_px=0.25), [8], channels=3, window_px=1.0, far_px=10.0)
    assert tight.band("efficacy", 8).mean == pytest.approx(1.0, abs=1e-3)
    assert abs(run(glob, [8], channels=3).band("efficacy", 8).mean - 1) > 1e-2


def test_result_round_trips_and_a_damaged_file_reads_as_missing(tmp_path):
    result = run(CountCoupledToy(SIZE, SIZE, count_limit=3), [2, 6])
    result.save(tmp_path)
    back = ExtrapolationResult.load(tmp_path)
    assert back.band("far_residual", 6) == result.band("far_residual", 6)
    (tmp_path / "extrapolation.json").write_text("{not json")
    assert ExtrapolationResult.load(tmp_path) is None


def test_probed_scenes_are_the_evaluations_own_with_their_renders():
    cfg = load_study_config("micro")
    draw = cfg.locality.extrapolation.draw
    assert (draw.seed, draw.min_separation, draw.per_count) == (
        cfg.evaluate.seed, cfg.evaluate.min_separation, cfg.evaluate.per_count)
    images, cond = extrapolation_scenes(cfg.data, draw, 1)(4)
    evaluated = scene_conditionings(cfg.data, cfg.evaluate.min_separation)(4, cfg.evaluate.per_count,
                                                                           k_generator(cfg.evaluate.seed, 4))
    assert torch.equal(cond.locations, evaluated.locations[:1]) and bool(cond.mask.all())
    assert images.shape == (1, 3, cfg.data.resolution, cfg.data.resolution)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.05


class NormCoupled(torch.nn.Module):
    """Local bumps, then one GroupNorm over the image: the only far coupling is its statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.GroupNorm(1, 1)

    def forward(self, x, sigma, cond):
        yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
        loc = cond.locations * SIZE
        d2 = (xx - loc[..., 0, None, None]) ** 2 + (yy - loc[..., 1, None, None]) ** 2  # [B, N, H, W]
        bumps = (torch.exp(-d2 / 2) * (d2 <= 4) * cond.mask[..., None, None]).sum(1, keepdim=True)
        return self.norm(bumps + 0.1 * x)


def test_holding_group_norm_statistics_removes_exactly_the_coupling_they_carry():
    result = run(NormCoupled(), [8], held_norm_counts=(8,))
    assert result.band("far_residual", 8).mean > 0.01
    assert result.band("far_residual_held_norms", 8).mean < 1e-5
    assert abs(result.band("efficacy", 8).mean - 1) > 0.01
    assert result.band("efficacy_held_norms", 8).mean == pytest.approx(1.0, abs=1e-5)
    # a composition has no plain GroupNorm pass to borrow from: the diagnostic is skipped
    masked = run(masked_composition(NormCoupled(), radius_px=2.0), [8], held_norm_counts=(8,))
    assert math.isnan(masked.band("far_residual_held_norms", 8).mean)


def test_the_kept_effect_maps_agree_alone_and_among_the_others_only_under_composition(tmp_path):
    """The explorer's maps: a conditioner's effect among all the others equals its effect alone for
    a pure composition, and is its count-coupled fraction (3/8 here) beyond the toy's limit."""
    from safetensors.torch import load_file

    pure = run(CountCoupledToy(SIZE, SIZE, count_limit=None), [2, 8])
    effects = pure.maps["k08.effects"]  # [scene, alone | among, k, H, W]
    assert effects.shape[:3] == (1, 2, 8) and effects[0, 0].amax() > 0
    assert torch.allclose(effects[0, 0], effects[0, 1], atol=1e-6)
    coupled = run(CountCoupledToy(SIZE, SIZE, count_limit=3), [8]).maps["k08.effects"][0]
    inside = coupled[0] > 1e-3
    assert torch.allclose(coupled[1][inside], coupled[0][inside] * 3 / 8, rtol=1e-4)
    pure.save(tmp_path)
    saved = load_file(str(tmp_path / "extrapolation_maps.safetensors"))
    assert torch.equal(saved["k08.effects"], effects) and saved["k02.locations"].shape == (1, 2, 2)
    assert float(saved["sigma"]) == 5.0  # the band's geometric middle among the probed levels

"""The evaluation runner end to end, on reference models whose scores are known exactly."""

import json

import pytest
import torch

from locodiff.conditioning import Conditioning
from locodiff.evaluate import (
    ColorDetector, EvalConfig, FixedImageDenoiser, OracleDenoiser, TestScenes, evaluate_denoiser,
    scene_conditionings,
)
from locodiff.scenes import DataConfig, Renderer, SceneConfig, SceneSampler
from locodiff.errors import InputError

RES = 32
COUNTS = (0, 1, 2, 3)
# Far-apart objects: the training-free detector is exact on these, so any score below 100% for
# the oracle would be the runner's fault.
DATA = DataConfig(resolution=RES, scene=SceneConfig(min_separation=0.3, max_objects=4), test_counts=(0, 1, 2, 3, 4))


@pytest.fixture(scope="module")
def renderer():
    return Renderer(RES, 2)


@pytest.fixture(scope="module")
def detector(renderer):
    return ColorDetector.calibrate(renderer, SceneSampler(DATA.scene), generator=0, n_scenes=128)


def config(**kw):
    base = dict(counts=COUNTS, per_count=6, batch_size=4, steps=2, grid_per_count=3,
                trained_range=(1, 2), extrapolation_range=(3, 3), max_count=4)
    return EvalConfig(**{**base, **kw})


def test_perfect_model_scores_100_percent(renderer, detector, tmp_path):
    res = evaluate_denoiser(OracleDenoiser(renderer), detector, TestScenes(scene_conditionings(DATA), RES), tmp_path,
                            config(), progress=False)
    for k in COUNTS:
        m = res.per_k[k]
        assert (m.count, m.placed, m.success) == (1.0, 1.0, 1.0), f"k={k}: {m}"
        assert m.loc_error_px is None or m.loc_error_px < 1.0
        if k:
            assert m.color_accuracy == 1.0  # the oracle renders the requested colours
    assert res.summary["success"].largest_k == 3
    assert res.summary["success"].trained.auc == 1.0
    for name in ("eval.json", "eval.jsonl", "eval.md", "samples.png", "accuracy.png", "samples/k02.png"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert [row["k"] for row in saved["per_k"]] == list(COUNTS)
    lines = (tmp_path / "eval.jsonl").read_text().splitlines()
    assert len(lines) == 6 * len(COUNTS)
    rec = json.loads(lines[-1])
    assert rec["k"] == 3 and len(rec["requested"]) == 3 and rec["success"] is True


def copy3_image(renderer):
    cond = Conditioning.from_lists([[(0.25, 0.4), (0.55, 0.75), (0.8, 0.35)]])
    return OracleDenoiser(renderer)(torch.zeros(1, 3, RES, RES), torch.ones(1), cond)[0]


def test_copy_three_model_scores_exactly_as_expected(renderer, detector, tmp_path):
    res = evaluate_denoiser(FixedImageDenoiser(copy3_image(renderer)), detector, TestScenes(scene_conditionings(DATA), RES),
                            tmp_path, config(), progress=False)
    for k in COUNTS:
        m = res.per_k[k]
        assert m.count == (1.0 if k == 3 else 0.0)
        assert m.mean_detected == 3.0
        assert m.count_error_hist == {3 - k: 6}
    assert res.per_k[0].placed == 1.0 and res.per_k[0].success == 0.0  # nothing asked, 3 extras
    assert res.per_k[0].precision == 0.0
    # Requested locations are random; the fixed objects rarely sit within 3 px of them.
    assert res.per_k[3].success < 0.5
    assert res.summary["count"].largest_k == 3


class Recording:
    """Wraps a denoiser and remembers which counts it was asked for; can refuse some."""

    def __init__(self, inner, refuse=()):
        self.inner, self.refuse, self.seen = inner, set(refuse), set()

    def __call__(self, x, sigma, cond):
        ks = set(cond.counts().tolist())
        if ks & self.refuse:
            raise AssertionError(f"asked again for finished counts {ks & self.refuse}")
        self.seen |= ks
        return self.inner(x, sigma, cond)


def test_resume_skips_finished_counts_and_redoes_partial_ones(renderer, detector, tmp_path):
    oracle = OracleDenoiser(renderer)
    first = evaluate_denoiser(Recording(oracle), detector, TestScenes(scene_conditionings(DATA), RES), tmp_path,
                              config(counts=(0, 1)), progress=False)
    # Simulate a run killed half-way through k=2: some of its lines already in the log.
    with open(tmp_path / "eval.jsonl", "a") as f:
        f.write(json.dumps({"k": 2, "index": 0, "n_requested": 2, "n_detected": 0, "pairs": [], "distances_px": []}) + "\n")
    again = Recording(oracle, refuse={0, 1})
    res = evaluate_denoiser(again, detector, TestScenes(scene_conditionings(DATA), RES), tmp_path, config(counts=(0, 1, 2)),
                            progress=False)
    assert again.seen == {2}
    assert res.per_k[0] == first.per_k[0] and res.per_k[1] == first.per_k[1]
    assert res.per_k[2].n_images == 6 and res.per_k[2].success == 1.0  # the stale partial line was dropped
    ks = [json.loads(line)["k"] for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert ks.count(2) == 6


def test_resume_refuses_different_settings(renderer, detector, tmp_path):
    oracle = OracleDenoiser(renderer)
    evaluate_denoiser(oracle, detector, TestScenes(scene_conditionings(DATA), RES), tmp_path, config(counts=(0,)), progress=False)
    with pytest.raises(InputError, match="different settings"):
        evaluate_denoiser(oracle, detector, TestScenes(scene_conditionings(DATA), RES), tmp_path, config(counts=(0,), steps=3),
                          progress=False)


def test_bad_inputs_raise_clear_errors(renderer, detector, tmp_path):
    oracle = OracleDenoiser(renderer)
    conds = scene_conditionings(DATA)
    with pytest.raises(InputError, match="from 0 to max_count=4"):
        evaluate_denoiser(oracle, detector, TestScenes(conds, RES), tmp_path / "a", config(counts=(0, 5)), progress=False)
    with pytest.raises(InputError, match="max_count=10"):
        EvalConfig(counts=(11,))
    with pytest.raises(InputError, match="per_count"):
        EvalConfig(per_count=0)

    def too_close(k, n, gen):
        return Conditioning.from_lists([[(0.5, 0.5), (0.52, 0.5)]] * n)

    with pytest.raises(InputError, match="apart"):
        evaluate_denoiser(oracle, detector, TestScenes(too_close, RES), tmp_path / "b", config(counts=(2,)), progress=False)

    def wrong_count(k, n, gen):
        return Conditioning.from_lists([[(0.5, 0.5)]] * n)

    with pytest.raises(InputError, match="holds 1 locations"):
        evaluate_denoiser(oracle, detector, TestScenes(wrong_count, RES), tmp_path / "c", config(counts=(2,)), progress=False)

    def small(x, sigma, cond):
        return torch.zeros(x.shape[0], 3, RES // 2, RES // 2)

    with pytest.raises(InputError, match="shape"):
        evaluate_denoiser(small, detector, TestScenes(conds, RES), tmp_path / "d", config(counts=(1,), steps=1), progress=False)

    def nan(x, sigma, cond):
        return torch.full_like(x, float("nan"))

    with pytest.raises(InputError, match="NaN"):
        evaluate_denoiser(nan, detector, TestScenes(conds, RES), tmp_path / "e", config(counts=(1,), steps=1), progress=False)
    with pytest.raises(InputError, match="detector works at 32x32"):
        evaluate_denoiser(oracle, detector, TestScenes(conds, 64), tmp_path / "f", config(counts=(1,)), progress=False)


def test_conditionings_from_the_test_split(tmp_path):
    from locodiff.evaluate import dataset_conditionings
    from locodiff.scenes import SceneDataset

    data = DataConfig(resolution=16, train_images=0, test_images_per_count=3, test_counts=(0, 1, 2), shard_size=4)
    make = dataset_conditionings(SceneDataset.from_config(data, tmp_path, split="test"))
    for k in (0, 1, 2):
        cond = make(k, 3, torch.Generator())
        assert cond.batch_size == 3 and (cond.counts() == k).all()
        assert cond.attributes is not None
    with pytest.raises(InputError, match="has 3 images with 2 objects"):
        make(2, 4, torch.Generator())


def test_combinations_are_scored_as_seen_or_held_out(renderer, detector, tmp_path):
    """The oracle draws what was asked; a detector that calls every object a cube then gets a
    combination right exactly when a cube was asked, and held-out pairs are counted apart."""
    import numpy as np

    from locodiff.scenes import vocab

    class CubesOnly:
        name, min_separation = "cubes-only", detector.min_separation

        def __call__(self, images, value_range=(0.0, 1.0)):
            dets = detector(images, value_range)
            for d in dets:
                d.shape_index = np.zeros(len(d), dtype=np.int64)
            return dets

    holdout = vocab.combo_indices([("cube", "red"), ("sphere", "blue"), ("cylinder", "gray")])
    res = evaluate_denoiser(OracleDenoiser(renderer), CubesOnly(), TestScenes(scene_conditionings(DATA), RES, holdout),
                            tmp_path, config(counts=(2, 3), per_count=12), progress=False)
    records = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    for k in (2, 3):
        objects = [(r["requested_shapes"][i], r["requested_colors"][i]) for r in records if r["k"] == k
                   for i, _ in r["pairs"]]  # matched objects only are scored
        held = [p for p in objects if p in set(holdout)]
        seen = [p for p in objects if p not in set(holdout)]
        counts = res.per_k[k].attribute_counts
        assert counts.get("heldout_checked", 0) == len(held) and counts["seen_checked"] == len(seen)
        assert counts.get("heldout_correct", 0) == sum(s == 0 for s, _ in held)
        assert counts["seen_correct"] == sum(s == 0 for s, _ in seen)
        assert res.per_k[k].color_accuracy == 1.0
        assert res.per_k[k].shape_accuracy == pytest.approx(sum(s == 0 for s, _ in objects) / len(objects))
    assert any(sum(r["requested_heldout"]) for r in records)  # the test did exercise held-out pairs

"""The README's "Extending locodiff", followed step by step: a toy conditioning mechanism is
registered, a study trains, evaluates and probes it, and the report lists it; a new metric reads
an evaluation's saved records; your own Denoiser is probed without a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from locodiff import layout
from locodiff.conditioning import Conditioning
from locodiff.errors import ConfigError
from locodiff.io import read_jsonl
from locodiff.locality import ProbeSpec, probe_locality
from locodiff.models import Mechanism, ModelConfig, available_architectures, describe, register_mechanism
from locodiff.stages.config import load_study_config
from locodiff.stages.study import run_study
from locodiff.stages.subjects import load_subject

TOY = "toy_nearest_bump"


class NearestBump(Mechanism):
    """One input map: a Gaussian bump of learned width around every conditioner's location."""

    map_channels = 1

    def __init__(self, cfg: ModelConfig, emb_dim: int) -> None:
        super().__init__()
        self.log_width = nn.Parameter(torch.tensor(-2.0))

    def encode(self, cond: Conditioning, height: int, width: int) -> Tensor:
        ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
        dy = ys[None, None, :, None] - cond.locations[..., 1, None, None]  # [B, N, H, 1]
        dx = xs[None, None, None, :] - cond.locations[..., 0, None, None]  # [B, N, 1, W]
        bumps = torch.exp(-(dx**2 + dy**2) / (2 * self.log_width.exp() ** 2))
        bumps = torch.where(cond.mask[..., None, None], bumps, 0.0)  # padded slots may hold anything, NaN too
        return bumps.amax(1, keepdim=True) if bumps.shape[1] else bumps.new_zeros(bumps.shape[0], 1, height, width)

    def input_maps(self, context: Tensor) -> Tensor:
        return context


if TOY not in available_architectures():  # step 2: one call (in models/registry.py, or before a run)
    register_mechanism(TOY, NearestBump)


def test_the_toy_mechanism_is_an_architecture():
    cfg = ModelConfig(arch=TOY, image_size=16, channels=(8, 16), norm_groups=4, head_dim=8)
    info = describe(cfg)
    assert info.param_count > 0 and "toy_nearest_bump" in info.note
    with pytest.raises(ConfigError, match="already registered"):
        register_mechanism(TOY, NearestBump)
    with pytest.raises(ConfigError, match="unknown architecture"):
        ModelConfig(arch="toy_unregistered")


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory):
    """Step 3: the micro study with Exp 1's network swapped for the toy (one job: the mechanism is
    registered in this process; worker processes import only what locodiff registers itself)."""
    out = tmp_path_factory.mktemp("extending")
    toml = out / "toy.toml"
    toml.write_text(f"""
[models.toy]
role = "exp1"
label_policy = "all"
description = "location bumps at the input only (a toy mechanism)"
model = {{ arch = "{TOY}", channels = [8, 16], norm_groups = 4, head_dim = 8 }}
""")
    off = [f"models.{m}.enabled=false" for m in ("exp1", "exp2", "exp3_local", "exp1_combo")]
    cfg = load_study_config("micro", toml, [f"out_dir={out / 'study'}", "jobs=1", *off,
                                            "interventions.exp3_masked.enabled=false"])
    run_study(cfg)
    return cfg


def test_a_study_trains_evaluates_probes_and_reports_the_toy(toy_study):
    run = toy_study.run_dir("toy")
    denoiser, run_cfg = load_subject(run)
    assert run_cfg.model.arch == TOY
    x = torch.zeros(1, 3, 16, 16)
    out = denoiser(x, torch.tensor([1.0]), Conditioning.from_lists([[(0.3, 0.6)]]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    evaluation = next(run.glob("eval-*"))
    assert json.loads((evaluation / layout.EVAL_SUMMARY).read_text())["per_k"]
    assert (next(run.glob("locality-*")) / layout.PROBE_SUMMARY).is_file()
    report = (toy_study.report_dir() / "report.md").read_text()
    assert TOY in report


def test_a_new_metric_reads_the_saved_records(toy_study):
    """A metric over the evaluation's per-image records (eval.jsonl), here the mean of detected
    over requested objects per k; its by-product, the share of images with the right count,
    must agree with eval.json's own count accuracy."""
    evaluation = next(toy_study.run_dir("toy").glob("eval-*"))
    by_k: dict[int, list[dict]] = {}
    for r in read_jsonl(evaluation / layout.EVAL_RECORDS):
        by_k.setdefault(int(r["k"]), []).append(r)
    overshoot = {k: sum(r["n_detected"] - r["n_requested"] for r in rs) / len(rs) for k, rs in by_k.items()}
    assert set(overshoot) == set(toy_study.evaluate.counts)
    summary = {int(row["k"]): row for row in json.loads((evaluation / layout.EVAL_SUMMARY).read_text())["per_k"]}
    for k, rs in by_k.items():
        assert sum(r["count_correct"] for r in rs) / len(rs) == pytest.approx(summary[k]["count"])


def test_probing_your_own_denoiser():
    """Any callable (x, sigma, cond) -> x0 is probed like a trained run."""

    def blur(x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1) / (1 + sigma[:, None, None, None] ** 2)

    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = Conditioning.from_lists([[(0.5, 0.5)]])
    result = probe_locality(blur, x, cond, ProbeSpec(sigmas=(0.5,), n_pixels=4), torch.Generator().manual_seed(0))
    fraction = dict(zip(result.radii, (s["mean"] for s in result.summaries[0].to_dict()["mass_fraction"])))
    # a 3x3 blur: all of the score's Jacobian mass within the 3x3 window (its corners are 1.41 px
    # away, radii are Euclidean), some of it beyond 1 px
    assert fraction[1.5] == pytest.approx(1.0, abs=1e-6) and fraction[1.0] < 1 - 1e-3


def test_the_readme_python_example_runs(toy_study):
    """The README's Python API block, on a run of the toy study (16 px images)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    run = toy_study.run_dir("toy")
    code = code.replace("runs/quick/models/exp1-<hash>", str(run)).replace("(1, 3, 32, 32)", "(1, 3, 16, 16)")
    code = code.replace("print(", "found = (")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert {"index", "normalised", "chance"} <= set(scope["found"])


def test_the_entry_points_import_from_the_package():
    import locodiff

    assert set(locodiff.__all__) >= {"load_subject", "probe_locality", "probe_extrapolation", "evaluate_model"}
    assert all(callable(getattr(locodiff, name)) for name in locodiff.__all__[1:])
    with pytest.raises(AttributeError):
        locodiff.not_an_entry_point

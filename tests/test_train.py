"""Training loop behaviour: learning, exact resume, divergence and config guards."""

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

from locodiff.conditioning import Conditioning
from locodiff.errors import CheckpointError, TrainingDiverged
from locodiff.io import read_jsonl
from locodiff.models import ModelConfig
from locodiff.scenes.config import DataConfig
from locodiff.checkpoints import latest_checkpoint
from locodiff.config import from_dict
from locodiff.train.config import LocalityPenalty, TrainConfig
from locodiff.train.data import StreamBatches
from locodiff.train.run_folder import load_denoiser
from locodiff.train.config import RunConfig
from locodiff.layout import run_identity
from locodiff.train.run import train_run

TINY_MODEL = ModelConfig(arch="spatial", image_size=16, channels=(8, 16), norm_groups=4, head_dim=8)
TINY_DATA = DataConfig(resolution=16, supersample=1, train_images=64, test_images_per_count=2)


def tiny_run(label_policy="all", **train) -> RunConfig:
    base = dict(total_images=64, batch_size=8, lr=2e-3, warmup_images=0, log_every_images=8,
                checkpoint_every_images=32, ema_halflife_images=32, precision="fp32")
    base.update(train)
    return RunConfig(name="tiny", seed=3, label_policy=label_policy, data=TINY_DATA, model=TINY_MODEL, train=TrainConfig(**base))


class FixedBatch:
    """The same images and conditioning at every step: the loss must go down."""

    def __init__(self, source, size):
        self.images, self.cond = source.batch(0, size)

    def batch(self, step, size):
        return self.images, self.cond


class PoisonAfter:
    def __init__(self, source, step):
        self.source, self.step = source, step

    def batch(self, step, size):
        images, cond = self.source.batch(step, size)
        return (images * float("nan") if step >= self.step else images), cond


def _weights(run_dir):
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def test_few_steps_reduce_the_loss(tmp_path):
    cfg = tiny_run(total_images=8 * 60, lr=3e-3)
    train_run(cfg, tmp_path, FixedBatch(StreamBatches(TINY_DATA, "all", 0), 8), progress=False)
    losses = [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


def test_resume_is_bit_identical(tmp_path):
    source = StreamBatches(TINY_DATA, "all", 0)
    cfg = tiny_run()
    train_run(cfg, tmp_path / "a", source, progress=False)
    # The same run, stopped at 32 images (a checkpoint) and resumed to 64.
    train_run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, total_images=32)),
              tmp_path / "b", source, progress=False)
    assert latest_checkpoint(tmp_path / "b").name.endswith("32")
    train_run(cfg, tmp_path / "b", source, progress=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_damaged_newest_checkpoint_resumes_from_the_older_one_to_the_same_weights(tmp_path, capsys):
    """Healing instead of stopping: the run falls back one checkpoint, says so, and still ends
    bit-identical to an uninterrupted run."""
    source = StreamBatches(TINY_DATA, "all", 0)
    cfg = tiny_run(checkpoint_every_images=16)
    train_run(cfg, tmp_path / "a", source, progress=False)
    short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, total_images=48))
    train_run(short, tmp_path / "b", source, progress=False)  # checkpoints at 32 and 48 images
    newest = latest_checkpoint(tmp_path / "b")
    (newest / "model.safetensors").write_bytes(b"truncated")
    train_run(cfg, tmp_path / "b", source, progress=False)
    assert f"{newest} is damaged" in capsys.readouterr().err
    assert (tmp_path / "b" / "checkpoints" / f"damaged-{newest.name}").is_dir()
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_runs_of_different_precisions_train_one_after_another_in_one_process(tmp_path):
    """accelerate keeps a process-wide state; a study with jobs = 1 trains every model in its own
    process, so an fp32 run followed by a bf16 run must not trip over the first one's settings."""
    source = StreamBatches(TINY_DATA, "all", 0)
    train_run(tiny_run(total_images=16), tmp_path / "fp32", source, progress=False)
    result = train_run(tiny_run(total_images=16, precision="bf16"), tmp_path / "bf16", source, progress=False)
    assert result.images_seen == 16 and math.isfinite(result.final_loss)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    source = PoisonAfter(StreamBatches(TINY_DATA, "all", 0), step=5)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train_run(tiny_run(checkpoint_every_images=16), tmp_path, source, progress=False)
    assert latest_checkpoint(tmp_path).name.endswith("32")  # step 5 is image 40
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path).values())


def test_other_config_in_same_folder_is_refused_untouched(tmp_path):
    source = StreamBatches(TINY_DATA, "all", 0)
    train_run(tiny_run(total_images=16), tmp_path, source, progress=False)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(CheckpointError, match="different config"):
        train_run(tiny_run(total_images=16, lr=1e-4), tmp_path, source, progress=False)
    assert (tmp_path / "config.json").read_text() == before


def test_trained_run_loads_as_denoiser(tmp_path):
    train_run(tiny_run("one", total_images=16), tmp_path, progress=False)
    denoiser, cfg = load_denoiser(tmp_path)
    assert cfg.label_policy == "one" and cfg.model.arch == "spatial"
    x = torch.randn(2, 3, 16, 16)
    out = denoiser(x, torch.tensor([1.0, 2.0]), Conditioning.from_lists([[(0.5, 0.5)], []]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((tmp_path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_denoiser(empty)
    with pytest.raises(CheckpointError, match="not a locodiff run folder"):
        load_denoiser(tmp_path / "missing")


def test_the_penalty_read_under_its_old_names_is_the_same_run():
    """Configs and saved runs from before the penalty became a section still read, as the same run."""
    old = from_dict(TrainConfig, {"locality_penalty": 0.5, "locality_window_px": 2.0, "locality_form": "presence"})
    assert old.locality == LocalityPenalty(weight=0.5, window_px=2.0, form="presence")
    assert run_identity(tiny_run(locality=old.locality)) == run_identity(tiny_run(locality=LocalityPenalty(
        weight=0.5, window_px=2.0, form="presence")))


def test_locality_penalty_trains_and_is_part_of_the_run_identity(tmp_path):
    plain, penalised = tiny_run(), tiny_run(locality=LocalityPenalty(weight=0.5, window_px=2.0))
    assert run_identity(plain) != run_identity(penalised)
    # Without a penalty its window changes nothing, so it must not change the identity either.
    assert run_identity(plain) == run_identity(tiny_run(locality=LocalityPenalty(window_px=5.0)))
    result = train_run(penalised, tmp_path / "run", source=StreamBatches(TINY_DATA, "all", 3), progress=False)
    assert result.images_seen == 64 and torch.isfinite(torch.tensor(result.final_loss))


def test_sample_grids_at_the_interval_and_at_the_end(tmp_path):
    cfg = tiny_run(sample_every_images=32, sample_steps=2)
    train_run(cfg, tmp_path / "run", source=StreamBatches(TINY_DATA, "all", 3), progress=False)
    grids = sorted(p.name for p in (tmp_path / "run" / "samples").glob("grid-*.png"))
    assert grids == ["grid-0000000032.png", "grid-0000000064.png"]


def test_held_out_combinations_never_reach_training(tmp_path):
    from locodiff.config import ConfigError
    from locodiff.scenes import vocab
    from locodiff.scenes.dataset import SceneDataset, build_dataset
    from locodiff.train.data import CachedBatches

    held = (("cube", "red"), ("sphere", "gray"), ("cylinder", "blue"))
    idx = vocab.combo_indices(held)
    dataset = SceneDataset(build_dataset(TINY_DATA, tmp_path), "train")
    t = {k: v[dataset.index] for k, v in dataset.tensors.items()}
    hit = vocab.has_combo(t["shape"], t["color"], t["mask"], idx)
    assert 0 < hit.sum() < len(hit)  # the split holds some held-out pairs, and other scenes too
    cached = CachedBatches(dataset, "all", 0, idx)
    assert cached.n == int((~hit).sum())
    assert not vocab.has_combo(cached.tensors["shape"], cached.tensors["color"], cached.tensors["mask"], idx).any()
    stream = StreamBatches(TINY_DATA, "all", 0, idx)
    scenes = stream.source.sampler.sample(3, 0, batch_size=64)
    assert not vocab.has_combo(scenes.shape, scenes.color, scenes.mask, idx).any()

    run = dataclasses.replace(tiny_run(), holdout_combos=held)
    assert run.holdout_indices() == idx
    assert run_identity(run) != run_identity(tiny_run())
    red_only = dataclasses.replace(TINY_DATA, scene=dataclasses.replace(TINY_DATA.scene, colors=("red",)))
    assert dataclasses.replace(tiny_run(), data=red_only, holdout_combos=(("cube", "blue"),)).holdout_indices()
    with pytest.raises(ConfigError, match="every"):
        dataclasses.replace(tiny_run(), data=red_only,
                            holdout_combos=(("cube", "red"), ("sphere", "red"), ("cylinder", "red")))
    with pytest.raises(ConfigError, match="unknown shape"):
        dataclasses.replace(tiny_run(), holdout_combos=(("cone", "red"),))


def test_object_dropout_reaches_the_weights_reproducibly_and_names_its_run(tmp_path):
    source = StreamBatches(TINY_DATA, "all", 0)
    dropped = tiny_run(object_dropout=0.5)
    for name, cfg in (("a", dropped), ("b", dropped), ("plain", tiny_run())):
        train_run(cfg, tmp_path / name, source, progress=False)
    a, b, plain = (_weights(tmp_path / n) for n in ("a", "b", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], plain[k]) for k in a)
    assert run_identity(dropped) != run_identity(tiny_run()) == run_identity(tiny_run(object_dropout=0.0))


def test_a_finished_run_trained_again_says_so_with_its_real_numbers_and_writes_nothing(tmp_path):
    from locodiff.train.loop import training_time

    cfg = tiny_run()
    first = train_run(cfg, tmp_path, progress=False)
    assert not first.already_finished and 0 < first.images_per_s < 1e5
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = train_run(cfg, tmp_path, progress=False)
    assert again.already_finished and again.images_seen == first.images_seen
    seconds, rate, loss = training_time(read_jsonl(tmp_path / "metrics.jsonl"))
    assert (again.final_loss, again.images_per_s, again.wall_s) == (loss, rate, seconds)
    assert math.isfinite(again.final_loss) and 0 < again.images_per_s < 1e5
    kept = ("log.txt", ".lock")  # the log says it was asked again; the lock names who asked
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name not in kept}
    assert after == {p: t for p, t in stamps.items() if p.name not in kept}  # nothing retrained or rewritten


def test_the_penalty_says_what_it_costs():
    assert LocalityPenalty().cost_factor() == 1.0  # off
    assert LocalityPenalty(weight=1.0, fraction=0.25).cost_factor() == 1.25  # one extra pass on a quarter
    composition = LocalityPenalty(weight=1.0, fraction=0.25, form="composition", extra_tokens=8)
    assert composition.cost_factor() == 1.0 + 0.25 * 12  # 3 labels + 8 phantoms + the null
    late = LocalityPenalty(weight=1.0, fraction=0.25, start_images=40000)
    assert late.images_cost(0, 100000) == 40000 + 60000 * 1.25  # plain until the penalty starts
    assert late.images_cost(50000, 100000) == 50000 * 1.25 and late.images_cost(0, 30000) == 30000

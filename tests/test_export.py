"""diffusers-native export: every network round-trips bit for bit, the pipeline samples as
``locodiff sample`` does, and a folder without safetensors weights is refused in one error."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from locodiff.cli import app
from locodiff.conditioning import Conditioning
from locodiff.config import to_dict
from locodiff.diffusion.samplers import sample_in_batches
from locodiff.errors import CheckpointError, InputError
from locodiff.export import LocodiffModel, LocodiffPipeline, export_run
from locodiff.export.pipeline import location_conditioning
from locodiff.models import available_architectures, build_network
from locodiff.models.config import CrossAttentionOptions, LocalOptions, ModelConfig
from locodiff.scenes.captions import captions
from locodiff.scenes.config import DataConfig
from locodiff.checkpoints import CheckpointState, save_checkpoint
from locodiff.train.run_folder import load_denoiser
from locodiff.train.config import RunConfig, TrainConfig

torch.set_num_threads(2)
LOCATIONS = [[0.3, 0.6], [0.7, 0.4]]


def trained_run(root: Path, arch: str, **overrides) -> Path:
    """A run folder as training leaves it (config.json + a checkpoint), with random weights."""
    model = dict(arch=arch, image_size=16, channels=(8, 16), norm_groups=4, head_dim=8, token_dim=16, **overrides)
    if arch == "local":
        model["local"] = LocalOptions(radius=3, width=16)
    data = DataConfig(resolution=16, supersample=1, train_images=64, test_images_per_count=2)
    cfg = RunConfig(name=arch, seed=0, label_policy="all", data=data, model=ModelConfig(**model),
                    train=TrainConfig(total_images=64, batch_size=8, precision="fp32", threads=1))
    run = root / arch
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    torch.manual_seed(1)
    net, ema = build_network(cfg.model), build_network(cfg.model)  # EMA weights differ from the raw ones
    save_checkpoint(run, net, ema, torch.optim.AdamW(net.parameters()), CheckpointState(64, 8, "test"))
    return run


COUPLING_FREE = dict(norm="pixel", cross_attention=CrossAttentionOptions(shared_position=True, weights="sigmoid"))


@pytest.mark.parametrize("arch, overrides", [*((a, {}) for a in available_architectures()),
                                             ("cross_attention", COUPLING_FREE)])
def test_every_network_exports_and_loads_bit_for_bit(tmp_path, arch, overrides):
    run = trained_run(tmp_path, arch, **overrides)
    out = export_run(run, tmp_path / "exported")
    assert (out / "model" / "diffusion_pytorch_model.safetensors").is_file() and (out / "model_index.json").is_file()
    reference, _ = load_denoiser(run)
    loaded = LocodiffModel.from_pretrained(out / "model")
    piped = LocodiffPipeline.from_pretrained(out).model
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 1.0, 20.0])
    cond = Conditioning.from_lists([[(0.3, 0.6)], [(0.2, 0.2), (0.7, 0.4)], []])
    cond.attributes = torch.tensor([[[1, 0, 0, 1], [-1] * 4], [[2, 1, 1, 0], [3, 2, 0, 1]], [[-1] * 4] * 2])
    with torch.no_grad():
        want = reference(x, sigma, cond)
        assert torch.equal(loaded(x, sigma, cond), want) and torch.equal(piped(x, sigma, cond), want)
    assert loaded.conditioned_on == ("captions" if arch == "diffusers_text" else "locations")


@pytest.mark.parametrize("arch", ["cross_attention", "local"])
def test_the_pipeline_samples_what_locodiff_sample_gives(tmp_path, arch):
    run = trained_run(tmp_path, arch)
    args = ["sample", str(run), "--locations", json.dumps(LOCATIONS), "--per-count", "3", "--steps", "4",
            "--seed", "5", "-o", str(tmp_path / "samples")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (tensors,) = [line for line in res.output.splitlines() if line.endswith(".safetensors")]
    sampled = load_file(tensors)["images"]
    res = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "exported")])
    assert res.exit_code == 0 and "exported" in res.output, res.output
    pipe = LocodiffPipeline.from_pretrained(tmp_path / "exported")
    out = pipe(locations=[LOCATIONS] * 3, num_inference_steps=4, generator=torch.Generator().manual_seed(5),
               output_type="pt")
    assert torch.equal(out.images, ((sampled + 1) / 2).clamp(0, 1))
    pil = pipe(locations=[LOCATIONS], num_inference_steps=2).images
    assert pil[0].size == (16, 16)


def test_the_caption_pipeline_reads_text_as_the_model_reads_scenes(tmp_path):
    """Captions typed as text give the images the scenes' own captions give. A scene's caption
    puts each object's words at its slot's positions, typed text packs them; the model reads no
    positions, so the two differ only in the order of float sums."""
    run = trained_run(tmp_path, "diffusers_text")
    pipe = LocodiffPipeline.from_pretrained(export_run(run, tmp_path / "exported"))
    cond = Conditioning.from_lists([[(0.2, 0.2)], [(0.2, 0.8), (0.8, 0.3)]])
    cond.attributes = torch.tensor([[[1, 0, 0, 1], [-1, -1, -1, -1]], [[2, 1, 1, 0], [3, 2, 0, 1]]])
    net = pipe.model.network
    texts = captions(cond, net.max_objects, net.count_word)
    got = pipe(captions=texts, num_inference_steps=3, generator=torch.Generator().manual_seed(2), output_type="pt")
    (_, _, want), = sample_in_batches(pipe.model, cond, 16, 3, torch.Generator().manual_seed(2), 64)
    assert (got.images - ((want + 1) / 2).clamp(0, 1)).abs().max() < 1e-4
    with pytest.raises(InputError, match="reads captions"):
        pipe(locations=[LOCATIONS])


def test_a_folder_without_safetensors_weights_is_refused(tmp_path):
    out = export_run(trained_run(tmp_path, "spatial"), tmp_path / "exported")
    weights = out / "model" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    weights.unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        LocodiffPipeline.from_pretrained(out)
    (out / "model" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickled")
    with pytest.raises(CheckpointError, match="pickled weights"):
        LocodiffModel.from_pretrained(out / "model")
    save_file(tensors, str(weights))  # put back: it loads again
    assert LocodiffPipeline.from_pretrained(out).model.conditioned_on == "locations"


def test_export_replaces_only_an_earlier_export(tmp_path):
    run = trained_run(tmp_path, "global")
    export_run(run, tmp_path / "exported")
    export_run(run, tmp_path / "exported", ema=False)
    assert json.loads((tmp_path / "exported" / "locodiff.json").read_text())["weights"] == "raw"
    res = CliRunner().invoke(app, ["export", str(run), str(run)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "not an earlier locodiff export" in res.output
    assert (run / "config.json").is_file()


def test_attributes_are_given_by_name_or_index():
    cond = location_conditioning([[(0.2, 0.3), (0.6, 0.6)], [(0.5, 0.5)]],
                                 [[("red", "cube", "large", "metal"), (0, 1, 1, 0)], [("cyan", "sphere", "small", "rubber")]])
    assert cond.attributes.tolist() == [[[1, 0, 0, 1], [0, 1, 1, 0]], [[6, 1, 1, 0], [-1, -1, -1, -1]]]
    with pytest.raises(InputError, match="unknown colour 'pink'"):
        location_conditioning([[(0.2, 0.3)]], [[("pink", "cube", "large", "metal")]])
    with pytest.raises(InputError, match="one .* per location"):
        location_conditioning([[(0.2, 0.3)]], [[]])


def test_sample_names_its_files_by_what_was_asked(tmp_path):
    """Two requests never overwrite each other's files; the same request writes the same names."""
    run = trained_run(tmp_path, "cross_attention")
    common = ["--per-count", "2", "--steps", "2", "-o", str(tmp_path / "s")]
    outputs = []
    for extra in (["--counts", "1-2"], ["--counts", "1-2", "--seed", "1"], ["--locations", "[[0.3,0.6]]"],
                  ["--counts", "1-2"]):
        res = CliRunner().invoke(app, ["sample", str(run), *extra, *common])
        assert res.exit_code == 0, res.output
        outputs.append(res.output.split())
    assert outputs[0] == outputs[3] and len({tuple(o) for o in outputs}) == 3
    assert Path(outputs[0][0]).name.startswith("samples-k1-2-") and Path(outputs[2][0]).name.startswith("samples-locations-")
    assert len(list((tmp_path / "s").glob("*.png"))) == 3


@pytest.mark.parametrize("locations", ["[0.3,0.6]", "[[0.3,0.6],[0.7]]", "[[0.3,\"a\"]]", "[[0.3,0.6,0.1]]", "{}"])
def test_a_malformed_location_list_is_one_line(tmp_path, locations):
    run = trained_run(tmp_path, "cross_attention")
    res = CliRunner().invoke(app, ["sample", str(run), "--locations", locations, "--steps", "2"])
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "expected" in errors[0] and "--locations" in errors[0]


def test_the_pipeline_says_what_shape_its_locations_take(tmp_path):
    pipe = LocodiffPipeline.from_pretrained(export_run(trained_run(tmp_path, "cross_attention"), tmp_path / "e"))
    for bad in ([[(0.5,)]], [(0.3, 0.6)], "0.3,0.6"):
        with pytest.raises(ValueError, match=r"expected"):
            pipe(locations=bad, num_inference_steps=1)


def test_an_intervention_folder_samples_from_the_command_line(tmp_path):
    from locodiff.intervene.config import InterventionSpec
    from locodiff.stages.subjects import write_intervention

    run = trained_run(tmp_path, "cross_attention")
    masked = tmp_path / "exp3_masked"
    write_intervention(masked, InterventionSpec(base="cross_attention", radius_px=2.0), run)
    args = ["--locations", "[[0.3,0.6],[0.7,0.4]]", "--per-count", "2", "--steps", "2", "--seed", "3"]
    outs = {}
    for name, folder in (("base", run), ("masked", masked)):
        res = CliRunner().invoke(app, ["sample", str(folder), *args, "-o", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        outs[name] = load_file([line for line in res.output.split() if line.endswith(".safetensors")][0])["images"]
    assert outs["masked"].shape == outs["base"].shape and not torch.equal(outs["masked"], outs["base"])


def test_the_export_is_a_model_card_a_hub_would_show(tmp_path):
    """Metadata header, the coordinate convention, the training range, recall per k from the run's
    evaluation of that checkpoint, the paper; files readable by others; the source path relative."""
    from locodiff.evaluate.config import EvalConfig
    from locodiff.evaluate.oracle import FixedImageDenoiser
    from locodiff.evaluate.runner import TestScenes, build_detector, evaluate_denoiser
    from locodiff.layout import eval_dir

    run = trained_run(tmp_path, "cross_attention")
    ev = EvalConfig(counts=(1, 2), per_count=2, steps=2, detector="color", grid_per_count=0)
    out = eval_dir(run, ev, "ckpt-0000000064")
    detector = build_detector(DataConfig(resolution=16, supersample=1), ev, 16, tmp_path / "det")
    scenes = TestScenes(lambda k, n, g: Conditioning.from_lists([[(0.2, 0.2), (0.8, 0.8)][:k]] * n), 16)
    evaluate_denoiser(FixedImageDenoiser(torch.zeros(3, 16, 16)), detector, scenes, out, ev, progress=False)
    folder = export_run(run, tmp_path / "exported")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n") and "x the column and y the row from the top" in card
    assert "with 1–3 objects each" in card and "| recall | 0.00 | 0.00 |" in card and "2509.16447" in card
    source = json.loads((folder / "locodiff.json").read_text())
    assert not Path(source["run"]).is_absolute() and (folder / source["run"]).resolve() == run.resolve()
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in folder.rglob("*") if p.is_file())


def test_the_card_shows_the_efficacy_probed_on_that_checkpoint(tmp_path):
    """The card's locality line comes from the probe of the exported checkpoint, not another one."""
    from locodiff.locality.extrapolation import ExtrapolationResult
    from locodiff.locality.stats import Estimate

    run = trained_run(tmp_path, "cross_attention")
    for name, checkpoint, value in (("locality-a", "ckpt-0000000064", 0.93), ("locality-b", "ckpt-0000000032", 0.41)):
        (run / name).mkdir()
        (run / name / "summary.json").write_text(json.dumps({"meta": {"checkpoint": checkpoint}}))
        band = {k: {"band": {"efficacy": Estimate(value - k / 100, 0.0, 1.0, 4, 2).to_dict()}} for k in (1, 4, 8)}
        ExtrapolationResult({}, band).save(run / name)
    card = (export_run(run, tmp_path / "e") / "README.md").read_text()
    assert "| k | 4 | 8 |\n|---|---|---|\n| efficacy | 0.89 | 0.85 |" in card
    assert "0.37" not in card


def test_an_intervention_exports_as_a_composing_pipeline(tmp_path):
    """An intervention folder exports with its base run's weights and its composition; the pipeline
    samples what ``locodiff sample`` samples from the intervention folder, bit for bit."""
    from locodiff.intervene.config import InterventionSpec
    from locodiff.stages.subjects import write_intervention

    run = trained_run(tmp_path, "cross_attention")
    masked = tmp_path / "exp3_masked-0123"
    write_intervention(masked, InterventionSpec(base="cross_attention", radius_px=2.0), run)
    args = ["sample", str(masked), "--locations", json.dumps(LOCATIONS), "--per-count", "2", "--steps", "3",
            "--seed", "5", "-o", str(tmp_path / "samples")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (tensors,) = [line for line in res.output.splitlines() if line.endswith(".safetensors")]
    res = CliRunner().invoke(app, ["export", str(masked), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    pipe = LocodiffPipeline.from_pretrained(tmp_path / "out")
    assert pipe.model.intervention.radius_px == 2.0
    got = pipe(locations=[LOCATIONS] * 2, num_inference_steps=3, generator=torch.Generator().manual_seed(5),
               output_type="pt").images
    assert torch.equal(got, ((load_file(tensors)["images"] + 1) / 2).clamp(0, 1))
    plain = LocodiffPipeline.from_pretrained(export_run(run, tmp_path / "plain"))
    assert not torch.equal(plain(locations=[LOCATIONS] * 2, num_inference_steps=3, output_type="pt",
                                 generator=torch.Generator().manual_seed(5)).images, got)
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---") and "# exp3_masked:" in card and "within 2 px of its location" in card


def test_the_pipeline_in_half_precision_and_as_diffusers_users_call_it(tmp_path, caplog):
    """bf16 by ``.to`` or ``torch_dtype``, and fp16 (CPU autocast has it), sample (close to fp32) without diffusers' float32 warning;
    ``num_images_per_prompt`` repeats each request; no generator means fresh noise."""
    folder = export_run(trained_run(tmp_path, "cross_attention"), tmp_path / "e")
    pipe = LocodiffPipeline.from_pretrained(folder)
    call = dict(locations=[[(0.3, 0.6)], [(0.5, 0.5)]], num_inference_steps=3, output_type="pt")
    ref = pipe(**call, generator=torch.Generator().manual_seed(1)).images
    with caplog.at_level("WARNING"):
        pipe.to(torch.bfloat16)
    assert "float32" not in caplog.text
    halves = [pipe, *(LocodiffPipeline.from_pretrained(folder, torch_dtype=t) for t in (torch.bfloat16, torch.float16))]
    for half, dtype in zip(halves, (torch.bfloat16, torch.bfloat16, torch.float16)):
        out = half(**call, generator=torch.Generator().manual_seed(1)).images
        assert half.model.dtype == dtype and out.dtype == torch.float32
        assert (out - ref).abs().max() < 0.1
    pipe.to(torch.float32)
    twice = pipe(**call, num_images_per_prompt=2, generator=torch.Generator().manual_seed(1)).images
    assert twice.shape[0] == 4
    fresh = [pipe(**call).images for _ in range(2)]
    assert not torch.equal(fresh[0], fresh[1])
    torch.manual_seed(3)
    again = pipe(**call).images
    torch.manual_seed(3)
    assert torch.equal(again, pipe(**call).images)


def test_diffusers_own_loader_reads_an_export(tmp_path):
    """``diffusers.DiffusionPipeline.from_pretrained`` (with trust_remote_code for the folder's
    one-line pipeline.py) gives the same pipeline, sampling bit for bit as LocodiffPipeline's;
    locodiff's own loader runs no code from the folder."""
    import diffusers

    folder = export_run(trained_run(tmp_path, "cross_attention"), tmp_path / "e")
    with pytest.raises(ValueError, match="trust_remote_code"):
        diffusers.DiffusionPipeline.from_pretrained(folder)
    theirs = diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    ours = LocodiffPipeline.from_pretrained(folder)
    (folder / "pipeline.py").write_text("raise RuntimeError('locodiff ran code from the folder')\n")
    assert isinstance(LocodiffPipeline.from_pretrained(folder), LocodiffPipeline)
    call = dict(locations=[[(0.3, 0.6), (0.7, 0.4)]], num_inference_steps=3, output_type="pt")
    assert type(theirs).__name__ == "LocodiffPipeline"
    assert torch.equal(theirs(**call, generator=torch.Generator().manual_seed(2)).images,
                       ours(**call, generator=torch.Generator().manual_seed(2)).images)
    with pytest.raises(CheckpointError, match="local_files_only=False"):
        LocodiffPipeline.from_pretrained(tmp_path / "nowhere")


def test_diffusers_edm_schedulers_drive_the_pipeline(tmp_path):
    """A scheduler swapped in the diffusers way samples, survives save and load, and diffusers' EDM
    Euler lands where locodiff's Euler sampler does from the same noise (up to its starting level,
    sqrt(sigma_max^2 + 1) instead of sigma_max, and the float rounding of the epsilon round trip)."""
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler, DDPMScheduler

    from locodiff.diffusion.samplers import sample_euler

    pipe = LocodiffPipeline.from_pretrained(export_run(trained_run(tmp_path, "cross_attention"), tmp_path / "e"))
    latents = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    call = dict(locations=[[(0.3, 0.6)], [(0.5, 0.5), (0.2, 0.8)]], num_inference_steps=6, output_type="pt",
                latents=latents)
    pipe.scheduler = EDMEulerScheduler.from_config(pipe.scheduler.config)
    euler = pipe(**call).images
    cond = location_conditioning(call["locations"], None)
    want = sample_euler(pipe.model, latents * (80.0**2 + 1) ** 0.5 / 80.0, cond, 6)
    assert (euler - ((want + 1) / 2).clamp(0, 1)).abs().max() < 1e-3
    pipe.scheduler = EDMDPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "dpm", safe_serialization=True)
    again = LocodiffPipeline.from_pretrained(tmp_path / "dpm")
    assert type(again.scheduler).__name__ == "EDMDPMSolverMultistepScheduler"
    assert torch.equal(again(**call).images, pipe(**call).images)
    pipe.scheduler = DDPMScheduler()
    with pytest.raises(InputError, match="EDM's noise levels"):
        pipe(**call)


def test_latents_callbacks_and_a_progress_bar_per_step(tmp_path, capsys):
    """``latents`` are the noise a generator would draw; the callback sees every step's latents and
    may replace them; the bar counts scheduler steps (2 x steps - 1 calls for Heun)."""
    pipe = LocodiffPipeline.from_pretrained(export_run(trained_run(tmp_path, "cross_attention"), tmp_path / "e"))
    call = dict(locations=[[(0.3, 0.6)], [(0.7, 0.4)]], num_inference_steps=3, output_type="pt")
    drawn = pipe(**call, generator=torch.Generator().manual_seed(7)).images
    latents = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    assert torch.equal(pipe(**call, latents=latents).images, drawn)
    assert "5/5" in capsys.readouterr().err
    seen = []

    def keep(pipe, i, t, tensors):
        seen.append((i, tensors["latents"].shape))
        return {}

    assert torch.equal(pipe(**call, latents=latents, callback_on_step_end=keep).images, drawn)
    assert seen == [(i, (2, 3, 16, 16)) for i in range(5)]
    flat = pipe(**call, latents=latents, callback_on_step_end=lambda p, i, t, d: {"latents": d["latents"] * 0}).images
    assert not torch.equal(flat, drawn)
    with pytest.raises(InputError, match="expected \\(2, 3, 16, 16\\)"):
        pipe(**call, latents=latents[:1])
    with pytest.raises(InputError, match="expected a tensor"):
        pipe(**call, latents=latents.tolist())
    with pytest.raises(InputError, match="only 'latents'"):
        pipe(**call, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_a_hub_id_is_read_through_a_snapshot_where_downloads_are_allowed(tmp_path, monkeypatch):
    """No hub here: the download is replaced by a copy of a local export. A hub id loads only with
    local_files_only=False, and only JSON, Markdown, safetensors and pipeline.py are asked for."""
    import shutil

    import locodiff.export.pipeline as pipeline

    folder = export_run(trained_run(tmp_path, "cross_attention"), tmp_path / "e")
    asked = {}

    def snapshot(repo_id, allow_patterns):
        asked.update(repo=repo_id, patterns=allow_patterns)
        return str(shutil.copytree(folder, tmp_path / "snapshot"))

    monkeypatch.setattr(pipeline, "snapshot_download", snapshot)
    with pytest.raises(CheckpointError, match="local_files_only=False"):
        LocodiffPipeline.from_pretrained("user/exp1")
    assert not asked
    pipe = LocodiffPipeline.from_pretrained("user/exp1", local_files_only=False)
    assert asked["repo"] == "user/exp1" and not any(p.endswith((".bin", ".pt", ".ckpt")) for p in asked["patterns"])
    call = dict(locations=[[(0.3, 0.6)]], num_inference_steps=2, output_type="pt")
    assert torch.equal(pipe(**call, generator=torch.Generator().manual_seed(0)).images,
                       LocodiffPipeline.from_pretrained(folder)(**call, generator=torch.Generator().manual_seed(0)).images)

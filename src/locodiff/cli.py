"""The ``locodiff`` command: one verb per pipeline stage.

Each verb loads the study config (``--preset``, ``--config FILE``, ``--set key=value``), prints it
with ``--dry-run``, and otherwise calls its stage's entry function. The verbs stay thin: the work
lives in the stage subpackages so that it can be called from Python just the same.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import typer
from safetensors.torch import load_file

from . import __version__, layout
from .adapters.diffusers_unet import load_diffusers_unet
from .locality.diffusers_probe import DiffusersProbeSpec, load_prompt_file, probe_diffusers, summary_lines, write_probe
from .config import to_dict
from .conditioning import check_points
from .errors import LocodiffError
from .stages.evaluation import evaluate_run
from .intervene.config import InterventionSpec
from .hardware import fastest_dtype
from .stages.subjects import load_subject, subject_checkpoints, training_run, write_intervention
from .io import atomic_path, disk_full_message
from .locks import NO_WAIT
from .locality.extrapolation import ExtrapolationResult
from .locality.result import LocalityResult, mean_normalised_index, mean_presence_index
from .stages.probe import probe_run
from .adapters.text_model import SavedTextModel, is_text_model
from .scenes.clevr_export import export_split
from .scenes.dataset import build_dataset
from .scenes.figures import data_contact_sheet
from .stages.predict import predict
from .stages.study import report_study, run_study
from .stages.config import PRESETS, StudyConfig, load_study_config
from .checkpoints import no_checkpoint, read_state
from .train.run_folder import read_run_config
from .train.run import is_main_process, train_run
from .train.sampling import SampleRequest, sample_run
from .tracking import resolved_report_to

app = typer.Typer(
    help="locodiff: compositional generalization in conditional diffusion through locality.",
    no_args_is_help=True,
    add_completion=False,
)

PresetOpt = typer.Option("quick", "--preset", "-p", help=f"Named preset: one of {', '.join(PRESETS)}.")
ConfigOpt = typer.Option(None, "--config", "-c", help="TOML file merged over the preset, or a complete JSON config "
                         "(a study's saved study_config.json, which loads without a preset).")
SetOpt = typer.Option(None, "--set", "-s", help=(
    "Override one option, e.g. --set train.lr=2e-4 (repeatable). Precedence: preset < config file < a "
    "model's own table < command line; train.KEY reaches every model unless models.NAME.train.KEY is given."))
DryRunOpt = typer.Option(False, "--dry-run", help="Print the resolved config as JSON and exit.")


@dataclass(frozen=True)
class StudyOptions:
    """The option block of every verb that works on a study: --preset, --config, --set, --dry-run."""

    preset: str | None
    config: Optional[Path]
    sets: list[str]
    dry_run: bool

    def load(self, *more_sets: str, print_and_exit: bool = True) -> StudyConfig:
        """The resolved config (``more_sets`` after the user's); with --dry-run and
        ``print_and_exit`` it is printed and the command exits."""
        return resolve_config(self.preset, self.config, [*self.sets, *more_sets], self.dry_run and print_and_exit)


STUDY = StudyOptions("quick", None, [], False)  # the marker a verb's ``study`` parameter defaults to
_OPTION_BLOCK = [inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=PresetOpt, annotation=str),
                 inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=ConfigOpt,
                                   annotation=Optional[Path]),
                 inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=SetOpt,
                                   annotation=Optional[list[str]]),
                 inspect.Parameter("dry_run", inspect.Parameter.KEYWORD_ONLY, default=DryRunOpt, annotation=bool)]


def study_verb(verb: Callable) -> Callable:
    """Give ``verb`` (which declares ``study: StudyOptions = STUDY``) the shared option block: typer
    sees the four options in its place, and the verb gets them as one ``StudyOptions``."""
    signature = inspect.signature(verb, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "study"]

    @functools.wraps(verb)
    def with_block(*args, preset, config, set_, dry_run, **kwargs):
        return verb(*args, study=StudyOptions(preset, config, list(set_ or []), dry_run), **kwargs)

    with_block.__signature__ = signature.replace(parameters=kept + _OPTION_BLOCK)
    with_block.__annotations__ = {p.name: p.annotation for p in with_block.__signature__.parameters.values()}
    del with_block.__wrapped__  # typer reads the new signature, not the verb's
    return with_block


ReportToOpt = typer.Option(None, "--report-to", help="Trackers that also get training's and evaluation's numbers: "
                           "auto (TensorBoard when installed), tensorboard, mlflow, wandb (offline) or none; "
                           "the same as --set train.report_to=... (files in each run folder's tracking/).")


def with_report_to(sets: Optional[list[str]], report_to: Optional[str]) -> list[str]:
    return [*(sets or []), *([f"train.report_to={report_to}"] if report_to is not None else [])]


def check_trackers(cfg: StudyConfig, models: list[str]) -> None:
    """Fail before any work when a model asks for a tracker that is not installed."""
    for name in models:
        resolved_report_to(cfg.run_config(name).train.report_to)


_debug = {"on": False}  # set by --debug: show tracebacks instead of one-line errors


def resolve_config(preset: str | None, config: Optional[Path], sets: Optional[list[str]], dry_run: bool) -> StudyConfig:
    """Load the config or exit with a readable error; with ``dry_run`` print it and exit."""
    with fail_cleanly():
        cfg = load_study_config(preset, config, sets or [])
    if dry_run:
        typer.echo(json.dumps(to_dict(cfg), indent=2))
        raise typer.Exit(0)
    return cfg


@contextmanager
def fail_cleanly():
    """Turn locodiff's errors and failed file operations into one red line and exit code 2
    (a traceback only with ``locodiff --debug``)."""
    try:
        yield
    except (LocodiffError, OSError) as e:
        if _debug["on"]:
            raise
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            message = disk_full_message(e)
        else:
            message = str(e) if isinstance(e, LocodiffError) else f"cannot read or write {e.filename!r}: {e.strerror or e}"
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def parse_counts(text: str) -> list[int]:
    """'0-10' or '1,2,5' or '3' -> list of ints."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected counts like 0-10 or 1,2,5") from None
    return out


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    no_wait: bool = typer.Option(False, "--no-wait", help="When another process is writing a folder this command "
                                 "needs (a run, the data, an evaluation), stop with one line instead of waiting "
                                 "(a study finishes its other jobs first)."),
) -> None:
    """locodiff: compositional generalization in conditional diffusion through locality."""
    _debug["on"] = debug
    if no_wait:
        os.environ[NO_WAIT] = "1"  # worker processes inherit it


@app.command()
def version() -> None:
    """Print locodiff's version."""
    typer.echo(__version__)


@app.command()
@study_verb
def render(
    study: StudyOptions = STUDY,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: the config's out_dir)."),
    device: str = typer.Option("cpu", "--device", help="Torch device to render on, e.g. cpu or cuda."),
) -> None:
    """Render the train and test scene data sets (cached, resumable) and a contact sheet."""
    cfg = study.load()
    out_dir = out if out is not None else Path(cfg.out_dir)
    start = time.perf_counter()
    with fail_cleanly():
        root = build_dataset(cfg.data, out_dir, device=device, progress=True)
        sheet = data_contact_sheet(cfg.data, device=device, root=root)
        with atomic_path(root / layout.CONTACT_SHEET) as tmp:
            sheet.save(tmp, format="PNG")
    d = cfg.data
    typer.echo(
        f"data set ready in {root} ({time.perf_counter() - start:.1f} s): "
        f"{d.split_size('train')} train and {d.split_size('test')} test images at "
        f"{d.resolution}x{d.resolution}; contact sheet: {root / 'contact_sheet.png'}"
    )


@app.command()
@study_verb
def train(
    model: str = typer.Argument(..., help="Name of a model of the study config: a models.NAME table of the preset or "
                                "--config file (e.g. exp1; `locodiff study --dry-run` lists them)."),
    study: StudyOptions = STUDY,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder (default: <out_dir>/models/<name>-<hash>)."),
    on_the_fly: bool = typer.Option(False, "--on-the-fly", help="Render batches during training instead of using the cached data set."),
    report_to: Optional[str] = ReportToOpt,
) -> None:
    """Train one model of the study (renders the data set first if needed). Re-running resumes."""
    cfg = study.load(*with_report_to([], report_to), print_and_exit=False)
    with fail_cleanly():
        if model not in cfg.models:
            raise LocodiffError(f"no model named {model!r} in the config; models: {sorted(cfg.models)}")
        rcfg = cfg.run_config(model)
        check_trackers(cfg, [model])
        if study.dry_run:
            typer.echo(json.dumps(to_dict(rcfg), indent=2))
            raise typer.Exit(0)
        folder = run_dir or cfg.run_dir(model)
        data_root = None if on_the_fly else build_dataset(cfg.data, cfg.out_dir, ("train",), progress=True)
        result = train_run(rcfg, folder, data_root=data_root)
    if is_main_process() and result.already_finished:  # under a launcher every process gets here
        typer.echo(f"{model}: already trained ({result.images_seen} images, final loss {result.final_loss:.4f}, "
                   f"{result.images_per_s:.0f} img/s over its training); nothing to do; run folder {folder}")
    elif is_main_process():
        typer.echo(f"{model}: {result.images_seen} images, final loss {result.final_loss:.4f}, "
                   f"{result.images_per_s:.0f} img/s; run folder {folder}")


@app.command("export-scenes")
@study_verb
def export_scenes(
    out: Path = typer.Argument(..., help="The folder to write: images/ and scenes.json, as the CLEVR generator lays them out."),
    study: StudyOptions = STUDY,
    split: str = typer.Option("test", "--split", help="train or test."),
    counts: Optional[str] = typer.Option(None, "--counts", help="Only images with these object counts, e.g. 0-10."),
) -> None:
    """Write a split of the study's data set in the CLEVR generator's scene format (read back with
    data.source = "clevr_folder")."""
    cfg = study.load()
    with fail_cleanly():
        if split not in ("train", "test"):
            raise LocodiffError(f"--split {split!r}: expected train or test")
        chosen = tuple(parse_counts(counts)) if counts else None
        folder = export_split(cfg.data, cfg.out_dir, split, out, chosen)
    typer.echo(f"wrote {folder / 'scenes.json'} and {folder / 'images'}")


@app.command()
def sample(
    run: Path = typer.Argument(..., help="A training run or intervention folder (<out_dir>/models/<name>-<hash>)."),
    locations: Optional[str] = typer.Option(None, "--locations", help='JSON list of (x, y) in [0, 1], e.g. "[[0.3,0.6],[0.7,0.4]]".'),
    counts: str = typer.Option("1-3", "--counts", help="Object counts to sample when no --locations are given, e.g. 0-10."),
    per_count: int = typer.Option(8, "--per-count", min=1, help="Images per count (or per location set)."),
    steps: int = typer.Option(18, "--steps", min=1, help="Heun sampler steps."),
    guidance: float = typer.Option(1.0, "--guidance", min=0.0, help="Classifier-free guidance scale (1 = none)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for noise and test scenes."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: RUN/samples)."),
) -> None:
    """Sample images from a trained run or an intervention: a PNG grid (one row per count) and a
    .safetensors file, named by what was asked (samples-k1-3-<hash>, samples-locations-<hash>)."""
    with fail_cleanly():
        points = None
        if locations is not None:
            try:
                points = tuple(check_points(json.loads(locations), "--locations"))
            except json.JSONDecodeError as e:
                raise LocodiffError(f"--locations is not valid JSON: {e}") from None
        request = SampleRequest(points, tuple(parse_counts(counts)), per_count, steps, guidance, seed)
        denoiser, run_cfg = load_subject(run)
        paths = sample_run(denoiser, run_cfg.data, out or run / "samples", request)
    for p in paths:
        typer.echo(str(p))


@app.command()
def export(
    run: Path = typer.Argument(..., help="A training run or intervention folder (<out_dir>/models/<name>-<hash>)."),
    out: Path = typer.Argument(..., help="The folder to write (replaced only if it is an earlier export)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A checkpoint folder of RUN (default: the latest)."),
    raw: bool = typer.Option(False, "--raw", help="Export the raw weights instead of the EMA ones."),
) -> None:
    """Write a trained run (or an intervention on one) as a diffusers pipeline folder:
    LocodiffPipeline.from_pretrained(OUT)."""
    with fail_cleanly():
        try:
            from .export import export_run  # needs the optional diffusers dependency
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise LocodiffError(f"locodiff export needs diffusers ({e}): pip install 'locodiff[diffusers]'") from None
        start = time.perf_counter()
        folder = export_run(run, out, checkpoint, ema=not raw)
    typer.echo(f"exported {run} to {folder} in {time.perf_counter() - start:.1f} s; "
               f"load it with LocodiffPipeline.from_pretrained({str(folder)!r})")


RunArg = typer.Argument(..., help="A training run folder (<out_dir>/models/<name>-<hash>).")
CheckpointsOpt = typer.Option("latest", "--checkpoints", help="latest, or all: every kept checkpoint, oldest first "
                              "(how the result grew over training; keep more with train.keep_checkpoints).")


def chosen_checkpoints(run: Path, which: str) -> list[Path | None]:
    """``[None]`` (the latest) or every kept checkpoint of a run or intervention, oldest first."""
    if which == "latest":
        return [None]
    if which != "all":
        raise LocodiffError(f"--checkpoints {which!r}: expected latest or all")
    found = subject_checkpoints(run)
    if not found:
        raise LocodiffError(no_checkpoint(run))
    return found
DeviceOpt = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda.")


@app.command()
@study_verb
def evaluate(
    run: Path = RunArg,
    study: StudyOptions = STUDY,
    counts: Optional[str] = typer.Option(None, "--counts", help="Object counts to evaluate, e.g. 0-10 (default: the config's)."),
    per_count: Optional[int] = typer.Option(None, "--per-count", min=1, help="Samples per count (default: the config's)."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Seed of the test conditionings and noise (default: the config's)."),
    device: str = DeviceOpt,
    checkpoints: str = CheckpointsOpt,
) -> None:
    """Length generalization of a trained run: sample k objects for each k, detect, score.

    Options come from the config's [evaluate] section; results go to RUN/eval-<hash>/ (resumable),
    the detector is cached under <out_dir>/detectors.
    """
    cfg = study.load(print_and_exit=False)
    with fail_cleanly():
        ev = cfg.evaluate
        if counts is not None:
            ev = dataclasses.replace(ev, counts=tuple(parse_counts(counts)))
        if per_count is not None:
            ev = dataclasses.replace(ev, per_count=per_count)
        if seed is not None:
            ev = dataclasses.replace(ev, seed=seed)
        if study.dry_run:
            typer.echo(json.dumps(to_dict(ev), indent=2))
            raise typer.Exit(0)
        rows = []
        for ckpt in chosen_checkpoints(run, checkpoints):
            result = evaluate_run(run, ev, cfg.detector_cache(), device, progress=True, checkpoint=ckpt)
            rows.append((ckpt, result))
    if checkpoints == "latest":
        typer.echo(result.markdown())
        typer.echo(f"results in {result.out_dir}")
        return
    typer.echo("images    " + "  ".join(f"recall k={k:<2d}" for k in ev.counts))
    for ckpt, result in rows:
        cells = "  ".join(f"{_cell(result.per_k[k].recall):<11}" for k in ev.counts)
        typer.echo(f"{read_state(ckpt)['images_seen']:<9d} {cells}  {result.out_dir.name}")


@app.command()
@study_verb
def locality(
    run: Path = RunArg,
    study: StudyOptions = STUDY,
    sigmas: Optional[str] = typer.Option(None, "--sigmas", help="Comma-separated noise levels, e.g. 0.05,0.5,5 (default: the config's)."),
    scenes: Optional[int] = typer.Option(None, "--scenes", min=1, help="Test scenes to probe (default: the config's)."),
    pixels: Optional[int] = typer.Option(None, "--pixels", min=1, help="Probed output pixels per scene (default: the config's)."),
    checkpoints: str = CheckpointsOpt,
) -> None:
    """Locality of a trained run's score: Jacobians w.r.t. pixels and conditioners per noise level.

    Options come from the config's [locality] section (or the flags); results go to
    RUN/locality-<hash>/ (a repeated call with the same options reuses them).
    """
    extra = []
    if sigmas is not None:
        extra.append(f"locality.sigmas=[{sigmas}]")
    extra += [f"locality.{k}={v}" for k, v in (("scenes", scenes), ("pixels", pixels)) if v is not None]
    cfg = study.load(*extra, print_and_exit=False)
    if study.dry_run:
        typer.echo(json.dumps(to_dict(cfg.locality), indent=2))
        raise typer.Exit(0)
    with fail_cleanly():
        run_cfg = read_run_config(training_run(run))  # an intervention reads its base run's config
        data_root = build_dataset(run_cfg.data, cfg.out_dir, ("test",), progress=True)
        folders = [(ckpt, probe_run(run, data_root, cfg.locality, cfg.seed, progress=True, checkpoint=ckpt))
                   for ckpt in chosen_checkpoints(run, checkpoints)]
    if checkpoints == "all":  # the conditional-locality index as training went on
        typer.echo("images    normalised index per sigma (" + ", ".join(f"{s:g}" for s in cfg.locality.sigmas)
                   + ")  mean  presence")
        for ckpt, folder in folders:
            summary = json.loads((folder / layout.PROBE_SUMMARY).read_text())
            per_sigma = " ".join(_three(s["index"]["normalised"]["mean"]) for s in summary["summaries"])
            typer.echo(f"{read_state(ckpt)['images_seen']:<9d} {per_sigma}  {_three(mean_normalised_index(summary))}  "
                       f"{_three(mean_presence_index(summary))}  {folder.name}")
        return
    folder = folders[0][1]
    result = LocalityResult.load(folder)
    typer.echo("sigma   index  chance  normalised  presence (normalised)")
    for s in result.summaries:
        typer.echo(f"{s.sigma:<7g} {s.index.index.mean:.3f}  {s.index.chance.mean:.3f}   {s.index.normalised.mean:.3f}"
                   f"       {s.presence_index.normalised.mean:.3f}")
    extrapolation = ExtrapolationResult.load(folder)
    if extrapolation is not None and extrapolation.per_k:
        typer.echo("where generalization is asked (the evaluation's scenes; mean over sigma in "
                   f"{list(cfg.locality.extrapolation.band)}):")
        for line in extrapolation.lines():
            typer.echo("  " + line)
    typer.echo(f"results in {folder}")


@app.command()
@study_verb
def intervene(
    run: Path = RunArg,
    radius: float = typer.Option(3.0, "--radius", min=0.0, help="Window radius around each location, in pixels."),
    softness: float = typer.Option(0.5, "--softness", min=0.0, help="Width of the window's soft edge, in pixels."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the intervention folder (default: <run>-masked)."),
    study: StudyOptions = STUDY,
    locality_too: bool = typer.Option(True, "--locality/--no-locality", help="Also probe the intervention's locality."),
    device: str = DeviceOpt,
) -> None:
    """Make a trained run's score local post hoc (masked composition), then evaluate it.

    No retraining: each conditioner acts only within --radius pixels of its location. The result
    is a folder beside the run (intervention.json, eval-*/, locality-*/) that every verb accepts;
    the study's [interventions.NAME] with the same base, radius and softness uses the same folder.
    """
    cfg = study.load()
    with fail_cleanly():
        run_cfg = read_run_config(run)
        spec = InterventionSpec(base=run_cfg.name, radius_px=radius, softness_px=softness,
                                description=f"masked composition of {run_cfg.name}, r = {radius:g} px")
        folder = layout.intervention_folder(run.parent, name or f"{run_cfg.name}-masked", spec, run_cfg)
        write_intervention(folder, spec, run)
        result = evaluate_run(folder, cfg.evaluate, cfg.detector_cache(), device, progress=True)
        typer.echo(result.markdown())
        if locality_too:
            data_root = build_dataset(run_cfg.data, cfg.out_dir, ("test",), progress=True)
            probe_run(folder, data_root, cfg.locality, cfg.seed, progress=True)
    typer.echo(f"results in {folder}")


def _three(value: float | None) -> str:
    """Three decimals, or a dash where nothing was measured (a caption model has no move index)."""
    return "  –  " if value is None else f"{value:.3f}"


@app.command("probe-diffusers")
def probe_diffusers_cmd(
    model: Path = typer.Option(..., "--model", help="Local folder of a diffusers pipeline or UNet (never downloaded)."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help=".safetensors with encoder_hidden_states [1,T,D] (+ text_embeds, time_ids for SDXL)."),
    caption: Optional[str] = typer.Option(None, "--caption", help="For a locodiff text model (a folder with text_encoder/): the prompt as words, e.g. \"large red metal cube top left\"."),
    latents_file: Optional[Path] = typer.Option(None, "--latents", help=".safetensors with 'latents' [B,C,H,W] (default: standard normal)."),
    latent_size: int = typer.Option(32, "--latent-size", min=8, help="Side of the random latents when --latents is not given."),
    sigmas: str = typer.Option("0.5,2,8", "--sigmas", help="Comma-separated noise levels (within the model's range)."),
    pixels: int = typer.Option(16, "--pixels", min=1, help="Probed output pixels per latent."),
    radius: float = typer.Option(2.0, "--radius", min=0.0, help="Radius (latent pixels) of the spatial-locality share."),
    dtype: str = typer.Option("float32", "--dtype", help="UNet precision: float32, bfloat16, or auto (bfloat16 "
                              "where the device computes it natively, else float32; emulated bf16 is slow)."),
    device: str = DeviceOpt,
    out: Path = typer.Option(Path("runs/probe-diffusers"), "--out", "-o", help="Output folder."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the latents, noise and probed pixels."),
    words: int = typer.Option(0, "--words", min=0, help="Also map every latent pixel for the first N tokens (the rest as one padding group): (N+1) x probes JVPs per sigma."),
    probes: int = typer.Option(1, "--probes", min=1, help="Random tangents per mapped token (--words): more = less noisy maps."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Also load pickled .bin weights (can run code: only for files you trust)."),
) -> None:
    """Spatial and per-token conditional locality of a diffusers UNet (SD 1.x/2.x, SDXL) in latent space."""
    with fail_cleanly():
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": fastest_dtype(device)}.get(dtype)
        if torch_dtype is None:
            raise LocodiffError(f"--dtype {dtype!r}: expected float32, bfloat16 or auto")
        if (embeddings is None) == (caption is None):
            raise LocodiffError("give the prompt as --embeddings FILE or, for a locodiff text model, as --caption TEXT (one of them)")
        if caption is not None:
            if not is_text_model(model):
                raise LocodiffError(f"--caption needs a locodiff text model (text_encoder/ and tokenizer/ in {model}); "
                                    "give other models their prompt as --embeddings")
            prompt = SavedTextModel(model).prompt([caption])
        else:
            prompt = load_prompt_file(embeddings)
        adapter = load_diffusers_unet(model, torch_dtype, device, prompt=prompt, allow_pickle=allow_pickle)
        channels = adapter.unet.config.in_channels
        if latents_file is not None:
            lat = load_file(str(latents_file)).get("latents")
            if lat is None:
                raise LocodiffError(f"{latents_file} has no tensor named 'latents'")
        else:
            lat = torch.randn(1, channels, latent_size, latent_size, generator=torch.Generator().manual_seed(seed))
        spec = DiffusersProbeSpec(tuple(float(s) for s in sigmas.split(",")), pixels, radius, seed=seed, words=words,
                                  probes=probes)
        result = probe_diffusers(adapter, lat.float().to(device), spec, progress=True)
        path = write_probe(result, out)
    for line in summary_lines(result):
        typer.echo(line)
    typer.echo(f"results in {path.parent}")


@app.command()
@study_verb
def report(
    study_dir: Optional[Path] = typer.Argument(None, help="A study's out_dir: redraw its report from its study_config.json."),
    study: StudyOptions = STUDY,
) -> None:
    """(Re)write the study report from whatever the other stages have finished so far.

    Nothing is recomputed: tables and figures are redrawn from the saved results.
    """
    if study_dir is not None:
        saved = layout.study_config_path(study_dir)
        if not saved.is_file():
            typer.secho(f"error: {saved} not found; is {study_dir} a study's out_dir?", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        study = dataclasses.replace(study, preset=None, config=saved, sets=[f"out_dir={str(study_dir)!r}", *study.sets])
    cfg = study.load()
    with fail_cleanly():
        path = report_study(cfg)
    typer.echo(f"report: {path} and {path.with_suffix('.html')}")


@app.command()
@study_verb
def study(
    study: StudyOptions = STUDY,
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated stages to run (data,train,evaluate,locality,emergence,report)."),
    report_to: Optional[str] = ReportToOpt,
) -> None:
    """Run the whole study: render, train every model, evaluate, probe locality, write the report.

    Finished work is cached by config hash: re-running skips it, an interrupted study resumes.
    """
    cfg = study.load(*with_report_to([], report_to), print_and_exit=False)
    with fail_cleanly():
        check_trackers(cfg, list(cfg.models))
        prediction = predict(cfg)
    typer.echo("\n".join(["predicted cost on this machine (locodiff.stages.predict):", *prediction.lines()]), err=study.dry_run)
    if study.dry_run:
        typer.echo(json.dumps(to_dict(cfg), indent=2))
        raise typer.Exit(0)
    with fail_cleanly():
        try:
            result = run_study(cfg, only.split(",") if only else None, predicted=prediction.seconds)
        except KeyboardInterrupt:
            typer.secho("interrupted: finished work is kept; run the same command again to resume",
                        fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130)
    total = sum(result.stage_seconds.values())
    typer.echo("\n".join(["predicted and measured wall time:", *prediction.lines(result.stage_seconds)]))
    typer.echo(f"study finished in {total:.0f} s; results in {result.out_dir}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``locodiff`` command: one verb per pipeline stage.

Each verb loads the study config (``--preset``, ``--config FILE``, ``--set key=value``), prints it
with ``--dry-run``, and otherwise calls its stage's entry function. The verbs stay thin: the work
lives in the stage subpackages so that it can be called from Python just the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .config import to_dict
from .errors import LocodiffError
from .study_config import PRESETS, StudyConfig, load_study_config

app = typer.Typer(
    help="locodiff: compositional generalization in conditional diffusion through locality.",
    no_args_is_help=True,
    add_completion=False,
)

PresetOpt = typer.Option("quick", "--preset", "-p", help=f"Named preset: one of {', '.join(PRESETS)}.")
ConfigOpt = typer.Option(None, "--config", "-c", help="TOML file merged over the preset.")
SetOpt = typer.Option(None, "--set", "-s", help="Override one option, e.g. --set train.lr=2e-4 (repeatable).")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the resolved config as JSON and exit.")


def resolve_config(preset: str, config: Optional[Path], sets: Optional[list[str]], dry_run: bool) -> StudyConfig:
    """Load the config or exit with a readable error; with ``dry_run`` print it and exit."""
    try:
        cfg = load_study_config(preset, config, sets or [])
    except LocodiffError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if dry_run:
        typer.echo(json.dumps(to_dict(cfg), indent=2))
        raise typer.Exit(0)
    return cfg


@app.callback()
def _root() -> None:
    """locodiff: compositional generalization in conditional diffusion through locality."""


@app.command()
def version() -> None:
    """Print locodiff's version."""
    typer.echo(__version__)


@app.command()
def render(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    dry_run: bool = DryRunOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: the config's out_dir)."),
    device: str = typer.Option("cpu", "--device", help="Torch device to render on, e.g. cpu or cuda."),
) -> None:
    """Render the train and test scene data sets (cached, resumable) and a contact sheet."""
    import time

    from .io import atomic_path
    from .scenes.dataset import build_dataset
    from .scenes.figures import data_contact_sheet

    cfg = resolve_config(preset, config, set_, dry_run)
    out_dir = out if out is not None else Path(cfg.out_dir)
    start = time.perf_counter()
    try:
        root = build_dataset(cfg.data, out_dir, device=device, progress=True)
        sheet = data_contact_sheet(cfg.data, device=device)
        with atomic_path(root / "contact_sheet.png") as tmp:
            sheet.save(tmp, format="PNG")
    except LocodiffError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    except OSError as e:
        typer.secho(f"error: cannot write under {str(out_dir)!r}: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    d = cfg.data
    typer.echo(
        f"data set ready in {root} ({time.perf_counter() - start:.1f} s): "
        f"{d.split_size('train')} train and {d.split_size('test')} test images at "
        f"{d.resolution}x{d.resolution}; contact sheet: {root / 'contact_sheet.png'}"
    )


def main() -> None:  # pragma: no cover
    app()

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


def main() -> None:  # pragma: no cover
    app()

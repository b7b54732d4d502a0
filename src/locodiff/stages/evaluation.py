"""Evaluate a study member (a training run or an intervention folder) at a checkpoint: the
evaluation stage's and ``locodiff evaluate``'s entry point. The measurement itself
(``evaluate.evaluate_model``) takes a Denoiser; this module finds it."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import no_checkpoint, read_state
from ..errors import InputError
from ..evaluate.config import EvalConfig
from ..evaluate.runner import EvalResult, evaluate_model, evaluated_counts, evaluation_dir, track_evaluation
from ..tracking import Tracker
from .subjects import load_subject, subject_checkpoint


def evaluate_run(run_dir: str | Path, config: EvalConfig, cache_dir: str | Path,
                 device: str | torch.device = "cpu", progress: bool = False,
                 checkpoint: Path | None = None) -> EvalResult:
    """Evaluate the EMA weights of a training run's latest checkpoint, or of ``checkpoint`` (the
    study's and ``locodiff evaluate``'s entry point); results go to ``run_dir/eval-<hash>/``
    (keyed by the checkpoint) and resume like ``evaluate_denoiser``."""
    ckpt = Path(checkpoint) if checkpoint is not None else subject_checkpoint(run_dir)
    if ckpt is None:
        raise InputError(no_checkpoint(run_dir, "train it before evaluating"))
    denoiser, run_cfg = load_subject(run_dir, ckpt)
    out = evaluation_dir(run_dir, config, ckpt.name)
    before = evaluated_counts(out)
    result = evaluate_model(denoiser.to(device), run_cfg.data, out, config, cache_dir, device, progress,
                            run_cfg.holdout_indices())
    if set(result.per_k) != before:  # something new was measured: show it in the run's tracker
        track_evaluation(result, Tracker(run_cfg.train.report_to, run_dir), read_state(ckpt)["images_seen"])
    return result

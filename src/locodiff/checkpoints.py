"""Checkpoints: safetensors weights + JSON state, written atomically as one folder.

Layout of ``<run>/checkpoints/ckpt-<images>/``:
  model.safetensors      network weights (the raw network, before preconditioning)
  ema.safetensors        EMA weights (what evaluation uses; absent for the detector)
  optimizer.safetensors  AdamW moments, flattened to ``<param index>.<key>`` tensors
  extra.safetensors      other resumable state, e.g. a generator's (optional)
  state.json             images seen, step, optimizer hyper-parameters, config hash, and the
                         size and sha256 of every file above (written last)
A checkpoint folder appears under its final name only once complete, so a crash mid-write never
leaves a half checkpoint that a resume would pick up. A checkpoint damaged later (a disk error,
a truncated copy) fails its checksums: ``latest_checkpoint`` then moves it aside to
``damaged-ckpt-<images>`` (never deleting evidence), says so, and falls back to the newest good
one. Nothing here unpickles: every file is safetensors or JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError
from .io import notice, save_tensors, sha256_file
from .layout import CHECKPOINT_STATE

CKPT_PREFIX = "ckpt-"


@dataclass
class CheckpointState:
    images_seen: int
    step: int
    config_hash: str


def _state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, state in sd["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    for idx, vals in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(vals)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: Path, model: nn.Module, ema: nn.Module | None, opt: torch.optim.Optimizer,
    state: CheckpointState, keep: int = 2, extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint folder atomically and prune old ones, keeping the newest ``keep``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{CKPT_PREFIX}{state.images_seen:010d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=ckpt_root))
    try:
        save_tensors(_state_dict_cpu(model), tmp / "model.safetensors")
        if ema is not None:
            save_tensors(_state_dict_cpu(ema), tmp / "ema.safetensors")
        opt_tensors, opt_meta = _flatten_optimizer(opt)
        save_tensors(opt_tensors, tmp / "optimizer.safetensors")
        if extra:
            save_tensors({k: v.detach().cpu().contiguous() for k, v in extra.items()}, tmp / "extra.safetensors")
        files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in sorted(tmp.iterdir())}
        meta = {"images_seen": state.images_seen, "step": state.step,
                "config_hash": state.config_hash, "optimizer": opt_meta, "files": files}
        (tmp / CHECKPOINT_STATE).write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX))


def checkpoint_problem(ckpt: Path) -> str | None:
    """What is wrong with a checkpoint folder (``None`` when every file matches state.json).
    Checkpoints written before state.json listed its files are only checked for presence."""
    try:
        meta = json.loads((Path(ckpt) / CHECKPOINT_STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return "state.json is missing or unreadable"
    files = meta.get("files") or {"model.safetensors": None, "optimizer.safetensors": None}
    for name, record in files.items():
        path = Path(ckpt) / name
        if not path.is_file():
            return f"{name} is missing"
        if record and (path.stat().st_size != record["bytes"] or sha256_file(path) != record["sha256"]):
            return f"{name} differs from the size or checksum recorded in state.json"
    return None


_verified: set[tuple] = set()  # checkpoints already checked by this process, by their files' stats


def _stat_key(ckpt: Path) -> tuple | None:
    try:
        return (str(ckpt), *sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in ckpt.iterdir()))
    except OSError:
        return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint. A damaged newer one is moved aside with a notice. (Checksums
    are computed once per process and checkpoint; a file changed since is checked again.)"""
    for ckpt in reversed(list_checkpoints(run_dir)):
        key = _stat_key(ckpt)
        if key is not None and key in _verified:
            return ckpt
        problem = checkpoint_problem(ckpt)
        if problem is None:
            if key is not None:
                _verified.add(key)
            return ckpt
        aside = _set_aside(ckpt)
        notice(f"checkpoint {ckpt} is damaged ({problem}); moved it to {aside.name} and fell back to an older one")
    return None


def _set_aside(ckpt: Path) -> Path:
    target, n = ckpt.with_name(f"damaged-{ckpt.name}"), 1
    while target.exists():
        n += 1
        target = ckpt.with_name(f"damaged-{ckpt.name}-{n}")
    os.replace(ckpt, target)
    return target


def load_extra(ckpt: Path) -> dict[str, torch.Tensor]:
    """The extra tensors a checkpoint was saved with (empty when there are none)."""
    path = Path(ckpt) / "extra.safetensors"
    return load_file(str(path)) if path.is_file() else {}


def read_state(ckpt: Path) -> dict:
    try:
        return json.loads((Path(ckpt) / CHECKPOINT_STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {ckpt} has no readable state.json: {e}") from None


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a safetensors file into ``module``, with a clear error on any mismatch."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for bad headers
        raise CheckpointError(f"checkpoint file {path} is unreadable or corrupted: {e}") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {path} does not match the architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    module.load_state_dict(tensors)


def load_checkpoint(
    ckpt: Path, model: nn.Module, ema: nn.Module | None = None,
    opt: torch.optim.Optimizer | None = None,
) -> dict:
    """Restore what is passed in from ``ckpt``; returns its state.json contents."""
    ckpt = Path(ckpt)
    meta = read_state(ckpt)
    load_weights(model, ckpt / "model.safetensors")
    if ema is not None:
        load_weights(ema, ckpt / "ema.safetensors")
    if opt is not None:
        try:
            tensors = load_file(str(ckpt / "optimizer.safetensors"))
        except Exception as e:  # safetensors raises its own error type for bad headers
            raise CheckpointError(f"optimizer state in {ckpt} is unreadable: {e}") from None
        opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    return meta


def no_checkpoint(run_dir: str | Path, then: str = "train it first") -> str:
    """Why ``run_dir`` has no weights to load: not a folder at all (e.g. a model's name given where
    its run folder was asked for), or not trained yet."""
    if not Path(run_dir).is_dir():
        return f"{run_dir} is not a folder; expected a training run folder (<out_dir>/models/<name>-<hash>)"
    return f"run {run_dir} has no checkpoint yet; {then}"

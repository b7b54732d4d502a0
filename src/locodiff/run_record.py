"""What a training run records about itself for the readers above training (the report, the
stages), so that they read files instead of building networks:

- ``model.json``: the network's parameter count and what it reads of a Conditioning
  (``"locations"`` or ``"captions"``), written when training starts;
- ``metrics.jsonl`` (training's log): ``training_time`` sums its seconds, rate and last loss.

Images seen are in each checkpoint's ``state.json`` (``checkpoints.read_state``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .io import write_json_atomic
from .layout import MODEL_RECORD


@dataclass(frozen=True)
class ModelRecord:
    params: int
    conditioned_on: str  # "locations" or "captions"


def write_model_record(run_dir: Path, record: ModelRecord) -> None:
    path = Path(run_dir) / MODEL_RECORD
    if read_model_record(run_dir) != record:
        write_json_atomic(path, asdict(record))


def read_model_record(run_dir: Path) -> ModelRecord | None:
    """The record, or None where there is none (not trained yet) or it is unreadable."""
    try:
        data = json.loads((Path(run_dir) / MODEL_RECORD).read_text())
        return ModelRecord(int(data["params"]), str(data["conditioned_on"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def training_time(records: list[dict]) -> tuple[float | None, float | None, float | None]:
    """(seconds spent training, mean images/s, last loss) from metrics.jsonl, summed over every
    tick so that a resumed run counts all its sessions (``wall_s`` restarts at each resume)."""
    seconds, images, previous = 0.0, 0, 0
    for r in records:
        done = r["images_seen"] - previous
        if done > 0 and r.get("images_per_s"):
            seconds += done / r["images_per_s"]
            images += done
        previous = r["images_seen"]
    if not images:
        return None, None, None
    return seconds, images / seconds, records[-1].get("loss")

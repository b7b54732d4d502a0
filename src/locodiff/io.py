"""Atomic file writes: finished work is never lost to a crash halfway through a write."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from safetensors import SafetensorError
from safetensors.torch import save_file


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes owner-only files; use normal modes
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, sort_keys: bool = True) -> None:
    """``sort_keys=False`` keeps the order of tables whose order means something (a study's models)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON object per line (metrics logs); a torn last line is skipped on read."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | os.PathLike, quiet: bool = False) -> list[dict]:
    """Read a JSON-lines file, skipping lines that are not JSON objects: a torn final line left
    by an interrupted write silently, any other damaged line with a notice (the reader redoes
    whatever that line recorded) unless ``quiet`` (progress polls read the same file again and
    again; the stage that uses the records says it once)."""
    records = []
    p = Path(path)
    if not p.exists():
        return records
    lines = p.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif i < len(lines) - 1 and not quiet:
            notice(f"{p}: line {i + 1} is damaged; skipping it (what it recorded is redone)")
    return records


def notice(message: str) -> None:
    """One line on stderr about something locodiff found and repaired (healing is never silent)."""
    print(f"locodiff: {message}", file=sys.stderr, flush=True)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_tensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, with a full disk raised as the ``OSError`` it is, naming the file
    (safetensors raises an error of its own that names neither)."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        if "No space left on device" in str(e) or "os error 28" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


def final_name(path: str | os.PathLike | None) -> str:
    """The file a temporary one stands for: ``.name.<random>.tmp`` (``atomic_path``) is ``name``;
    a file in a checkpoint being written (``.tmp-ckpt-*``) is named as in the new checkpoint."""
    if path is None:
        return "a result file"
    p = Path(path)
    if p.parent.name.startswith(".tmp-ckpt-"):
        return f"{p.name} of a new checkpoint in {p.parent.parent}"
    parts = p.name.split(".")
    if p.name.startswith(".") and p.name.endswith(".tmp") and len(parts) >= 4:
        return str(p.parent / ".".join(parts[1:-2]))
    return str(p)


def disk_full_message(e: OSError) -> str:
    """One line for a full disk: what was being written, how much space is free there, and that
    nothing finished is lost (every stage writes atomically and resumes)."""
    folder = Path(e.filename or ".").parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free / 2**20
    return (f"the disk is full: writing {final_name(e.filename)} failed with {free:.1f} MiB free in {folder}; "
            "nothing finished "
            "is lost: free some space (or choose another out_dir) and run the same command again, it resumes "
            "from the last complete checkpoint, shard or result")

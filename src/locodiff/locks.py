"""One writer per folder: an OS lock on each folder a stage writes (a data set, a run, the
detector, an evaluation, a probe, the report), so that two processes on one study (two terminals,
a study launched twice, a job array over its models) never write the same thing.

The lock is ``flock`` on ``<folder>/.lock``: the kernel releases it when its process ends however
it ends (kill -9 included), so a lock is never stale. A second process that needs the folder says
once who holds it ("run exp1-… is being trained by pid 1234 since 10:02; waiting") and waits; when
it gets the lock it finds the finished work and uses it (every stage resumes from what is on
disk). With ``LOCODIFF_NO_WAIT=1`` (``--no-wait``) it stops instead, with one line.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LocodiffError
from .io import notice

LOCK_FILE = ".lock"
NO_WAIT = "LOCODIFF_NO_WAIT"  # set (to anything but "" or "0") by --no-wait


class FolderBusy(LocodiffError):
    """Another process is writing the folder and this one was asked not to wait."""


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        since = time.strftime("%H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def waiting_allowed() -> bool:
    return os.environ.get(NO_WAIT, "") in ("", "0")


@contextmanager
def folder_lock(folder: str | Path, doing: str) -> Iterator[None]:
    """Hold ``folder``'s lock while writing it; ``doing`` says what, e.g. "run exp1-… is being
    trained" (the first line a waiting process prints)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = f"{doing} by {_holder(fd)}"
            if not waiting_allowed():
                raise FolderBusy(f"{busy}; not waiting (--no-wait): run again when it is done") from None
            notice(f"{busy}; waiting")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.time(), "doing": doing}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

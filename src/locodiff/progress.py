"""Progress of long work, for a person at a terminal and for a log file alike.

``progress_bar(total, desc, unit)`` is a tqdm bar when stderr is a terminal; otherwise (a log, CI, a
pipe) it writes one plain line a minute, ``desc: 1200/4000 img (30%), 41.2 img/s, ETA 1m08s``, and
a last line when the work ends, so a log shows how far long work got and how fast without the
carriage-return spam a bar leaves in a file. Every stage's long loop uses it: training,
rendering, evaluation, the detector, the probes, the samplers.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm.auto import tqdm

LOG_EVERY_S = 60.0  # without a terminal, one progress line per this many seconds


def duration(seconds: float) -> str:
    """``45s``, ``6m20s``, ``1h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class LineProgress:
    """tqdm's small interface (``update``, ``set_postfix``, ``close``, a context manager) as one
    plain line every ``every_s`` seconds and one at the end."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 stream: IO[str] | None = None, every_s: float = LOG_EVERY_S) -> None:
        self.total, self.desc, self.unit, self.n, self.start_n = total, desc, unit, initial, initial
        self.stream, self.every_s = stream or sys.stderr, every_s
        self.started = self.last = time.monotonic()
        self.postfix, self.closed = "", False

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every_s:
            self._write()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        where = f"{self.n}/{self.total} {self.unit} ({self.n / self.total:.0%})" if self.total else f"{self.n} {self.unit}"
        text = f"{self.desc}: {where}, {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ETA {duration((self.total - self.n) / rate)}"
        elif self.total and self.n >= self.total:
            text += f", done in {duration(elapsed)}"
        return text + (f" ({self.postfix})" if self.postfix else "")

    def _write(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last = time.monotonic()

    def close(self) -> None:
        if not self.closed and self.n > self.start_n:
            self._write()
        self.closed = True

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent(LineProgress):
    def _write(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0,
                 stream: IO[str] | None = None) -> Any:
    """A progress reporter for ``total`` units of work: a bar at a terminal, a line a minute in a
    log, nothing when not ``enabled``."""
    stream = stream or sys.stderr
    if not enabled:
        return _Silent(total, desc, unit, initial, stream)
    if stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, unit, initial, stream)


def track(items: Any, desc: str, unit: str = "it", enabled: bool = True) -> Any:
    """Iterate over ``items`` with a ``progress_bar`` (its length known in advance)."""
    items = list(items)
    with progress_bar(len(items), desc, unit, enabled) as bar:
        for item in items:
            yield item
            bar.update(1)

"""Running a stage's jobs in parallel: worker processes, live progress, clean interrupts.

A ``Job`` is ``fn(*args)`` plus a way to read its progress from the files it writes, so that a
bar (or, without a terminal, one plain line a minute) shows how far every job is. With one
worker the jobs run one after another in a thread of this process (no start-up cost); with more
they run in spawned processes. On a 2-core CPU two single-threaded processes beat one
two-threaded process for these small networks (threads fight over the cores and small
convolutions do not split well).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import StudyError
from ..io import read_jsonl
from ..progress import LOG_EVERY_S, duration


@dataclass
class Job:
    """One unit of parallel work: ``fn(*args)`` in a worker, progress polled from its files."""

    fn: Callable
    args: tuple
    total: int = 1
    poll: Callable[[], int] | None = None  # completed units, read from files the job writes
    detail: Callable[[], str] | None = None  # e.g. the last logged loss, for the log line
    cost: float = 0.0  # predicted work, in any unit shared by a stage's jobs: the longest start first


def run_jobs(jobs: dict[str, Job], workers: int, console: Console) -> dict[str, object]:
    """Run every job in ``workers`` spawned processes with one live progress bar per job.

    Jobs start longest first (by ``Job.cost``; equal costs in the given order), so that the job
    that finishes last has not started late and left the other workers idle meanwhile. A job keeps
    its one thread when a sibling finishes: handing it more mid-run would change its float
    summation order (measured: a quick network's weights after six steps differ by up to 5e-7
    when the last three ran on two threads), making its numbers depend on when the sibling finished.
    With one worker the jobs run one after another in a thread of this process instead (no
    start-up cost, same live progress). All jobs run to the end even if one fails (their finished
    work is kept); then the first failure is raised with the worker's own message.
    """
    if not jobs:
        return {}
    jobs = dict(sorted(jobs.items(), key=lambda item: -item[1].cost))
    results: dict[str, object] = {}
    errors: list[BaseException] = []
    pool_cm = (ThreadPoolExecutor(max_workers=1) if workers == 1 else
               ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")))
    with pool_cm as pool, _progress(console) as bar, _stop_workers_on_interrupt(pool):
        tasks = {n: bar.add_task(n, total=j.total, completed=_poll(j)) for n, j in jobs.items()}
        futures = {n: pool.submit(j.fn, *j.args) for n, j in jobs.items()}
        pending, watch, last_line = set(futures), Watch(), time.monotonic()
        while pending:
            time.sleep(0.5)
            done = {n: _poll(jobs[n]) for n in pending}
            # a pool hands its jobs to free workers in the order they were submitted
            for n in [n for n in jobs if n in pending][:workers]:
                watch.running(n, done[n])
            if not console.is_terminal and time.monotonic() - last_line >= LOG_EVERY_S:
                console.print(progress_line(jobs, pending, watch, workers))  # a log file gets no live bars
                last_line = time.monotonic()
            for n in sorted(pending):
                bar.update(tasks[n], completed=done[n])
                if futures[n].done():
                    pending.discard(n)
                    watch.finished(n)
                    try:
                        results[n] = futures[n].result()
                        bar.update(tasks[n], completed=jobs[n].total)
                    except Exception as e:  # noqa: BLE001 - reported after the others finish
                        console.print(f"  [red]{n} failed: {e}")
                        errors.append(e)
    if errors:
        _raise_first(errors)
    return results


@dataclass
class Watch:
    """What the runner has seen of a stage's jobs, for the log's progress line: when each job
    began to run and its units done then (its rate counts from there, not from the stage's start),
    and how long each finished job took (the pace of jobs that report no progress until done)."""

    began: dict[str, tuple[float, int]] = field(default_factory=dict)
    took: dict[str, float] = field(default_factory=dict)

    def running(self, name: str, done: int) -> None:
        now = time.monotonic()
        _, done0 = self.began.setdefault(name, (now, done))
        if done < done0:  # resumed from a checkpoint behind its last logged line: count from here
            self.began[name] = (now, done)

    def finished(self, name: str) -> None:
        if name in self.began:
            self.took[name] = time.monotonic() - self.began[name][0]


def _raise_first(errors: list[BaseException]) -> None:
    if isinstance(errors[0], BrokenProcessPool):
        raise StudyError(
            "a worker process died (killed from outside, or out of memory?); finished work and the "
            "last checkpoints are kept: run the same command again to resume"
        ) from None
    raise errors[0]


@contextmanager
def _stop_workers_on_interrupt(pool):
    """On Ctrl-C or SIGTERM stop the worker processes too, instead of leaving them training
    orphaned; every run resumes from its last checkpoint on the next call."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if in_main else None
    try:
        yield
    except KeyboardInterrupt:
        processes = list((getattr(pool, "_processes", None) or {}).values())  # empty for threads
        for process in processes:
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def progress_line(jobs: dict[str, Job], pending: set[str], watch: Watch, workers: int = 1) -> str:
    """``  [12:03:04] 1/5 done, 2 started, 2 queued, stage ETA ~24m10s; exp1 65536/150000 (44%, 221/s,
    ETA 6m20s, loss 0.0412), exp2 ...``: how far the stage is as a whole, then each running job.
    A job that reports progress gets its rate and ETA once it has moved since it began; the others
    an ETA from their ``cost`` at the stage's pace (seconds per unit of cost, the median over the
    moving jobs' rates and the finished jobs' times). The stage's ETA is ``workers`` filled longest
    first with what every job has left (none while a job's cost is unknown, or nothing has moved)."""
    now, running = time.monotonic(), [n for n in sorted(pending) if n in watch.began]
    done = {n: _poll(jobs[n]) for n in pending}
    rates = {n: _rate(done[n], *watch.began[n], now) for n in running}
    paces = [(jobs[n].total - watch.began[n][1]) / r / jobs[n].cost for n, r in rates.items() if r and jobs[n].cost > 0]
    paces += [t / jobs[n].cost for n, t in watch.took.items() if jobs[n].cost > 0]
    pace = statistics.median(paces) if paces else None
    left, parts = {}, []
    for n in sorted(pending):
        job, rate = jobs[n], rates.get(n)
        if rate:
            left[n] = (job.total - done[n]) / rate
        elif pace is not None and job.cost > 0:
            left[n] = max(0.0, pace * job.cost - (now - watch.began[n][0] if n in watch.began else 0.0))
        if n in watch.began:
            parts.append(_job_part(n, job, done[n], rate, left.get(n), now - watch.began[n][0]))
    head = f"{len(jobs) - len(pending)}/{len(jobs)} done, {len(running)} started, {len(pending) - len(running)} queued"
    if pace is not None and len(left) == len(pending):
        head += f", stage ETA ~{duration(longest_first_makespan(list(left.values()), workers))}"
    return f"  [{time.strftime('%H:%M:%S')}] {head}; " + ", ".join(parts)


def _rate(done: int, t0: float, done0: int, now: float) -> float | None:
    """Units per second since the job began to run (None until it has moved)."""
    return (done - done0) / (now - t0) if done > done0 and now > t0 else None


def _job_part(name: str, job: Job, done: int, rate: float | None, left: float | None, elapsed: float) -> str:
    """``exp1 65536/150000 (44%, 221/s, ETA 6m20s, loss 0.0412)``; a job that reports no progress:
    ``exp2@s1 (running 1m10s, ETA ~2m05s)``."""
    facts = [f"{done / max(job.total, 1):.0%}"] if job.poll else [f"running {duration(elapsed)}"]
    if rate:
        facts.append(f"{rate:.3g}/s")
    if left is not None:
        facts.append(f"ETA {'' if rate else '~'}{duration(left)}")
    if job.detail is not None:
        try:
            facts.append(job.detail())
        except (OSError, ValueError, KeyError):
            pass
    progress = f" {done}/{job.total}" if job.poll else ""
    return f"{name}{progress} ({', '.join(f for f in facts if f)})"


def longest_first_makespan(costs: list[float], workers: int) -> float:
    """Wall time of jobs of the given costs run ``workers`` at a time, longest first."""
    loads = [0.0] * max(1, workers)
    for cost in sorted(costs, reverse=True):
        loads[loads.index(min(loads))] += cost
    return max(loads)


def _poll(job: Job) -> int:
    try:
        return min(job.total, job.poll()) if job.poll else 0
    except (OSError, ValueError, KeyError):
        return 0


def last_record(path: Path, key: str) -> int:
    records = read_jsonl(path, quiet=True) if path.exists() else []
    return int(records[-1][key]) if records else 0


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("  {task.description:<18}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a job with ``n`` torch threads and give the process its previous count back after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

"""The job runner: jobs start longest first, with one worker or several."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

import locodiff.stages.jobs as jobs_module
from helpers.timed_jobs import sleep_and_time
from locodiff.stages.jobs import Job, Watch, progress_line, run_jobs


def quiet() -> Console:
    return Console(quiet=True)


def test_one_worker_runs_the_costliest_job_first():
    ran: list[str] = []
    jobs = {name: Job(ran.append, (name,), cost=cost)
            for name, cost in [("cheap", 1.0), ("dear", 9.0), ("middling", 4.0), ("also_cheap", 1.0)]}
    run_jobs(jobs, 1, quiet())
    assert ran == ["dear", "middling", "cheap", "also_cheap"]  # equal costs keep the given order


def test_two_workers_start_the_two_longest_and_the_shortest_waits():
    """Given in the worst order (shortest first), the two longest start at once; the shortest
    starts only when the shorter of those has finished."""
    jobs = {name: Job(sleep_and_time, (seconds,), cost=seconds)
            for name, seconds in [("short", 0.2), ("middle", 1.0), ("long", 2.0)]}
    times = run_jobs(jobs, 2, quiet())
    assert times["short"][0] >= times["middle"][1] - 0.05
    assert times["long"][0] < times["middle"][1] and times["middle"][0] < times["long"][1]


def test_a_job_resumed_behind_its_last_logged_line_gets_a_rate(monkeypatch):
    """A training run resumes from a checkpoint older than its last metrics line: its progress
    first reads the stale line (1000), then drops (800) and climbs from there without passing it.
    Its rate is measured from where it resumed, not from the stale line."""
    monkeypatch.setattr(jobs_module, "LOG_EVERY_S", 0.4)
    start = time.monotonic()

    def poll() -> int:
        t = time.monotonic() - start
        return 1000 if t < 0.8 else 800 + int(50 * (t - 0.8))

    out = io.StringIO()
    run_jobs({"resumed": Job(time.sleep, (3.0,), total=2000, poll=poll)}, 1, Console(file=out, width=300))
    assert "/s, ETA" in out.getvalue(), out.getvalue()


def test_a_failing_job_lets_the_others_finish_then_raises_its_own_error():
    """The failure is raised with the job's own message, but only after the jobs queued behind it
    have run (the last one still waits while the runner sees the failure): finished work is never
    thrown away because a sibling failed."""
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("bad config in the first job")

    def slow(name: str) -> None:
        time.sleep(1.0)
        ran.append(name)

    jobs = {"fails": Job(fail, (), cost=3.0), "slow": Job(slow, ("slow",), cost=2.0),
            "queued": Job(ran.append, ("queued",), cost=1.0)}
    with pytest.raises(ValueError, match="bad config in the first job"):
        run_jobs(jobs, 1, quiet())
    assert ran == ["slow", "queued"]


def test_jobs_without_progress_get_an_eta_from_the_finished_jobs_pace():
    """Probe jobs report nothing until done. One finished in 100 s for a cost of 10 (10 s per unit
    of cost); the running one (cost 6, 20 s in) has ~40 s left, the queued one (cost 3) ~30 s: on
    two workers the stage ends in ~40 s."""
    jobs = {name: Job(print, (), cost=cost) for name, cost in [("done", 10.0), ("running", 6.0), ("queued", 3.0)]}
    now = time.monotonic()
    watch = Watch(began={"done": (now - 120, 0), "running": (now - 20, 0)}, took={"done": 100.0})
    line = progress_line(jobs, {"running", "queued"}, watch, workers=2)
    assert "] 1/3 done, 1 started, 1 queued, stage ETA ~40s; running (running 20s, ETA ~40s)" in line, line


def test_the_log_counts_a_running_job_that_reports_no_progress_as_started(monkeypatch):
    """With one worker and two jobs that report nothing until done, the first line names the
    first as started and the second as queued; once the first has finished, its time gives the
    second an ETA."""
    monkeypatch.setattr(jobs_module, "LOG_EVERY_S", 0.4)
    out = io.StringIO()
    jobs = {"first": Job(time.sleep, (1.5,), cost=2.0), "second": Job(time.sleep, (1.5,), cost=1.0)}
    run_jobs(jobs, 1, Console(file=out, width=300))
    lines = out.getvalue().splitlines()
    assert "0/2 done, 1 started, 1 queued; first (running" in lines[0], lines
    assert any("1/2 done, 1 started, 0 queued, stage ETA ~" in line and "second (running" in line
               for line in lines), lines

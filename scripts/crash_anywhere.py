"""Crash a study anywhere, relaunch it, and check it ends as if nothing had happened.

    python scripts/crash_anywhere.py OUT [--preset micro] [--rounds 2] [--signal KILL] [--seed 0] [-s KEY=VALUE ...]

Runs the study once without interruption into OUT/uninterrupted; then, in OUT/crashed, for each
stage and each round, launches the study, kills its whole process group (workers included) at a
seeded random moment after the stage starts, and relaunches; finally lets it finish and compares
every result file (eval.json, eval.jsonl, summary.json, extrapolation.json, features.json, EMA
weights) byte for byte with the uninterrupted study. Prints the kills that landed inside each
stage (a stage that was already done when the kill came does not count) and exits 1 on any
difference. ``tests/test_faults.py`` runs it on a small micro study; for a bigger preset give
``--preset quick`` and expect hours.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

STAGES = ("data", "train", "evaluate", "locality", "emergence", "report")
RESULT_FILES = ("eval.json", "eval.jsonl", "summary.json", "extrapolation.json", "features.json", "ema.safetensors")


def study_command(preset: str, out: Path, sets: list[str]) -> list[str]:
    return [sys.executable, "-m", "locodiff.cli", "study", "-p", preset, *[a for s in sets for a in ("-s", s)],
            "-s", f"out_dir={str(out)!r}"]


def kill_inside(command: list[str], stage: str, delay_s: float, sig: signal.Signals) -> bool:
    """Start the study, send ``sig`` to its process group ``delay_s`` after ``stage`` begins;
    whether the kill landed before the stage said it was done."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True, env={**os.environ, "COLUMNS": "200"})
    try:
        for line in proc.stdout:
            if re.search(rf"stage \d/\d+: {stage}\b", line):
                time.sleep(delay_s)
                break
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
        return not re.search(rf"^\s*{stage} done in", proc.stdout.read(), re.MULTILINE)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def result_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.name in RESULT_FILES}


def crash_anywhere(command: list[str], rounds: int, sig: signal.Signals, rng: random.Random,
                   max_delay_s: float = 2.0) -> Counter:
    """Kill the study ``rounds`` times inside each stage in turn (each relaunch resumes what the last
    one left), then let it finish; the kills that landed inside each stage."""
    landed: Counter = Counter()
    for stage in STAGES:
        for _ in range(rounds):
            landed[stage] += kill_inside(command, stage, rng.uniform(0.0, max_delay_s), sig)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return landed


def differences(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    return sorted(set(a) ^ set(b)) + [name for name in sorted(set(a) & set(b)) if a[name] != b[name]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--signal", default="KILL", choices=["KILL", "TERM", "INT"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-s", "--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    sig = signal.Signals[f"SIG{args.signal}"]
    alone, crashed = args.out / "uninterrupted", args.out / "crashed"
    subprocess.run(study_command(args.preset, alone, args.sets), check=True, stdout=subprocess.DEVNULL)
    landed = crash_anywhere(study_command(args.preset, crashed, args.sets), args.rounds, sig, random.Random(args.seed))
    print("kills inside each stage (SIG" + args.signal + "): "
          + ", ".join(f"{stage} {landed[stage]}/{args.rounds}" for stage in STAGES))
    bad = differences(result_files(alone), result_files(crashed))
    print(f"{len(result_files(alone))} result files compared, {len(bad)} differ" + (f": {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

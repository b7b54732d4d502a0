"""Several processes sharing a batch, on the CPU (gloo), launched the way a user launches them.

A batch of B images on N processes is B/N rows each; every random draw is made for the whole
batch and each process keeps its rows (``diffusion.loss.Rows``), so N processes train the same
model as one, up to the order of floating-point sums in the gradient all-reduce.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from locodiff.conditioning import Conditioning
from locodiff.diffusion.loss import EDMLoss, Rows
from locodiff.io import read_jsonl
from locodiff.checkpoints import latest_checkpoint
from locodiff.train.penalty import CompositionLoss, LocalityPenaltyLoss

HELPER = Path(__file__).parent / "helpers" / "train_tiny.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
_port = iter(range(29700, 29800))


def train(run_dir: Path, processes: int, total: int = 64, wait: bool = True) -> subprocess.Popen:
    if processes == 1:
        cmd = [sys.executable, str(HELPER), str(run_dir), str(total)]
    else:
        cmd = [str(TORCHRUN), f"--nproc_per_node={processes}", f"--master_port={next(_port)}",
               str(HELPER), str(run_dir), str(total)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    if wait:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return proc


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir)
    return {name: load_file(str(ckpt / f"{name}.safetensors")) for name in ("model", "ema")}


def test_the_global_batch_draws_are_split_by_rows_not_redrawn():
    """Two halves of a batch drawn with Rows get exactly the rows of the whole batch's draw, and
    so the same per-image losses; no two processes share noise."""
    torch.manual_seed(0)
    x0 = torch.randn(6, 3, 8, 8)
    cond = Conditioning.from_lists([[(0.3, 0.4)], [(0.5, 0.5), (0.2, 0.8)], [], [(0.9, 0.1)], [(0.4, 0.4)], []])

    def denoiser(x, sigma, c):  # depends on the conditioning, so the penalty has something to see
        return x * 0.5 + c.locations.sum((1, 2))[:, None, None, None]

    for loss in (EDMLoss(), LocalityPenaltyLoss(weight=1.0, window_px=2.0, fraction=0.5),
                 CompositionLoss(weight=1.0, window_px=2.0, fraction=0.5)):
        whole = loss(denoiser, x0, cond, torch.Generator().manual_seed(7))
        halves = [loss(denoiser, x0[r], cond[r], torch.Generator().manual_seed(7), rows=Rows(r.start, 6))
                  for r in (slice(0, 3), slice(3, 6))]
        torch.testing.assert_close(torch.cat(halves), whole, rtol=0, atol=0)
    noise = [EDMLoss().noisy(x0[r], torch.Generator().manual_seed(7), rows=Rows(r.start, 6))[0] - x0[r]
             for r in (slice(0, 3), slice(3, 6))]
    assert not torch.allclose(noise[0], noise[1])


def test_a_two_process_run_killed_mid_training_resumes_bit_identically(tmp_path):
    total = 160
    train(tmp_path / "whole", 2, total)
    proc = train(tmp_path / "killed", 2, total, wait=False)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "killed" / "checkpoints" / "ckpt-0000000016").is_dir():
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert (tmp_path / "whole" / "rank-1").read_text().startswith("2 ")  # accelerate saw two processes
    done = json.loads((latest_checkpoint(tmp_path / "killed") / "state.json").read_text())["images_seen"]
    assert done < total, "the run finished before the kill"
    train(tmp_path / "killed", 2, total)
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    for name in whole:
        assert all(torch.equal(whole[name][k], resumed[name][k]) for k in whole[name]), name


def test_two_processes_train_the_same_model_as_one(tmp_path):
    """The README's recipe, ``torchrun --nproc_per_node 2 -m locodiff.cli train ...``, against
    the same verb in one process: same weights up to the all-reduce's float sums, same logged loss
    (the mean over both processes), one process writing the log and the report line."""
    base = ["-m", "locodiff.cli", "train", "exp1", "-p", "micro", "-s", f"out_dir={str(tmp_path)!r}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    one = subprocess.run([sys.executable, *base, "--run-dir", str(tmp_path / "one")], capture_output=True,
                         text=True, env=env, timeout=300)
    two = subprocess.run([str(TORCHRUN), "--nproc_per_node=2", f"--master_port={next(_port)}", *base,
                          "--run-dir", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run folder") == 1
    assert (tmp_path / "two" / "log.txt").read_text().count("start:") == 1
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        for key in a[name]:
            torch.testing.assert_close(b[name][key], a[name][key], rtol=0, atol=1e-3)
    loss_one = [r["loss"] for r in read_jsonl(tmp_path / "one" / "metrics.jsonl")]
    loss_two = [r["loss"] for r in read_jsonl(tmp_path / "two" / "metrics.jsonl")]
    assert len(loss_one) == len(loss_two) >= 2
    torch.testing.assert_close(torch.tensor(loss_two), torch.tensor(loss_one), rtol=1e-5, atol=0)

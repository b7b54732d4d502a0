"""Random streams: every random draw in locodiff comes from a named generator derived here.

A stream is named by the master seed, the stage and whatever makes it unique (a split and shard
index, a count k, a process rank): ``generator(seed, "eval", k)``. Its seed is a hash of that
name, so adding a stage, a process or a count cannot shift another stream's numbers, and two
different names collide only with probability ~2^-63.

Training draws up to five streams per optimizer step (``STEP_STREAMS``), each for the whole global
batch: with several processes every one draws the same numbers and keeps its own rows
(``diffusion.loss.Rows``), so the processes never share noise and the weights do not depend on
how many processes there are (before, rank 1 drew its loss noise from the scene stream). Their
seeds keep the integer layout locodiff used before streams had names, so that runs made then
still resume to bit-identical weights.
"""

from __future__ import annotations

import hashlib

import torch

from .errors import InputError

STEP_STREAMS = ("labels", "dropout", "loss", "scenes", "objects")  # drawn at every training step


def derived_seed(seed: int, stage: str, *parts: object) -> int:
    """A 63-bit seed for the stream ``locodiff-<stage>/<seed>/<part>/...``."""
    name = "/".join([f"locodiff-{stage}", str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1


def generator(seed: int, stage: str, *parts: object) -> torch.Generator:
    """The CPU generator of one named stream (see ``derived_seed``)."""
    return torch.Generator().manual_seed(derived_seed(seed, stage, *parts))


def step_generator(seed: int, step: int, stream: str) -> torch.Generator:
    """The generator of one training stream at one optimizer step (data order is a pure function
    of the step, so a resumed run draws exactly what the uninterrupted run would have). The
    streams of a step differ in the last of 16 slots per step, so none equals another."""
    if stream not in STEP_STREAMS:
        raise InputError(f"unknown training stream {stream!r}; expected one of {STEP_STREAMS}")
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 16 + STEP_STREAMS.index(stream))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's permutation of a cached training split."""
    return torch.Generator().manual_seed(seed * 7919 + epoch)

"""Named random streams: stable, distinct, and independent of one another."""

import pytest
import torch

from locodiff.errors import InputError
from locodiff.rng import STEP_STREAMS, derived_seed, epoch_generator, generator, step_generator


def first_draws(gen: torch.Generator) -> torch.Tensor:
    return torch.rand(8, generator=gen)


def test_a_stream_is_a_pure_function_of_its_name():
    assert torch.equal(first_draws(generator(3, "eval", 4)), first_draws(generator(3, "eval", 4)))
    assert derived_seed(3, "eval", 4) == derived_seed(3, "eval", "4")  # parts are named by their text
    assert derived_seed(3, "eval", 4) < 2**63


def test_different_names_give_different_streams():
    seeds = {derived_seed(s, stage, k) for s in range(3) for stage in ("eval", "data", "train") for k in range(20)}
    assert len(seeds) == 3 * 3 * 20


def test_every_training_stream_of_every_process_is_distinct():
    """Two processes share the global batch's streams but draw their own loss noise, and no
    stream of one step equals another (before, rank 1's loss noise was the scene stream)."""
    draws = {}
    for step in (0, 1, 7):
        for rank in (0, 1, 2, 3):
            for stream in STEP_STREAMS:
                draws[(step, rank, stream)] = first_draws(step_generator(5, step, stream, rank))
    for (step, rank, stream), x in draws.items():
        if stream != "loss":  # the global batch is the same on every process
            assert torch.equal(x, draws[(step, 0, stream)])
    distinct = {(step, rank if stream == "loss" else 0, stream) for step, rank, stream in draws}
    values = {tuple(draws[key].tolist()) for key in distinct}
    assert len(values) == len(distinct)


def test_process_zero_keeps_the_seed_layout_of_earlier_runs():
    """Runs made before the streams had names resume to the same weights."""
    for i, stream in enumerate(STEP_STREAMS):
        legacy = torch.Generator().manual_seed((5 * 1_000_003 + 9) * 16 + i)
        assert torch.equal(first_draws(step_generator(5, 9, stream)), first_draws(legacy))
    assert torch.equal(first_draws(epoch_generator(2, 3)), first_draws(torch.Generator().manual_seed(2 * 7919 + 3)))


def test_an_unknown_stream_is_refused():
    with pytest.raises(InputError, match="unknown training stream"):
        step_generator(0, 0, "noise")

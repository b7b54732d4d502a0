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


def test_no_training_stream_equals_another():
    """Within a step and across steps (before, rank 1's loss noise was the scene stream)."""
    draws = {(step, stream): tuple(first_draws(step_generator(5, step, stream)).tolist())
             for step in range(20) for stream in STEP_STREAMS}
    assert len(set(draws.values())) == len(draws)


def test_the_streams_keep_the_seed_layout_of_earlier_runs():
    """Runs made before the streams had names resume to the same weights."""
    for i, stream in enumerate(STEP_STREAMS):
        legacy = torch.Generator().manual_seed((5 * 1_000_003 + 9) * 16 + i)
        assert torch.equal(first_draws(step_generator(5, 9, stream)), first_draws(legacy))
    assert torch.equal(first_draws(epoch_generator(2, 3)), first_draws(torch.Generator().manual_seed(2 * 7919 + 3)))


def test_an_unknown_stream_is_refused():
    with pytest.raises(InputError, match="unknown training stream"):
        step_generator(0, 0, "noise")

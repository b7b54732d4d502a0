"""The crowding diagnostic: neighbour counts by hand, and the predicted limit on made-up scenes."""

import pytest
import torch

from locodiff.conditioning import Conditioning
from locodiff.evaluate.crowding import Crowding, crowding, neighbour_counts


def scenes(*images, size=32):
    """Conditionings from pixel coordinates, one list of (x, y) per image (padded, masked)."""
    slots = max(len(i) for i in images)
    loc = torch.zeros(len(images), slots, 2)
    mask = torch.zeros(len(images), slots, dtype=torch.bool)
    for b, points in enumerate(images):
        for j, (x, y) in enumerate(points):
            loc[b, j] = torch.tensor([x / size, y / size])
            mask[b, j] = True
    return Conditioning(loc, mask)


def test_neighbour_counts_by_hand():
    c = scenes([(5, 5), (8, 5), (20, 20)], [(1, 1)])
    counts = neighbour_counts(c.locations, c.mask, 32, radius_px=3.0)
    assert counts.tolist() == [1, 1, 0, 0]  # padding is not an object; an object is not its own neighbour
    assert neighbour_counts(c.locations, c.mask, 32, radius_px=2.9).tolist() == [0, 0, 0, 0]


def test_limit_is_the_first_k_whose_windows_leave_training():
    train = scenes(*[[(4, 4), (20, 20)]] * 50)  # training objects never have a neighbour within 5 px
    tests = {
        1: scenes([(10, 10)]),
        2: scenes([(4, 4), (24, 24)]),
        3: scenes([(4, 4), (7, 4), (24, 24)]),  # two of three objects crowded
    }
    table = crowding(train, tests, 32, radius_px=5.0)
    assert table.train_range == 0 and table.train_mean == 0.0
    assert [r.outside for r in table.rows] == [0.0, 0.0, pytest.approx(2 / 3)]
    assert table.predicted_limit_k == 3
    assert Crowding.from_dict(table.to_dict()) == table
    # a wider radius only makes test windows more crowded
    wide = crowding(train, tests, 32, radius_px=30.0)
    assert wide.train_range == 1 and wide.rows[1].mean_neighbours == 1.0

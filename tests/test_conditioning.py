import pytest
import torch

from locodiff.conditioning import Conditioning
from locodiff.errors import InputError


def test_from_lists_pads_and_masks():
    c = Conditioning.from_lists([[(0.1, 0.2)], [], [(0.5, 0.5), (0.9, 0.1), (0.3, 0.3)]])
    assert c.slots == 3
    assert c.counts().tolist() == [1, 0, 3]
    assert torch.allclose(c.locations[2, 1], torch.tensor([0.9, 0.1]))


def test_out_of_range_location_is_rejected():
    with pytest.raises(InputError, match="outside the image"):
        Conditioning.from_lists([[(1.2, 0.5)]])


def test_shape_errors_name_the_shape():
    with pytest.raises(InputError, match=r"\[batch, N, 2\]"):
        Conditioning(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="mask shape"):
        Conditioning(torch.zeros(2, 3, 2), torch.zeros(2, 4, dtype=torch.bool))


def test_drop_single_cat():
    c = Conditioning.from_lists([[(0.1, 0.2), (0.3, 0.4)], [(0.5, 0.5)]])
    assert c.drop(torch.tensor([False, True])).counts().tolist() == [0, 1]
    assert c.single(1).counts().tolist() == [1, 0]
    both = Conditioning.cat([c, Conditioning.empty(3, slots=1)])
    assert both.batch_size == 5 and both.slots == 2
    assert both.counts().tolist() == [2, 1, 0, 0, 0]

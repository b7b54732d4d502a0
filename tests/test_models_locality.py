"""Locality by construction (``local``) versus non-locality by construction (``global``)."""

import pytest
import torch

from locodiff.conditioning import Conditioning
from locodiff.models import ModelConfig, build_network, describe
from locodiff.models.config import LocalOptions

torch.set_num_threads(2)

SIZE = 20
RADIUS, SIGMA, CUTOFF = 3, 1.5, 2.0  # conditioner window = 3 + 2 * 1.5 = 6 px


def local_net() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="local", local=LocalOptions(radius=RADIUS, width=16), bump_sigma_px=SIGMA, bump_cutoff=CUTOFF
    )
    return build_network(cfg).eval()


def at_px(x_px: float, y_px: float) -> tuple[float, float]:
    """Normalised location of a point given in pixel units of the SIZE x SIZE grid."""
    return (x_px / SIZE, y_px / SIZE)


def pixel_output(net, x, c, cond, i, j):
    with torch.no_grad():
        return net(x, c, cond)[0, :, i, j]


def test_local_receptive_field_is_exactly_the_documented_square():
    net = local_net()
    x = torch.randn(1, 3, SIZE, SIZE, requires_grad=True)
    i, j = 9, 11
    out = net(x, torch.zeros(1), Conditioning.empty(1))
    (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), x)
    support = grad.abs().sum(1)[0]
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[i - RADIUS : i + RADIUS + 1, j - RADIUS : j + RADIUS + 1] = True
    assert support[inside].min() > 0, "every pixel in the window should matter"
    assert support[~inside].max() <= 1e-7 * support.max()
    assert describe(ModelConfig(arch="local", local=LocalOptions(radius=RADIUS))).receptive_field == RADIUS


def test_local_ignores_far_input_pixels_but_not_near_ones():
    net = local_net()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, SIZE, SIZE, generator=g)
    c = torch.zeros(1)
    cond = Conditioning.from_lists([[at_px(10.5, 10.5)]])
    i, j = 10, 10
    ref = pixel_output(net, x, c, cond, i, j)
    far, near = x.clone(), x.clone()
    far[0, :, i + RADIUS + 1, j] += 5.0  # just outside the window
    near[0, :, i + RADIUS, j - RADIUS] += 5.0  # the window's corner
    assert (pixel_output(net, far, c, cond, i, j) - ref).abs().max() < 1e-6
    assert (pixel_output(net, near, c, cond, i, j) - ref).abs().max() > 1e-3


def test_local_ignores_conditioners_beyond_its_window_but_not_near_ones():
    net = local_net()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    c = torch.zeros(1)
    i, j = 4, 4  # pixel centre at (4.5, 4.5) px
    window = RADIUS + CUTOFF * SIGMA
    # Move a conditioner between two spots that are both farther than the window (Chebyshev).
    a = Conditioning.from_lists([[at_px(4.5 + window + 0.3, 4.5)]])
    b = Conditioning.from_lists([[at_px(4.5 + window + 4.0, 14.0)]])
    assert (pixel_output(net, x, c, a, i, j) - pixel_output(net, x, c, b, i, j)).abs().max() < 1e-6
    # ... and its gradient there is exactly zero, while a near conditioner's is not.
    loc = a.locations.clone().requires_grad_(True)
    out = net(x, c, a.with_locations(loc))[0, :, i, j].sum()
    assert torch.autograd.grad(out, loc)[0].abs().max() == 0
    near_a = Conditioning.from_lists([[at_px(4.5 + window - 2.0, 4.5)]])
    near_b = Conditioning.from_lists([[at_px(4.5 + window - 2.5, 5.0)]])
    diff = pixel_output(net, x, c, near_a, i, j) - pixel_output(net, x, c, near_b, i, j)
    assert diff.abs().max() > 1e-4


def test_local_output_is_translation_equivariant_away_from_the_border():
    """Same weights everywhere: shifting the image and the conditioner shifts the output."""
    net = local_net()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    c = torch.zeros(1)
    cond = Conditioning.from_lists([[at_px(8.0, 9.0)]])
    shifted_cond = Conditioning.from_lists([[at_px(10.0, 9.0)]])
    shifted_x = torch.roll(x, shifts=2, dims=-1)
    with torch.no_grad():
        out = net(x, c, cond)
        out_shifted = net(shifted_x, c, shifted_cond)
    # Pixels whose window stays inside the image in both positions.
    torch.testing.assert_close(out_shifted[..., 4:16, 6:14], out[..., 4:16, 4:12], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("slot", [0, 1])
def test_global_far_pixel_depends_on_every_conditioner(slot):
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="global", image_size=16, channels=(8, 16), norm_groups=4, head_dim=8, token_dim=16
    )
    net = build_network(cfg).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    c = torch.zeros(1)
    cond = Conditioning.from_lists([[(0.9, 0.9), (0.8, 0.95)]])
    moved = cond.locations.clone()
    moved[0, slot] = torch.tensor([0.85, 0.7])
    with torch.no_grad():
        ref = net(x, c, cond)[0, :, 0, 0]  # the pixel farthest from both conditioners
        new = net(x, c, cond.with_locations(moved))[0, :, 0, 0]
    assert (new - ref).abs().max() > 1e-5

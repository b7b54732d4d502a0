"""Jacobian engine: batched engines against closed forms, a naive loop, jacrev and finite
differences, on analytic denoisers and tiny nets defined here."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from locodiff.conditioning import Conditioning
from locodiff.locality.jacobian import (
    colored_pixel_jacobian,
    conditioner_jacobian,
    conditioner_sensitivity,
    full_pixel_jacobian,
    hutchinson_mass,
    naive_pixel_jacobian,
    parameter_jacobian,
    pixel_jacobian,
)
from locodiff.errors import InputError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP oversubscription on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
D64 = torch.float64


# ----- analytic denoisers --------------------------------------------------------------------


class Blur:
    """D(x) = depthwise cross-correlation with ``kernel`` [2R+1, 2R+1], zero padding."""

    def __init__(self, kernel: torch.Tensor):
        self.kernel = kernel

    def __call__(self, x, sigma, cond):
        c = x.shape[1]
        k = self.kernel.to(x)[None, None].expand(c, 1, -1, -1)
        return F.conv2d(x, k, padding=self.kernel.shape[-1] // 2, groups=c)

    def jacobian(self, c: int, h: int, w: int) -> torch.Tensor:
        """Closed form [C, H, W, C, H, W]: J[a,r,q,b,r',q'] = delta_ab k[r'-r+R, q'-q+R]."""
        rad = self.kernel.shape[-1] // 2
        dr = torch.arange(h)[None, :] - torch.arange(h)[:, None] + rad  # [r, r']
        dq = torch.arange(w)[None, :] - torch.arange(w)[:, None] + rad
        ok_r, ok_q = (dr >= 0) & (dr <= 2 * rad), (dq >= 0) & (dq <= 2 * rad)
        ir, iq = dr.clamp(0, 2 * rad), dq.clamp(0, 2 * rad)
        vals = self.kernel[ir[:, None, :, None], iq[None, :, None, :]]
        vals = vals * (ok_r[:, None, :, None] & ok_q[None, :, None, :])  # [r, q, r', q']
        eye = torch.eye(c, dtype=vals.dtype)
        return eye[:, None, None, :, None, None] * vals[None, :, :, None, :, :]


def bump_distances(locations, h, w):
    """[B, N, H, W] pixel distances from every pixel centre to every location, and the deltas."""
    rows = torch.arange(h, dtype=locations.dtype) + 0.5
    cols = torch.arange(w, dtype=locations.dtype) + 0.5
    dx = cols[None, None, None, :] - locations[:, :, 0, None, None] * w  # pixels
    dy = rows[None, None, :, None] - locations[:, :, 1, None, None] * h
    return dx, dy, dx**2 + dy**2


class CutoffBumps:
    """D(x, c)_i = x_i * (1 + sum_k phi(|p_i - c_k|)), phi(d) = (1 - d^2/d0^2)^2 for d < d0.

    Each pixel depends only on itself and on conditioners within ``d0`` pixels: the textbook
    local conditional score, with closed-form Jacobians."""

    def __init__(self, d0: float):
        self.d0 = d0

    def phi(self, cond, h, w):
        _, _, d2 = bump_distances(cond.locations, h, w)
        u = (1 - d2 / self.d0**2).clamp_min(0)
        return (u**2 * cond.mask[:, :, None, None]).sum(1, keepdim=True)  # [B, 1, H, W]

    def __call__(self, x, sigma, cond):
        return x * (1 + self.phi(cond, *x.shape[-2:]))

    def location_jacobian(self, x, cond):
        """Closed form [B, N, 2, C, H, W] of d D / d (x_k, y_k)."""
        h, w = x.shape[-2:]
        dx, dy, d2 = bump_distances(cond.locations, h, w)
        u = (1 - d2 / self.d0**2).clamp_min(0)
        # d phi / d c_x = 2u * (-1/d0^2) * d(d2)/d c_x, and d(d2)/d c_x = -2 dx W.
        gx = 4 * u * dx * w / self.d0**2 * cond.mask[:, :, None, None]
        gy = 4 * u * dy * h / self.d0**2 * cond.mask[:, :, None, None]
        g = torch.stack([gx, gy], 2)  # [B, N, 2, H, W]
        return g[:, :, :, None] * x[:, None, None]


# ----- tiny nets -----------------------------------------------------------------------------


def bump_map(cond, h, w, width=1.0):
    """Soft location map [B, 1, H, W] (smooth everywhere, so finite differences work)."""
    _, _, d2 = bump_distances(cond.locations, h, w)
    return (torch.exp(-0.5 * d2 / width**2) * cond.mask[:, :, None, None]).sum(1, keepdim=True)


class TinyConv(nn.Module):
    """Conv net with a location-map input channel; receptive field ``layers`` pixels."""

    def __init__(self, c=3, width=8, layers=2):
        super().__init__()
        convs = [nn.Conv2d(c + 1, width, 3, padding=1)]
        convs += [nn.Conv2d(width, width, 3, padding=1) for _ in range(layers - 2)]
        convs += [nn.Conv2d(width, c, 3, padding=1)]
        self.convs = nn.ModuleList(convs)

    def forward(self, x, sigma, cond):
        h = torch.cat([x, bump_map(cond, *x.shape[-2:])], 1)
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = torch.tanh(h) * (1 + sigma.reshape(-1, 1, 1, 1))
        return h


class TinyGlobal(nn.Module):
    """Conditioning through one pooled vector (FiLM): every pixel hears every conditioner."""

    def __init__(self, c=3, width=8):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.film = nn.Linear(width, 2 * width)
        self.a = nn.Conv2d(c, width, 3, padding=1)
        self.b = nn.Conv2d(width, c, 3, padding=1)

    def forward(self, x, sigma, cond):
        loc = cond.locations * math.pi
        feats = torch.cat([loc.sin(), loc.cos()], -1)
        m = cond.mask[..., None].to(x.dtype)
        pooled = (torch.tanh(self.embed(feats)) * m).sum(1) / m.sum(1).clamp_min(1)
        scale, shift = self.film(pooled)[:, :, None, None].chunk(2, 1)
        return self.b(torch.tanh(self.a(x) * (1 + scale) + shift))


class TinyCrossAttention(nn.Module):
    """Pixels attend to location tokens with F.scaled_dot_product_attention."""

    def __init__(self, c=3, width=8):
        super().__init__()
        self.inp = nn.Conv2d(c, width, 3, padding=1)
        self.tok = nn.Linear(8, 2 * width)
        self.q = nn.Conv2d(width, width, 1)
        self.out = nn.Conv2d(width, c, 3, padding=1)

    def forward(self, x, sigma, cond):
        b, _, h, w = x.shape
        f = torch.tanh(self.inp(x))
        loc = cond.locations * math.pi
        tokens = torch.cat([loc.sin(), loc.cos(), (2 * loc).sin(), (2 * loc).cos()], -1)
        k, v = self.tok(tokens).chunk(2, -1)  # [B, N, width]
        q = self.q(f).flatten(2).transpose(1, 2)  # [B, HW, width]
        mask = cond.mask[:, None, :]  # [B, 1, N]
        a = F.scaled_dot_product_attention(
            q[:, None], k[:, None], v[:, None], attn_mask=mask[:, None]
        )
        a = a[:, 0].transpose(1, 2).reshape(b, -1, h, w)
        return self.out(f + a)


def make_cond(dtype=torch.float32):
    c = Conditioning.from_lists([[(0.25, 0.3), (0.7, 0.65)], [(0.5, 0.45), (0.2, 0.8)]])
    return Conditioning(c.locations.to(dtype), c.mask)


def rand_x(shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----- pixel Jacobians -----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["x0", "score"])
def test_blur_pixel_rows_and_full_jacobian_match_closed_form(target):
    kernel = rand_x((5, 5), seed=1, dtype=D64)
    blur, sigma = Blur(kernel), 0.7
    x = rand_x((1, 2, 9, 9), dtype=D64)
    cond = Conditioning.empty(1)
    exact = blur.jacobian(2, 9, 9)
    if target == "score":
        exact = (exact - torch.eye(2 * 81, dtype=D64).reshape(exact.shape)) / sigma**2
    full = full_pixel_jacobian(blur, x, sigma, cond, target=target, chunk_size=50)[0]
    assert torch.allclose(full, exact, atol=1e-10)
    pixels = [[0, 0], [4, 4], [8, 3], [2, 7]]
    rows = pixel_jacobian(
        blur, x, sigma, cond, pixels, target=target, channels="each", chunk_size=3
    )
    for p, (r, q) in enumerate(pixels):
        assert torch.allclose(rows[0, p], exact[:, r, q], atol=1e-10)
    summed = pixel_jacobian(blur, x, sigma, cond, pixels, target=target, channels="sum")
    assert torch.allclose(summed[0, 1], exact[:, 4, 4].sum(0), atol=1e-10)


def test_batched_rows_equal_naive_loop_on_tiny_conv_net():
    torch.manual_seed(0)
    net = TinyConv(layers=3).eval()
    x, cond = rand_x((2, 3, 10, 10)), make_cond()
    per_image = torch.tensor([[[0, 0], [5, 5], [9, 2]], [[3, 3], [9, 9], [0, 7]]])
    for channels in ("sum", "each"):
        fast = pixel_jacobian(net, x, 0.5, cond, per_image, channels=channels, chunk_size=4)
        slow = naive_pixel_jacobian(net, x, 0.5, cond, per_image, channels=channels)
        assert fast.shape == slow.shape
        assert torch.allclose(fast, slow, atol=1e-5)


def test_batch_is_block_diagonal_and_matches_one_image_at_a_time():
    torch.manual_seed(0)
    net = TinyConv().eval()
    x, cond = rand_x((2, 3, 8, 8)), make_cond()
    both = full_pixel_jacobian(net, x, 0.3, cond)
    for b in range(2):
        one = full_pixel_jacobian(net, x[b : b + 1], 0.3, cond[b])
        assert torch.allclose(both[b], one[0], atol=1e-5)
    rows = pixel_jacobian(net, x, 0.3, cond, torch.arange(64), channels="each")
    rows = rows.reshape(2, 8, 8, 3, 3, 8, 8).permute(0, 3, 1, 2, 4, 5, 6)  # pixel axis -> (H, W)
    assert torch.allclose(rows, both, atol=1e-5)


def test_colouring_equals_jacrev_and_catches_a_too_small_radius():
    torch.manual_seed(0)
    net = TinyConv(layers=3).eval()  # three 3x3 convs: receptive-field radius 3
    x, cond = rand_x((2, 3, 12, 12)), make_cond()
    exact = full_pixel_jacobian(net, x, 0.5, cond)
    colored = colored_pixel_jacobian(net, x, 0.5, cond, radius=3)
    assert torch.allclose(colored, exact, atol=1e-5)
    summed = colored_pixel_jacobian(net, x, 0.5, cond, radius=4, channels="sum")
    assert torch.allclose(summed, exact.sum(1), atol=1e-5)
    with pytest.raises(InputError, match="receptive field is larger"):
        colored_pixel_jacobian(net, x, 0.5, cond, radius=2)


def test_bad_pixel_specs_name_the_problem():
    blur, x = Blur(torch.ones(3, 3)), rand_x((1, 1, 4, 4))
    cond = Conditioning.empty(1)
    with pytest.raises(InputError, match=r"outside a 4x4 image"):
        pixel_jacobian(blur, x, 1.0, cond, [[0, 4]])
    with pytest.raises(InputError, match="integer"):
        pixel_jacobian(blur, x, 1.0, cond, torch.tensor([[0.5, 1.0]]))
    with pytest.raises(InputError, match="channels"):
        pixel_jacobian(blur, x, 1.0, cond, [0], channels="max")


# ----- conditioner Jacobians -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_conditioner_jacobian_of_cutoff_bumps_matches_closed_form(mode):
    model, sigma = CutoffBumps(d0=3.0), 0.5
    x, cond = rand_x((2, 3, 12, 10), dtype=D64), make_cond(D64)
    exact = model.location_jacobian(x, cond)
    got = conditioner_jacobian(model, x, sigma, cond, target="x0", mode=mode)
    assert torch.allclose(got, exact, atol=1e-10)
    score = conditioner_jacobian(model, x, sigma, cond, target="score", mode=mode)
    assert torch.allclose(score, exact / sigma**2, atol=1e-10)
    sens = conditioner_sensitivity(model, x, sigma, cond, target="x0", mode=mode)
    per_px = exact / torch.tensor([10.0, 12.0], dtype=D64)[None, None, :, None, None, None]
    assert torch.allclose(sens, per_px.pow(2).sum((2, 3)).sqrt(), atol=1e-10)
    _, _, d2 = bump_distances(cond.locations, 12, 10)
    assert (sens[d2 >= 9.0] == 0).all()  # nothing beyond the cutoff


@pytest.mark.parametrize("net_cls", [TinyCrossAttention, TinyGlobal, TinyConv])
def test_forward_and_reverse_conditioner_jacobians_agree(net_cls):
    torch.manual_seed(0)
    net = net_cls().eval()
    x, cond = rand_x((2, 3, 8, 8)), make_cond()
    fwd = conditioner_jacobian(net, x, 0.8, cond, mode="forward")
    rev = conditioner_jacobian(net, x, 0.8, cond, mode="reverse", chunk_size=50)
    assert fwd.abs().max() > 0
    assert torch.allclose(fwd, rev, atol=1e-5 * fwd.abs().max())


@pytest.mark.parametrize("net_cls", [TinyCrossAttention, TinyGlobal, TinyConv])
def test_conditioner_jacobian_matches_finite_differences(net_cls):
    torch.manual_seed(0)
    net = net_cls().double().eval()
    x, cond = rand_x((2, 3, 8, 8), dtype=D64), make_cond(D64)
    jac = conditioner_jacobian(net, x, 0.8, cond)  # [B, N, 2, C, H, W]
    eps = 1e-6
    sig = torch.full((2,), 0.8, dtype=D64)
    for n in range(2):
        for k in range(2):
            step = torch.zeros_like(cond.locations)
            step[:, n, k] = eps
            plus = net(x, sig, cond.with_locations(cond.locations + step))
            minus = net(x, sig, cond.with_locations(cond.locations - step))
            fd = (plus - minus) / (2 * eps) / 0.8**2  # score = (D - x) / sigma^2
            assert torch.allclose(jac[:, n, k], fd.detach(), atol=1e-6)


def test_parameter_jacobian_for_an_extra_conditioner_parameter():
    """Differentiate w.r.t. a bump width: any continuous parameter the conditioning is built
    from, not just locations."""
    x, base = rand_x((1, 1, 8, 8), dtype=D64), make_cond(D64)[0]

    def model(x, sigma, cond):
        return x * bump_map(cond, 8, 8, width=cond.width)

    def make(theta):
        c = Conditioning(base.locations, base.mask)
        c.width = theta[:, 0]
        return c

    theta = torch.tensor([[1.3]], dtype=D64)
    jac = parameter_jacobian(model, x, 1.0, make, theta, target="x0")  # [1, 1, C, H, W]
    eps = 1e-6
    fd = (model(x, None, make(theta + eps)) - model(x, None, make(theta - eps))) / (2 * eps)
    assert torch.allclose(jac[:, 0], fd, atol=1e-7)


# ----- randomized estimate -------------------------------------------------------------------


def test_hutchinson_mass_is_unbiased_and_its_error_shrinks_with_probes():
    torch.manual_seed(0)
    net = TinyConv(layers=3).double().eval()
    x, cond = rand_x((1, 3, 8, 8), dtype=D64), make_cond(D64)[:1]
    full = full_pixel_jacobian(net, x, 0.5, cond, target="x0")[0]  # [C,H,W,C,H,W]
    row_mass = full.pow(2).sum((3, 4, 5))  # [C, H, W]
    col_mass = full.pow(2).sum((0, 1, 2))
    errors = {}
    for k in (16, 256):
        est = hutchinson_mass(net, x, 0.5, cond, k, torch.Generator().manual_seed(1), target="x0")
        rel = (est.mass[0] - row_mass).abs() / row_mass
        errors[k] = rel.mean().item()
        if k == 256:  # with enough probes the reported standard error is honest
            z = (est.mass[0] - row_mass).abs() / est.stderr[0]
            assert (z < 4).float().mean() > 0.98
    assert errors[256] < 0.08
    assert errors[256] < errors[16] / 2.5  # ~ 1/sqrt(k): factor 4 expected
    col = hutchinson_mass(net, x, 0.5, cond, 256, torch.Generator().manual_seed(2), target="x0",
                          axis="input")
    assert ((col.mass[0] - col_mass).abs() / col_mass).mean() < 0.08

"""Jacobians of a denoiser's output w.r.t. its input pixels and its conditioners.

Everything here works on any ``Denoiser`` callable ``(x [B,C,H,W], sigma [B], cond) -> x0_hat``.
The differentiated *target* is either the score ``(D(x) - x) / sigma^2`` (``target="score"``) or
the x0-prediction ``D(x)`` (``target="x0"``); they differ by ``-I / sigma^2`` on the diagonal and
by the scale ``1 / sigma^2``.

Conventions
-----------
* A batch of images is differentiated in one pass with the *block-diagonal trick*: image ``b``'s
  output depends only on image ``b``'s input (true for any network in eval mode — no batch norm
  statistics, no cross-image attention), so one cotangent holding a one-hot in *every* image gives
  every image's Jacobian row at once. Shapes therefore always carry a leading batch axis ``B``.
* Output pixels are given as ``[P]`` flat indices (``row * W + col``), ``[P, 2]`` ``(row, col)``
  pairs shared by all images, or ``[B, P, 2]`` pairs per image.
* ``channels="sum"`` differentiates the sum over output channels at a pixel (one VJP per pixel);
  ``channels="each"`` keeps one row per output channel (``C_out`` VJPs per pixel).
* All transforms run with PyTorch's *math* attention kernel: the fused CPU kernel has no
  forward-mode derivative and no batching rule for its backward (vmap would fall back to a slow
  per-row loop). Results are detached from the model's parameters (analysis, not training).
* Put models in ``eval()`` mode: dropout inside ``vmap`` is an error, and batch statistics would
  break the block-diagonal trick.

Engines
-------
* ``pixel_jacobian``: rows of chosen output pixels; ``torch.func.vjp`` once, then the backward pass
  vmapped over one-hot cotangents in chunks of ``chunk_size`` rows (memory ~ chunk x activations).
* ``full_pixel_jacobian``: every row, with ``torch.func.jacrev(chunk_size=...)``.
* ``colored_pixel_jacobian``: the exact full Jacobian of a model with a known receptive-field
  radius ``R`` from ``(2R+1)^2`` VJPs per output channel (graph colouring of output pixels).
* ``conditioner_jacobian`` / ``parameter_jacobian``: derivatives w.r.t. conditioner locations (or
  any tensor the conditioning is built from) — forward mode by default, since there are few
  inputs (2N) and many outputs (C*H*W); reverse mode is there to cross-check and for comparison.
* ``hutchinson_mass``: a randomized estimate of every output pixel's squared Jacobian row norm
  (or every input pixel's column norm) from a few random JVPs/VJPs, for models too big for rows.
* ``naive_pixel_jacobian``: a plain Python loop of ``autograd.grad`` calls, the reference that
  tests and benchmarks compare the batched engines against. Do not use it for real work.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
from torch import Tensor
from torch.func import jacrev, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..conditioning import Conditioning
from ..denoiser import Denoiser, as_sigma_batch
from ..errors import InputError

Target = Literal["score", "x0"]
Channels = Literal["sum", "each"]
Mode = Literal["forward", "reverse"]


# ----- small helpers -------------------------------------------------------------------------


@contextlib.contextmanager
def transform_context() -> Iterator[None]:
    """Context under which every Jacobian transform runs.

    Math attention (see the module doc), and ``no_grad`` for the *outer* autograd level: the
    ``torch.func`` transforms still differentiate w.r.t. their inputs, but no graph back to the
    model's parameters is kept, so results are plain tensors and chunks free their memory.
    """
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad(), warnings.catch_warnings():
        # PyTorch's own forward-mode decompositions still call torch.jit.script on first use.
        warnings.filterwarnings("ignore", r".*torch\.jit\.script.*deprecated", DeprecationWarning)
        yield


def as_image_batch(x: Tensor) -> Tensor:
    """Accept [C,H,W] or [B,C,H,W]; return [B,C,H,W], detached."""
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise InputError(f"x must have shape [C,H,W] or [B,C,H,W], got {tuple(x.shape)}")
    return x.detach()


def _check_target(target: str) -> None:
    if target not in ("score", "x0"):
        raise InputError(f"target={target!r}: expected 'score' or 'x0'")


def _check_channels(channels: str) -> None:
    if channels not in ("sum", "each"):
        raise InputError(f"channels={channels!r}: expected 'sum' or 'each'")


def target_fn(
    denoiser: Denoiser, sigma: Tensor | float, cond: Conditioning, target: Target = "score"
) -> Callable[[Tensor], Tensor]:
    """``x -> target(x)`` with sigma and the conditioning held fixed."""
    _check_target(target)

    def f(x: Tensor) -> Tensor:
        s = as_sigma_batch(sigma, x)
        d = denoiser(x, s, cond)
        return d if target == "x0" else (d - x) / s.reshape(-1, 1, 1, 1) ** 2

    return f


def cond_target_fn(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    make_cond: Callable[[Tensor], Conditioning],
    target: Target = "score",
) -> Callable[[Tensor], Tensor]:
    """``theta -> target(x; make_cond(theta))`` with the image held fixed."""
    _check_target(target)
    s = as_sigma_batch(sigma, x)

    def g(theta: Tensor) -> Tensor:
        d = denoiser(x, s, make_cond(theta))
        return d if target == "x0" else (d - x) / s.reshape(-1, 1, 1, 1) ** 2

    return g


def flat_pixel_index(pixels, batch: int, height: int, width: int) -> Tensor:
    """Normalise pixel specs to flat indices ``[B, P]`` (``row * W + col``), checking the range."""
    p = torch.as_tensor(pixels)
    if p.dtype.is_floating_point:
        raise InputError(f"pixels must be integer indices, got dtype {p.dtype}")
    p = p.long()
    if p.ndim == 1:  # [P] flat
        flat = p[None].expand(batch, -1)
    elif p.ndim == 2 and p.shape[1] == 2:  # [P, 2] (row, col)
        flat = _rows_cols_to_flat(p, height, width)[None].expand(batch, -1)
    elif p.ndim == 3 and p.shape[0] == batch and p.shape[2] == 2:  # [B, P, 2]
        flat = _rows_cols_to_flat(p, height, width)
    else:
        raise InputError(
            f"pixels of shape {tuple(p.shape)}: expected [P] flat indices, [P, 2] (row, col) "
            f"or [B={batch}, P, 2]"
        )
    if flat.numel() and (flat.min() < 0 or flat.max() >= height * width):
        raise InputError(f"pixel index out of range for a {height}x{width} image")
    return flat


def _rows_cols_to_flat(p: Tensor, height: int, width: int) -> Tensor:
    rows, cols = p[..., 0], p[..., 1]
    outside = (rows < 0) | (rows >= height) | (cols < 0) | (cols >= width)
    if outside.any():
        bad = p.reshape(-1, 2)[outside.reshape(-1)][0].tolist()
        raise InputError(f"pixel (row, col)={bad} outside a {height}x{width} image")
    return rows * width + cols


def _chunks(n: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    if chunk_size < 1:
        raise InputError(f"chunk_size={chunk_size}: expected >= 1")
    for start in range(0, n, chunk_size):
        yield start, min(start + chunk_size, n)


def batched_vjp(
    vjp_fn: Callable, n_rows: int, make_cotangents: Callable[[int, int], Tensor], chunk_size: int
) -> Tensor:
    """Stack ``vjp_fn(cot)`` for ``n_rows`` cotangents, built and vmapped ``chunk_size`` at a time.

    Building cotangents per chunk keeps memory at one chunk of cotangents plus one chunk of
    backward activations, whatever ``n_rows`` is.
    """
    pieces = [vmap(vjp_fn)(make_cotangents(a, b))[0] for a, b in _chunks(n_rows, chunk_size)]
    return torch.cat(pieces)


def batched_jvp(
    g: Callable[[Tensor], Tensor],
    primal: Tensor,
    n_dirs: int,
    make_tangents: Callable[[int, int], Tensor],
    chunk_size: int,
) -> Tensor:
    """Stack the JVPs of ``g`` at ``primal`` along ``n_dirs`` tangents, vmapped in chunks."""

    def push(t: Tensor) -> Tensor:
        return jvp(g, (primal,), (t,))[1]

    return torch.cat([vmap(push)(make_tangents(a, b)) for a, b in _chunks(n_dirs, chunk_size)])


# ----- pixel Jacobians -----------------------------------------------------------------------


def pixel_jacobian(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    pixels,
    *,
    target: Target = "score",
    channels: Channels = "sum",
    chunk_size: int = 64,
) -> Tensor:
    """Jacobian rows of the chosen output pixels w.r.t. every input pixel.

    Returns ``[B, P, C_in, H, W]`` for ``channels="sum"`` and ``[B, P, C_out, C_in, H, W]`` for
    ``channels="each"``. Cost: one forward pass, then ``P`` (or ``P * C_out``) backward passes
    vmapped ``chunk_size`` at a time.
    """
    _check_channels(channels)
    x = as_image_batch(x)
    b, _, h, w = x.shape
    flat = flat_pixel_index(pixels, b, h, w)  # [B, P]
    n_pix = flat.shape[1]
    if n_pix == 0:
        raise InputError("pixels is empty: expected at least one output pixel")
    with transform_context():
        out, vjp_fn = vjp(target_fn(denoiser, sigma, cond, target), x)
        c_out = out.shape[1]
        per_pixel = c_out if channels == "each" else 1
        make = pixel_cotangent_maker(flat, out.shape, channels, out.dtype)
        rows = batched_vjp(vjp_fn, n_pix * per_pixel, make, chunk_size)  # [rows, B, C, H, W]
    if channels == "each":
        rows = rows.reshape(n_pix, c_out, *rows.shape[1:]).permute(2, 0, 1, 3, 4, 5)
    else:
        rows = rows.permute(1, 0, 2, 3, 4)
    return rows.contiguous()


def pixel_cotangent_maker(flat: Tensor, out_shape, channels: str, dtype) -> Callable:
    """Cotangents for rows ``a..b``: one-hots at each image's pixel (all channels or one)."""
    b, c_out, h, w = out_shape
    hw = h * w

    def make(start: int, stop: int) -> Tensor:
        r = torch.arange(start, stop, device=flat.device)
        cot = torch.zeros(stop - start, b, c_out * hw, dtype=dtype, device=flat.device)
        if channels == "each":
            pix = flat[:, r // c_out].T  # [K, B]
            idx = ((r % c_out)[:, None] * hw + pix)[..., None]
        else:
            pix = flat[:, r].T  # [K, B]
            idx = torch.arange(c_out, device=flat.device) * hw + pix[..., None]  # [K, B, C]
        cot.scatter_(2, idx, 1.0)
        return cot.reshape(stop - start, b, c_out, h, w)

    return make


def full_pixel_jacobian(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    *,
    target: Target = "score",
    chunk_size: int | None = 64,
) -> Tensor:
    """The whole pixel Jacobian ``[B, C_out, H, W, C_in, H, W]`` via ``jacrev``.

    ``jacrev`` differentiates the *batch sum* of the output (block-diagonal trick), so a batch
    costs the same number of backward passes as one image.
    """
    x = as_image_batch(x)
    f = target_fn(denoiser, sigma, cond, target)
    with transform_context():
        jac = jacrev(lambda z: f(z).sum(0), chunk_size=chunk_size)(x)  # [Co,H,W,B,C,H,W]
    return jac.permute(3, 0, 1, 2, 4, 5, 6).contiguous()


def naive_pixel_jacobian(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    pixels,
    *,
    target: Target = "score",
    channels: Channels = "sum",
) -> Tensor:
    """Reference implementation: one ``autograd.grad`` call per row in a Python loop.

    Same output shape as ``pixel_jacobian``; kept only to test and benchmark the batched engine.
    """
    _check_channels(channels)
    x = as_image_batch(x).clone().requires_grad_(True)
    b, _, h, w = x.shape
    flat = flat_pixel_index(pixels, b, h, w)
    with torch.enable_grad():
        out = target_fn(denoiser, sigma, cond, target)(x)
        out_flat = out.flatten(2)  # [B, Co, HW]
        batch_idx = torch.arange(b)
        rows = []
        for p in range(flat.shape[1]):
            picked = out_flat[batch_idx, :, flat[:, p]]  # [B, Co]
            targets = [picked.sum()] if channels == "sum" else list(picked.sum(0))
            for t in targets:
                (g,) = torch.autograd.grad(t, x, retain_graph=True)
                rows.append(g)
    stacked = torch.stack(rows, 1)  # [B, P * k, C, H, W]
    if channels == "each":
        return stacked.reshape(b, flat.shape[1], out.shape[1], *x.shape[1:])
    return stacked


COLOUR_CHUNK = 64  # colour VJPs per batched pass of colored_pixel_jacobian


def colored_pixel_jacobian(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    radius: int,
    *,
    target: Target = "score",
    channels: Channels = "each",
    check_tol: float | None = 1e-4,
) -> Tensor:
    """Exact full pixel Jacobian of a model whose output pixel depends only on inputs within
    Chebyshev distance ``radius`` (e.g. a stack of convolutions without down-sampling).

    Output pixels on a grid with spacing ``s = 2 * radius + 1`` have disjoint input windows, so
    one VJP whose cotangent is the indicator of the whole grid returns every grid pixel's row,
    side by side; cutting it along the windows un-mixes them. ``s^2`` VJPs (per output channel
    with ``channels="each"``) replace ``H * W``.

    Unless ``check_tol`` is None the centre pixel's row is recomputed with its own VJP and compared: a
    model whose receptive field is larger than ``radius`` raises ``InputError`` instead of
    returning a silently wrong Jacobian. Returns ``[B, C_out, H, W, C_in, H, W]`` (``"each"``) or
    ``[B, H, W, C_in, H, W]`` (``"sum"``).
    """
    _check_channels(channels)
    if radius < 0 or int(radius) != radius:
        raise InputError(f"radius={radius}: expected a non-negative integer (pixels)")
    radius = int(radius)
    x = as_image_batch(x)
    b, c_in, h, w = x.shape
    colour, n_colours = _grid_colouring(h, w, 2 * radius + 1, x.device)
    with transform_context():
        out, vjp_fn = vjp(target_fn(denoiser, sigma, cond, target), x)
        c_out = out.shape[1] if channels == "each" else 1
        make = _colour_cotangent_maker(colour, n_colours, out.shape, channels, out.dtype)
        mixed = batched_vjp(vjp_fn, n_colours * c_out, make, COLOUR_CHUNK)  # [K*Co, B, C, H, W]
    mixed = mixed.reshape(n_colours, c_out, b, c_in, h, w)
    window = _chebyshev_windows(h, w, radius, x.device).to(mixed.dtype)  # [HW, H, W]
    full = mixed[colour] * window[:, None, None, None]  # [HW, Co, B, C, H, W]
    full = full.permute(2, 1, 0, 3, 4, 5).reshape(b, c_out, h, w, c_in, h, w)
    if check_tol is not None:
        r, c = x.shape[-2] // 2, x.shape[-1] // 2
        exact = pixel_jacobian(denoiser, x, sigma, cond, [[r, c]], target=target, channels=channels)
        exact = exact[:, 0] if channels == "each" else exact[:, 0, None]  # [B, Co, C, H, W]
        _check_colouring(full[:, :, r, c], exact, (r, c), check_tol, radius)
    return full if channels == "each" else full[:, 0]


def _grid_colouring(h: int, w: int, spacing: int, device) -> tuple[Tensor, int]:
    """Colour of every pixel (flat [HW]) so that same-coloured pixels are >= ``spacing`` apart."""
    sr, sc = min(spacing, h), min(spacing, w)
    rows = torch.arange(h, device=device) % sr
    cols = torch.arange(w, device=device) % sc
    return (rows[:, None] * sc + cols[None, :]).reshape(-1), sr * sc


def _colour_cotangent_maker(colour: Tensor, n_colours: int, out_shape, channels: str, dtype):
    b, c_out, h, w = out_shape
    per = c_out if channels == "each" else 1

    def make(start: int, stop: int) -> Tensor:
        r = torch.arange(start, stop, device=colour.device)
        k, ch = r // per, r % per
        pix = (colour[None, :] == k[:, None]).to(dtype).reshape(-1, 1, h, w)  # [K, 1, H, W]
        if channels == "each":
            sel = (torch.arange(c_out, device=colour.device)[None] == ch[:, None]).to(dtype)
            cot = pix * sel[:, :, None, None]  # [K, Co, H, W]
        else:
            cot = pix.expand(-1, c_out, h, w)
        return cot[:, None].expand(-1, b, -1, -1, -1).contiguous()

    return make


def _chebyshev_windows(h: int, w: int, radius: int, device) -> Tensor:
    """``[HW, H, W]`` boolean: input pixel within Chebyshev distance ``radius`` of output pixel."""
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    near_r = (rows[:, None] - rows[None, :]).abs() <= radius  # [H_out, H_in]
    near_c = (cols[:, None] - cols[None, :]).abs() <= radius  # [W_out, W_in]
    return (near_r[:, None, :, None] & near_c[None, :, None, :]).reshape(h * w, h, w)


def _check_colouring(got: Tensor, exact: Tensor, pixel: tuple[int, int], tol: float, radius: int) -> None:
    """The coloured Jacobian's row at ``pixel`` against the exact one."""
    r, c = pixel
    scale = exact.abs().max().clamp_min(torch.finfo(exact.dtype).tiny)
    err = (got - exact).abs().max()
    if err > tol * scale:
        raise InputError(
            f"colouring with radius={radius} does not reproduce pixel ({r}, {c}) (relative error "
            f"{float(err / scale):.2e}): the model's receptive field is larger than {radius} pixels"
        )


# ----- conditioner Jacobians -----------------------------------------------------------------


def parameter_jacobian(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    make_cond: Callable[[Tensor], Conditioning],
    theta: Tensor,
    *,
    target: Target = "score",
    mode: Mode = "forward",
    chunk_size: int = 64,
) -> Tensor:
    """Derivative of every output entry w.r.t. every entry of ``theta`` (``[B, ...]``), where
    the conditioning is ``make_cond(theta)`` — locations, or any continuous conditioner parameter.

    Returns ``[B, *theta.shape[1:], C_out, H, W]``. Forward mode pushes one tangent per entry of
    one image's ``theta`` (shared by all images: block-diagonal trick); reverse mode pulls back one
    cotangent per output entry (``C_out * H * W`` of them) and exists to cross-check and compare.
    """
    x = as_image_batch(x)
    theta = theta.detach()
    if theta.shape[0] != x.shape[0]:
        raise InputError(
            f"theta has batch {theta.shape[0]} but x has batch {x.shape[0]}; expected equal"
        )
    g = cond_target_fn(denoiser, x, sigma, make_cond, target)
    with transform_context():
        if mode == "forward":
            return _forward_parameter_jacobian(g, theta, chunk_size)
        if mode == "reverse":
            return _reverse_parameter_jacobian(g, theta, chunk_size)
    raise InputError(f"mode={mode!r}: expected 'forward' or 'reverse'")


def _forward_parameter_jacobian(g: Callable[[Tensor], Tensor], theta: Tensor, chunk_size: int) -> Tensor:
    """One tangent per entry of one image's ``theta``, shared by all images (block-diagonal)."""
    param_shape = theta.shape[1:]
    n_in = param_shape.numel()
    eye = torch.eye(n_in, dtype=theta.dtype, device=theta.device)

    def tangents(a: int, b: int) -> Tensor:
        t = eye[a:b].reshape(b - a, 1, *param_shape)
        return t.expand(-1, theta.shape[0], *param_shape).contiguous()

    jac = batched_jvp(g, theta, n_in, tangents, chunk_size)  # [n_in, B, Co, H, W]
    jac = jac.reshape(*param_shape, *jac.shape[1:])
    return jac.movedim(len(param_shape), 0).contiguous()


def _reverse_parameter_jacobian(g: Callable[[Tensor], Tensor], theta: Tensor, chunk_size: int) -> Tensor:
    """One cotangent per output entry of one image, shared by all images."""
    out, vjp_fn = vjp(g, theta)
    n_out = out[0].numel()
    eye_out = torch.eye(n_out, dtype=out.dtype, device=out.device)

    def cotangents(a: int, b: int) -> Tensor:
        c = eye_out[a:b].reshape(b - a, 1, *out.shape[1:])
        return c.expand(-1, out.shape[0], *out.shape[1:]).contiguous()

    jac = batched_vjp(vjp_fn, n_out, cotangents, chunk_size)  # [n_out, B, *param]
    jac = jac.reshape(*out.shape[1:], *jac.shape[1:])  # [Co, H, W, B, *param]
    return jac.movedim(3, 0).movedim((1, 2, 3), (-3, -2, -1)).contiguous()


def conditioner_jacobian(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    *,
    target: Target = "score",
    mode: Mode = "forward",
    chunk_size: int = 64,
) -> Tensor:
    """``[B, N, 2, C_out, H, W]``: derivative of each output entry w.r.t. each conditioner's
    ``(x, y)`` location in normalised image coordinates. Padded slots are differentiated too (a
    well-behaved model gives zeros there); statistics ignore them through the mask."""
    return parameter_jacobian(
        denoiser, x, sigma, cond.with_locations, cond.locations,
        target=target, mode=mode, chunk_size=chunk_size,
    )


def conditioner_sensitivity(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    *,
    target: Target = "score",
    mode: Mode = "forward",
    chunk_size: int = 64,
) -> Tensor:
    """Sensitivity maps ``[B, N, H, W]``: ``|d out_i / d c_j|``, the Frobenius norm over the two
    location coordinates and the output channels, *per pixel of displacement* (so that maps of
    non-square images weigh both axes alike). Zero for padded slots."""
    x = as_image_batch(x)
    jac = conditioner_jacobian(
        denoiser, x, sigma, cond, target=target, mode=mode, chunk_size=chunk_size
    )
    return sensitivity_from_jacobian(jac, cond.mask)


def presence_effect(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    *,
    target: Target = "score",
) -> Tensor:
    """Removal maps ``[B, N, H, W]``: ``|out(x; c) - out(x; c without c_j)|``, the norm over output
    channels, i.e. what conditioner j's *presence* changes at each pixel (zero for padded slots).

    The location Jacobian only sees what moving j changes; a network can be local under small
    moves and still change every pixel when j is there at all (through how many conditioners
    there are, say), which is what composing more conditioners than training had exposes. One
    forward pass per slot, no gradients."""
    x = as_image_batch(x)
    b, n = cond.batch_size, cond.slots
    maps = x.new_zeros(b, n, *x.shape[-2:])
    with torch.no_grad():
        full = target_fn(denoiser, sigma, cond, target)(x)
        for j in range(n):
            present = cond.mask[:, j]
            if not present.any():
                continue
            others = torch.ones_like(cond.mask)
            others[:, j] = False
            without = target_fn(denoiser, sigma, cond.keep_slots(others), target)(x)
            maps[:, j] = (full - without).float().norm(dim=1) * present[:, None, None]
    return maps


def sensitivity_from_jacobian(jac: Tensor, mask: Tensor) -> Tensor:
    """Reduce ``[B, N, 2, C, H, W]`` location Jacobians to ``[B, N, H, W]`` per-pixel norms."""
    h, w = jac.shape[-2:]
    per_px = torch.tensor([1.0 / w, 1.0 / h], dtype=jac.dtype, device=jac.device)
    jac = jac * per_px[None, None, :, None, None, None]
    sens = jac.pow(2).sum((2, 3)).sqrt()
    return sens * mask[:, :, None, None].to(sens.dtype)


# ----- randomized estimate -------------------------------------------------------------------


@dataclass
class MassEstimate:
    """Randomized estimate of squared Jacobian row (or column) norms, with its standard error."""

    mass: Tensor  # [B, C, H, W]
    stderr: Tensor  # [B, C, H, W], std over probes / sqrt(n_probes)
    n_probes: int


HUTCHINSON_CHUNK = 16  # probes per batched pass of hutchinson_mass


def hutchinson_mass(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Conditioning,
    n_probes: int,
    generator: torch.Generator,
    *,
    target: Target = "score",
    axis: Literal["output", "input"] = "output",
) -> MassEstimate:
    """Estimate ``sum_j J_ij^2`` for every output entry ``i`` (``axis="output"``, via JVPs) or
    ``sum_i J_ij^2`` for every input entry ``j`` (``axis="input"``, via VJPs).

    With Rademacher probes ``v`` (independent +-1 entries), ``E[(J v)_i^2] = sum_j J_ij^2``: each
    probe costs one forward-mode pass and gives an unbiased sample for *all* pixels at once, with
    relative error about ``sqrt(2 (1 - sum_j J_ij^4 / (sum_j J_ij^2)^2) / n_probes)`` — small when
    a row's mass is spread, zero when it sits on one entry. Use it where rows are too expensive.
    Probes run ``HUTCHINSON_CHUNK`` at a time.
    """
    chunk_size = HUTCHINSON_CHUNK
    if n_probes < 1:
        raise InputError(f"n_probes={n_probes}: expected >= 1")
    x = as_image_batch(x)
    f = target_fn(denoiser, sigma, cond, target)
    with transform_context():
        if axis == "output":
            probes = _rademacher((n_probes, *x.shape), generator, x.dtype)
            samples = batched_jvp(f, x, n_probes, lambda a, b: probes[a:b], chunk_size)
        elif axis == "input":
            out, vjp_fn = vjp(f, x)
            probes = _rademacher((n_probes, *out.shape), generator, out.dtype)
            samples = batched_vjp(vjp_fn, n_probes, lambda a, b: probes[a:b], chunk_size)
        else:
            raise InputError(f"axis={axis!r}: expected 'output' or 'input'")
    sq = samples.pow(2)
    stderr = sq.std(0) / n_probes**0.5 if n_probes > 1 else torch.full_like(sq[0], float("nan"))
    return MassEstimate(sq.mean(0), stderr, n_probes)


def _rademacher(shape, generator: torch.Generator, dtype) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (2 * bits - 1).to(dtype)

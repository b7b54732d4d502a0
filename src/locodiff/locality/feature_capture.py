"""The feature-space engine, for any torch network: capture block outputs, compare condition
means, and differentiate internal features w.r.t. conditioner inputs. The experiments run with it
on a trained model (concept directions per block, feature locality) are ``feature_space``.

The paper's feature-space test asks whether a network's learned features compose the way pixels
do in a projective composition: if condition ``i`` shifts the mean feature by ``d_i = mu_i - mu_b``
(relative to a background ``b``), the shifts of different conditions should be near-orthogonal,
so the cosine matrix of the ``d_i`` is close to the identity (block structure where conditions
share a region). Locality can also be measured *inside* the network: the Jacobian of one block's
output w.r.t. each conditioner tells which feature pixels a conditioner reaches.

Nothing here knows about a particular architecture: blocks are addressed by the names of
``model.named_modules()`` (``"encoder.1.0"`` in locodiff's UNet, ``"down_blocks.1"`` or
``"mid_block"`` in a diffusers UNet), and the conditioner is any tensor ``theta [B, K, ...]``
(``K`` conditioners or prompt tokens, each a vector) that a user-supplied ``call(theta)`` feeds
to the network. Jacobians use the batched engines of ``locality.jacobian`` (vmapped VJPs/JVPs,
chunked, block-diagonal over the batch, math attention kernel).
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import vjp

from ..errors import InputError
from .jacobian import (
    pixel_cotangent_maker,
    batched_jvp,
    batched_vjp,
    flat_pixel_index,
    transform_context,
)

SensitivityMode = Literal["auto", "forward", "reverse", "sampled"]
Channels = Literal["each", "sum"]
# Cost of one vmapped JVP in units of one vmapped VJP, for mode="auto". Measured on CPU (fp32):
# 1.6-2.5x on a tiny SDXL-shaped diffusers UNet (benchmarks/sdxl_probe.py), ~2x on locodiff's.
JVP_COST = 2.0


# ----- capturing block outputs ---------------------------------------------------------------


def block_names(model: nn.Module, max_depth: int | None = None) -> list[str]:
    """Names of ``model``'s sub-modules (dotted paths), optionally only up to ``max_depth`` dots."""
    names = [n for n, _ in model.named_modules() if n]
    if max_depth is not None:
        names = [n for n in names if n.count(".") <= max_depth]
    return names


def resolve_blocks(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Look up sub-modules by name; an unknown name raises ``InputError`` listing the options."""
    if isinstance(names, str):
        names = [names]
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for name in names:
        if name not in modules or not name:
            raise InputError(_unknown_block_message(model, name, modules))
        found[name] = modules[name]
    return found


def _unknown_block_message(model: nn.Module, name: str, modules: Mapping[str, nn.Module]) -> str:
    all_names = [n for n in modules if n]
    close = difflib.get_close_matches(name, all_names, n=5, cutoff=0.6)
    shallow = block_names(model, max_depth=1)
    msg = f"no block named {name!r} in {type(model).__name__}"
    if close:
        msg += f"; closest: {', '.join(close)}"
    shown = ", ".join(shallow[:60]) + (", ..." if len(shallow) > 60 else "")
    return (
        f"{msg}. Available blocks (depth <= 1; {len(all_names)} names in all, see "
        f"dict(model.named_modules())): {shown}"
    )


def first_tensor(output: Any) -> Tensor:
    """The feature tensor of a block's output: the tensor itself, the first tensor of a tuple or
    list (a diffusers down block returns ``(hidden, skips)``), a ``.sample`` attribute, or the
    first tensor value of a dict."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            with contextlib.suppress(InputError):
                return first_tensor(item)
    elif isinstance(output, Mapping):
        for item in output.values():
            with contextlib.suppress(InputError):
                return first_tensor(item)
    elif isinstance(getattr(output, "sample", None), Tensor):
        return output.sample
    raise InputError(f"block output of type {type(output).__name__} holds no tensor")


@contextlib.contextmanager
def capture_features(
    model: nn.Module, names: Sequence[str] | str, *, detach: bool = True
) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the named blocks while the ``with`` body runs the model.

    Yields a dict that fills in as blocks run: ``name -> output`` of that block's most recent
    call (``first_tensor`` of it). Hooks are removed on exit, also after an error. ``detach``
    keeps stored features out of any autograd graph (set False to differentiate through them).
    """
    blocks = resolve_blocks(model, names)
    store: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            feat = first_tensor(output)
            store[name] = feat.detach() if detach else feat

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in blocks.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


class _StopForward(Exception):
    """Raised from a hook to skip the rest of a forward pass once the wanted block has run."""


def feature_fn(
    model: nn.Module, block: str, call: Callable[[Tensor], Any]
) -> Callable[[Tensor], Tensor]:
    """``theta -> output of block`` when ``call(theta)`` runs ``model``.

    The forward pass stops right after the block (the layers behind it cost nothing), so the
    function is as cheap as the network up to that block. Works under ``torch.func`` transforms,
    so ``feature_jacobian`` / ``input_sensitivity`` can differentiate it.
    """
    module = resolve_blocks(model, [block])[block]

    def f(theta: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            captured.append(first_tensor(output))
            raise _StopForward

        handle = module.register_forward_hook(hook)
        try:
            call(theta)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise InputError(f"block {block!r} did not run while calling the model")
        return captured[0]

    return f


def replaced_block_fn(
    model: nn.Module, source: str, target: str, call: Callable[[], Any], *, update: bool = False
) -> Callable[[Tensor], Tensor]:
    """``theta -> output of target`` when block ``source`` outputs ``theta`` instead of what it
    computed: the function whose Jacobian says which features of ``source`` a ``target``
    feature depends on. ``call()`` runs the model; the forward pass stops after ``target``.

    ``update=True`` returns ``output - theta``, what ``target`` adds to its input when it
    directly follows ``source`` as a residual block (the skip path's identity Jacobian would
    otherwise hide how far the block itself mixes features)."""
    module = resolve_blocks(model, [source])[source]

    def f(theta: Tensor) -> Tensor:
        def swap(mod: nn.Module, args: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor) or output.shape != theta.shape:
                raise InputError(f"block {source!r} must output one tensor of shape {tuple(theta.shape)} "
                                   "to be replaced")
            return theta

        handle = module.register_forward_hook(swap)
        try:
            out = feature_fn(model, target, lambda _: call())(theta)
        finally:
            handle.remove()
        if update and out.shape != theta.shape:
            raise InputError(f"update=True needs {target!r} to keep the shape of {source!r}'s output: "
                               f"{tuple(out.shape)} vs {tuple(theta.shape)}")
        return out - theta if update else out

    return f


def block_pixel_sensitivity(
    fn: Callable[[Tensor], Tensor], theta: Tensor, pixels, *, probes: int = 4,
    generator: torch.Generator | None = None, chunk_size: int = 32,
) -> Tensor:
    """How strongly each probed output pixel depends on each input pixel of a feature map:
    ``[B, P, Hin, Win]``, the norm over input channels of ``d fn(theta)[b, :, p] / d theta[b]``
    with the output channels folded by ``probes`` random projections (Hutchinson, unbiased in
    the squared norm). ``fn`` maps ``theta [B, Cin, Hin, Win]`` to ``[B, C, H, W]``; ``pixels``
    as in ``pixel_jacobian`` (at the output's resolution)."""
    theta = _check_theta(theta, min_dims=3)
    if probes < 1:
        raise InputError(f"probes={probes}: expected at least one random projection per pixel")
    with transform_context():
        out, vjp_fn = vjp(fn, theta)
        b, c_out, h, w = _output_shape(out)
        flat = flat_pixel_index(pixels, b, h, w).to(out.device)  # [B, P]
        n_pix = flat.shape[1]
        n_rows = n_pix * probes
        noise = torch.randn(n_rows, b, c_out, generator=generator, dtype=torch.float32).to(out)

        def cotangents(a: int, z: int) -> Tensor:
            cot = torch.zeros(z - a, b, c_out, h * w, dtype=out.dtype, device=out.device)
            rows = torch.arange(a, z, device=out.device)
            where = flat[:, rows // probes].T  # [n, B]
            cot.scatter_(3, where[:, :, None, None].expand(-1, -1, c_out, 1), noise[a:z, :, :, None])
            return cot.reshape(z - a, b, c_out, h, w)

        acc = torch.zeros(n_pix, b, *theta.shape[2:], dtype=_acc_dtype(out.dtype), device=out.device)
        for a in range(0, n_rows, chunk_size):
            z = min(a + chunk_size, n_rows)
            rows = batched_vjp(vjp_fn, z - a, lambda i, j: cotangents(a + i, a + j), chunk_size)
            acc.index_add_(0, torch.arange(a, z, device=out.device) // probes, rows.to(acc.dtype).pow(2).sum(2))
    return (acc / probes).sqrt().transpose(0, 1).contiguous()


# ----- mean differences ----------------------------------------------------------------------


def mean_difference_vectors(
    features_by_condition: Mapping[str, Tensor] | Sequence[Tensor], background_features: Tensor
) -> Tensor:
    """``[K, F]``: ``d_i = mu_i - mu_b``, the mean feature under condition ``i`` (samples along
    dim 0, everything else flattened) minus the mean under the background. Rows follow the
    mapping's (or sequence's) order."""
    items = (
        list(features_by_condition.items())
        if isinstance(features_by_condition, Mapping)
        else list(enumerate(features_by_condition))
    )
    if not items:
        raise InputError("features_by_condition is empty: expected at least one condition")
    mu_b = _sample_mean(background_features, "background")
    rows = []
    for key, feats in items:
        mu = _sample_mean(feats, f"condition {key!r}")
        if mu.shape != mu_b.shape:
            raise InputError(
                f"condition {key!r} has {mu.numel()} features per sample but the background "
                f"has {mu_b.numel()}; expected the same block and resolution"
            )
        rows.append(mu - mu_b)
    return torch.stack(rows)


def _sample_mean(feats: Tensor, what: str) -> Tensor:
    if feats.ndim < 1 or feats.shape[0] == 0:
        raise InputError(
            f"{what} features have shape {tuple(feats.shape)}: expected [samples, ...] "
            "with at least one sample"
        )
    return feats.detach().double().reshape(feats.shape[0], -1).mean(0)


def cosine_matrix(vectors: Tensor) -> Tensor:
    """``[K, K]`` cosine similarities of the rows of ``vectors [K, F]``. A zero row has no
    direction: its row and column are NaN rather than a made-up number."""
    if vectors.ndim != 2:
        raise InputError(f"vectors must have shape [K, F], got {tuple(vectors.shape)}")
    v = vectors.double()
    norms = v.norm(dim=1)
    unit = v / norms[:, None]
    cos = (unit @ unit.T).clamp(-1.0, 1.0)
    zero = norms == 0
    cos[zero, :] = float("nan")
    cos[:, zero] = float("nan")
    return cos


# ----- Jacobians w.r.t. conditioner inputs ---------------------------------------------------


def feature_jacobian(
    fn: Callable[[Tensor], Tensor],
    theta: Tensor,
    *,
    mode: Literal["forward", "reverse"] = "forward",
    chunk_size: int = 32,
) -> Tensor:
    """Full Jacobian of ``fn(theta)`` (``[B, *out]``) w.r.t. ``theta`` (``[B, *in]``), one image
    at a time through the block-diagonal trick: returns ``[B, *in, *out]``.

    Forward mode costs one JVP per entry of ``theta[0]``, reverse mode one VJP per entry of the
    output; use it for small inputs or small feature maps, and ``input_sensitivity`` otherwise.
    """
    theta = _check_theta(theta, min_dims=1)
    b, in_shape = theta.shape[0], theta.shape[1:]
    with transform_context():
        if mode == "forward":
            n_in = in_shape.numel()
            eye = torch.eye(n_in, dtype=theta.dtype, device=theta.device)

            def tangents(a: int, c: int) -> Tensor:
                return eye[a:c].reshape(c - a, 1, *in_shape).expand(-1, b, *in_shape).contiguous()

            jac = batched_jvp(fn, theta, n_in, tangents, chunk_size)  # [n_in, B, *out]
            jac = jac.reshape(*in_shape, *jac.shape[1:])
            return jac.movedim(len(in_shape), 0).contiguous()
        if mode == "reverse":
            out, vjp_fn = vjp(fn, theta)
            out_shape = out.shape[1:]
            n_out = out_shape.numel()
            eye_out = torch.eye(n_out, dtype=out.dtype, device=out.device)

            def cotangents(a: int, c: int) -> Tensor:
                e = eye_out[a:c].reshape(c - a, 1, *out_shape)
                return e.expand(-1, b, *out_shape).contiguous()

            jac = batched_vjp(vjp_fn, n_out, cotangents, chunk_size)  # [n_out, B, *in]
            jac = jac.reshape(*out_shape, b, *in_shape).movedim(len(out_shape), 0)
            # [B, *out, *in] -> [B, *in, *out]
            k_out, k_in = len(out_shape), len(in_shape)
            order = [0, *range(1 + k_out, 1 + k_out + k_in), *range(1, 1 + k_out)]
            return jac.permute(order).contiguous()
    raise InputError(f"mode={mode!r}: expected 'forward' or 'reverse'")


@dataclass(frozen=True)
class Sensitivity:
    """How ``input_sensitivity`` computes its map (see there): the engine (``mode``), per output
    channel or of their sum, passes per chunk, random tangents per conditioner (``sampled``) and
    conditioner groups measured jointly (``sampled`` only)."""

    mode: SensitivityMode = "auto"
    channels: Channels = "each"
    chunk_size: int = 32
    probes: int = 1
    groups: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.channels not in ("each", "sum"):
            raise InputError(f"channels={self.channels!r}: expected 'each' or 'sum'")
        if self.groups is not None and self.mode != "sampled":
            raise InputError("groups are measured by mode='sampled' only")
        if self.mode not in ("auto", "forward", "reverse", "sampled"):
            raise InputError(f"mode={self.mode!r}: expected 'auto', 'forward', 'reverse' or 'sampled'")


def input_sensitivity(fn: Callable[[Tensor], Tensor], theta: Tensor, pixels=None, how: Sensitivity = Sensitivity(),
                      generator: torch.Generator | None = None) -> Tensor:
    """How strongly each conditioner moves each output pixel: ``|d fn(theta)[b, :, i] /
    d theta[b, k]|``, the Frobenius norm over the conditioner's vector (``theta[b, k, ...]``) and
    the output channels (``channels="each"``; ``"sum"`` takes the gradient of the channel sum).

    ``fn`` maps ``theta [B, K, ...]`` to ``[B, C, H, W]`` (denoiser output or a feature map).
    Returns ``[B, K, H, W]`` for every pixel (``pixels=None``) or ``[B, K, P]`` for the given
    pixels (``[P]`` flat, ``[P, 2]`` or ``[B, P, 2]`` (row, col), as in ``pixel_jacobian``).

    Cost, and the mode ``"auto"`` picks (the cheaper one, counting a JVP as ``JVP_COST`` VJPs;
    it runs one extra forward pass to learn the output shape):
    - forward: one JVP per scalar of a conditioner, ``K * prod(theta.shape[2:])`` of them, and
      every output pixel at once: cheap for few, short conditioners (locations: ``2K``);
    - reverse: one VJP per probed pixel (times ``C`` for ``"each"``), each giving the gradient
      w.r.t. all ``K`` conditioners: the only option for long token embeddings (SDXL: 77 tokens
      x 2048 dims = 158k JVPs, versus 4 VJPs per probed latent pixel);
    - sampled (never picked by "auto"): an unbiased estimate of the forward result from
      ``probes`` random Gaussian tangents per conditioner (Hutchinson: ``E|J v|^2 = |J|_F^2``),
      ``K * probes`` JVPs for every output pixel at once, whatever the conditioner's length. The
      squared map's relative error per pixel is about ``sqrt(2 / (probes * C))`` for ``C``
      output channels; maps averaged over pixels or images are much tighter. ``groups`` (lists
      of conditioner indices) measures each group jointly — its map is the root of the sum of
      its members' squared maps — for ``len(groups) * probes`` JVPs: e.g. a prompt's padding
      tokens as one group beside its real tokens one by one. Returns ``[B, G, ...]`` then.
    Memory stays bounded: squared entries are accumulated chunk by chunk (``chunk_size`` passes
    at a time), never the whole Jacobian.
    """
    theta = _check_theta(theta, min_dims=2)
    b, k = theta.shape[:2]
    mode, channels, chunk_size, probes = how.mode, how.channels, how.chunk_size, how.probes
    with transform_context():
        if mode == "auto":
            mode = _cheaper_mode(fn, theta, pixels, channels)
        if mode == "reverse":
            return _reverse_sensitivity(fn, theta, pixels, channels, chunk_size)
        if mode == "forward":
            sens = _forward_sensitivity(fn, theta, channels, chunk_size)  # [B, K, H, W]
        elif mode == "sampled":
            member = _group_matrix(how.groups, k, theta.device)
            sens = _sampled_sensitivity(fn, theta, channels, chunk_size, probes, generator, member)  # [B, G, H, W]
    if pixels is None:
        return sens
    flat = flat_pixel_index(pixels, b, *sens.shape[-2:]).to(sens.device)  # [B, P]
    return sens.flatten(2).gather(2, flat[:, None, :].expand(-1, sens.shape[1], -1))


def _cheaper_mode(fn, theta: Tensor, pixels, channels: str) -> str:
    """Forward or reverse, whichever needs fewer passes (a JVP counted as ``JVP_COST`` VJPs)."""
    out_shape = _output_shape(fn(theta))
    n_pix = out_shape[2] * out_shape[3] if pixels is None else _count_pixels(pixels, theta.shape[0])
    n_rev = n_pix * (out_shape[1] if channels == "each" else 1)
    return "forward" if JVP_COST * theta.shape[1] * theta.shape[2:].numel() <= n_rev else "reverse"


def _forward_sensitivity(fn, theta: Tensor, channels: str, chunk_size: int) -> Tensor:
    """Sum of squared JVPs per conditioner group, accumulated chunk by chunk -> [B, K, H, W]."""
    b, k = theta.shape[:2]
    per_group = theta.shape[2:].numel()
    n_dirs = k * per_group
    group_of = torch.arange(n_dirs, device=theta.device) // per_group

    def tangents(a: int, c: int) -> Tensor:
        t = torch.zeros(c - a, b, n_dirs, dtype=theta.dtype, device=theta.device)
        t[torch.arange(c - a), :, torch.arange(a, c)] = 1.0
        return t.reshape(c - a, *theta.shape)

    return _summed_jvp_squares(fn, theta, tangents, group_of, k, channels, chunk_size).sqrt()


def _summed_jvp_squares(fn, theta: Tensor, tangents, group_of: Tensor, k: int, channels: str,
                        chunk_size: int) -> Tensor:
    """Squared JVPs along ``len(group_of)`` tangents, summed per group (``group_of[i]`` for
    tangent ``i``), chunk by chunk so that memory stays bounded -> [B, K, H, W]."""
    acc: Tensor | None = None
    n_dirs = len(group_of)
    for a in range(0, n_dirs, chunk_size):
        c = min(a + chunk_size, n_dirs)
        jv = batched_jvp(fn, theta, c - a, lambda i, j: tangents(a + i, a + j), chunk_size)
        _output_shape(jv[0])
        jv = jv.to(_acc_dtype(jv.dtype))
        sq = jv.pow(2).sum(2) if channels == "each" else jv.sum(2).pow(2)
        if acc is None:
            acc = sq.new_zeros(k, *sq.shape[1:])  # [K, B, H, W]
        acc.index_add_(0, group_of[a:c], sq)
    assert acc is not None
    return acc.transpose(0, 1).contiguous()


def _group_matrix(groups: Sequence[Sequence[int]] | None, k: int, device) -> Tensor:
    """[G, K] 0/1 membership of conditioners in groups (default: every conditioner alone)."""
    if groups is None:
        return torch.eye(k, device=device)
    if len(groups) == 0:
        raise InputError("groups is empty: expected at least one group of conditioners")
    member = torch.zeros(len(groups), k, device=device)
    for g, items in enumerate(groups):
        if len(items) == 0 or min(items) < 0 or max(items) >= k:
            raise InputError(f"groups[{g}]={list(items)}: expected a non-empty list of indices in 0..{k - 1}")
        member[g, list(items)] = 1.0
    return member


def _sampled_sensitivity(fn, theta: Tensor, channels: str, chunk_size: int, probes: int,
                         generator: torch.Generator | None, member: Tensor) -> Tensor:
    """Hutchinson estimate of ``_forward_sensitivity``: ``probes`` Gaussian tangents per group
    of conditioners (``member [G, K]``), each on that group's values only -> [B, G, H, W]."""
    if probes < 1:
        raise InputError(f"probes={probes}: expected at least one random tangent per conditioner")
    k = member.shape[0]  # groups
    n_dirs = k * probes
    group_of = torch.arange(n_dirs, device=theta.device) // probes
    noise = torch.randn(n_dirs, *theta.shape, generator=generator, dtype=torch.float32)
    noise = noise.to(device=theta.device, dtype=theta.dtype)
    shape = (1, theta.shape[1]) + (1,) * (theta.ndim - 2)

    def tangents(a: int, c: int) -> Tensor:
        mask = member[group_of[a:c]].to(theta.dtype).reshape(c - a, *shape)  # [n, 1, K, 1...]
        return noise[a:c] * mask

    return (_summed_jvp_squares(fn, theta, tangents, group_of, k, channels, chunk_size) / probes).sqrt()


def _reverse_sensitivity(fn, theta: Tensor, pixels, channels: str, chunk_size: int) -> Tensor:
    """Squared VJP rows per probed pixel, accumulated chunk by chunk -> [B, K, P] (or H, W)."""
    b, k = theta.shape[:2]
    out, vjp_fn = vjp(fn, theta)
    _, c_out, h, w = _output_shape(out)
    all_pixels = pixels is None
    flat = flat_pixel_index(torch.arange(h * w) if all_pixels else pixels, b, h, w)
    flat = flat.to(out.device)
    n_pix = flat.shape[1]
    if n_pix == 0:
        raise InputError("pixels is empty: expected at least one output pixel")
    per_pixel = c_out if channels == "each" else 1
    n_rows = n_pix * per_pixel
    make = pixel_cotangent_maker(flat, out.shape, channels, out.dtype)
    pixel_of = torch.arange(n_rows, device=out.device) // per_pixel
    acc = torch.zeros(n_pix, b, k, dtype=_acc_dtype(out.dtype), device=out.device)
    for a in range(0, n_rows, chunk_size):
        c = min(a + chunk_size, n_rows)
        rows = batched_vjp(vjp_fn, c - a, lambda i, j: make(a + i, a + j), chunk_size)
        acc.index_add_(0, pixel_of[a:c], rows.to(acc.dtype).pow(2).flatten(3).sum(-1))
    sens = acc.sqrt().permute(1, 2, 0).contiguous()  # [B, K, P]
    return sens.reshape(b, k, h, w) if all_pixels else sens


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums of squares in float32 at least (bf16/fp16 rows would lose the small entries)."""
    return torch.promote_types(dtype, torch.float32)


def _check_theta(theta: Tensor, min_dims: int) -> Tensor:
    if not isinstance(theta, Tensor) or theta.ndim < min_dims + 1:
        shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
        want = "[B, K, ...] (batch, conditioners, values)" if min_dims >= 2 else "[B, ...]"
        raise InputError(f"conditioner input has shape {shape}: expected {want}")
    if not theta.dtype.is_floating_point:
        raise InputError(f"conditioner input has dtype {theta.dtype}: expected floating point")
    return theta.detach()


def _output_shape(out: Tensor) -> torch.Size:
    if out.ndim != 4:
        raise InputError(
            f"differentiated output has shape {tuple(out.shape)}: expected a [B, C, H, W] map "
            "(pick a block whose output is an image-shaped feature map)"
        )
    return out.shape


def _count_pixels(pixels, batch: int) -> int:
    p = torch.as_tensor(pixels)
    return p.shape[0] if p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 2) else p.shape[-2]

"""A training-free local conditional score (LCS) machine: a closed-form, conditioned patch denoiser.

Why it exists
-------------
Kamb & Ganguli's local score (LS) and equivariant local score (ELS) machines are denoisers built
only from the training set: every output pixel is the posterior mean of its own small patch,
with the posterior taken over all training patches. They predict what trained convolutional
models output. This module adds the conditioners, so that the machine is a *local conditional
score by construction*: output pixel ``i`` depends only on the ``P x P`` window of ``x`` around
``i`` and on the conditioners inside that window. It is the reference for "what a perfectly local
conditional model would do": trained models can be compared with it (``r2_against``), its patch
size can be fitted to them (``calibrate_patch_schedule``), and it can be sampled like any
``Denoiser`` to see whether locality alone composes scenes with more objects than training had.

The rule, for output pixel ``i`` at noise level ``sigma`` (``P = patch_size(sigma)``, odd)
------------------------------------------------------------------------------------------
1. *Query*: the ``P x P`` patch of the noisy image centred on ``i``, and its *nearby
   conditioners*: requested locations ``l`` (pixel units, ``l = (x * W, y * H)``) with
   ``max(|l_x - p_x|, |l_y - p_y|) <= P / 2 + margin_px`` where ``p`` is the centre of pixel
   ``i``; each is kept as its patch-relative offset ``d = l - p``. The margin lets an object whose
   centre lies just outside the window, but whose pixels reach into it, count as nearby.
2. *Candidates*: the ``P x P`` patches of the training images, centred on every pixel
   (``locality_radius=None``: the equivariant ELS variant, patches may come from anywhere) or
   only on pixels within Chebyshev distance ``r`` of ``i`` (``locality_radius=r``: the LS
   variant, which knows absolute position; ``r=0`` means the same pixel), each with the nearby
   conditioners of its own training image, relative to its own centre.
3. *Compatibility*: a candidate is compatible when it has the same number of nearby conditioners
   as the query and every nearby conditioner, of either side, has one of the other side's within
   ``tolerance_px`` (Euclidean, pixels). When conditioners are more than ``2 * tolerance_px``
   apart this is a one-to-one matching. With ``bandwidth_px`` set, compatible candidates are also
   weighted by ``exp(-cost / (2 bandwidth_px^2))``, where ``cost`` is the symmetric Chamfer cost
   ``(sum_q min_t |d_q - d_t|^2 + sum_t min_q |d_q - d_t|^2) / 2`` (the optimal matching cost
   whenever the matching is unambiguous); use ``tolerance_px=inf`` for a purely soft match.
4. *Posterior mean*: ``w_t ~ compatible_t * exp(-|x_patch - y_t|^2 / (2 sigma^2))``, normalised
   with a running log-sum-exp; the output pixel is ``sum_t w_t * centre(y_t)``.
5. *Fallback*: a query with no compatible candidate (e.g. more nearby conditioners than any
   training patch ever had) gets the unconditional patch posterior (step 4 over all
   candidates); ``fallback_pixels`` counts these (``fallback="error"`` raises instead).

Borders: both the query and the training images are zero-padded (0 = mid grey in [-1, 1]), i.e.
the image is framed by a known, noiseless grey border. With the ELS variant this lets border
queries prefer border candidates, the same position cue that zero padding gives a CNN.

Only locations are matched: attributes (colour, shape, ...) are ignored; requiring equal
attributes in step 3 would be the natural extension.

Locality is exact: conditioners enter only through the nearby sets of step 1 and pixels only
through the window, so a conditioner farther than ``P / 2 + margin_px`` from pixel ``i``, or a
pixel outside the window, has no effect on output ``i`` at all (not merely a small one).

Cost: ELS compares every query patch with every training patch, ``B*H*W x N*H*W`` pairs, grouped
by nearby-conditioner count (pairs with different counts are never computed); LS compares with
``N (2r+1)^2`` candidates per pixel. Distances use the matmul expansion
``|x|^2 - 2 x.y + |y|^2``, in chunks of ``query_chunk`` query pixels by ``train_chunk`` training
patches, so memory stays bounded whatever ``N`` is. The expansion costs precision: in float32 a
log-weight is off by about ``1e-7 * (|x|^2 + |y|^2) / (2 sigma^2)`` nats (~1e-3 in the output at
sigma 0.5 on 5x5 colour patches; more at lower noise), so pass ``dtype=torch.float64`` where
exact weights matter (about twice the time).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conditioning import Conditioning
from ..denoiser import Denoiser, as_sigma_batch
from ..errors import ConfigError, InputError
from ..scenes.conditioners import batch_conditioning
from ..scenes.dataset import to_model_batch

Fallback = Literal["unconditional", "error"]


# ----- patch-size schedules ------------------------------------------------------------------


@dataclass(frozen=True)
class PatchSchedule:
    """Odd patch side per noise level: the size listed for the nearest ``sigmas`` entry, nearest
    measured in log sigma (noise levels are spread geometrically, so this is the natural metric)."""

    sigmas: tuple[float, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        sigmas, sizes = tuple(float(s) for s in self.sigmas), tuple(self.sizes)
        if not sigmas or len(sigmas) != len(sizes):
            raise ConfigError(
                f"a patch schedule needs one size per sigma, got {len(sigmas)} sigmas and "
                f"{len(sizes)} sizes"
            )
        for s in sigmas:
            if not (s > 0 and math.isfinite(s)):
                raise ConfigError(f"schedule sigma {s}: expected a finite noise level > 0")
        for p in sizes:
            _check_size(p)
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "sizes", tuple(int(p) for p in sizes))

    def __call__(self, sigma: float) -> int:
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ConfigError(f"sigma={sigma}: a patch size is defined for finite sigma > 0 only")
        log_s = math.log(sigma)
        nearest = min(range(len(self.sigmas)), key=lambda k: abs(math.log(self.sigmas[k]) - log_s))
        return self.sizes[nearest]

    @classmethod
    def constant(cls, size: int) -> "PatchSchedule":
        return cls((1.0,), (size,))

    @classmethod
    def log_linear(
        cls, min_size: int, max_size: int, sigma_low: float = 0.05, sigma_high: float = 5.0,
        levels: int = 12,
    ) -> "PatchSchedule":
        """Sizes growing linearly in log sigma from ``min_size`` (at and below ``sigma_low``) to
        ``max_size`` (at and above ``sigma_high``): small windows where detail is decided, large
        ones where only the layout is, as Kamb & Ganguli's calibrations show."""
        _check_size(min_size)
        _check_size(max_size)
        if not 0 < sigma_low < sigma_high or levels < 2:
            raise ConfigError(
                f"expected 0 < sigma_low < sigma_high and levels >= 2, got sigma_low={sigma_low}, "
                f"sigma_high={sigma_high}, levels={levels}"
            )
        sigmas = torch.logspace(math.log10(sigma_low), math.log10(sigma_high), levels).tolist()
        frac = [k / (levels - 1) for k in range(levels)]
        sizes = [_round_odd(min_size + f * (max_size - min_size)) for f in frac]
        return cls(tuple(sigmas), tuple(sizes))


PatchSize = Union[int, PatchSchedule, Callable[[float], int]]


def default_patch_schedule(image_size: int) -> PatchSchedule:
    """3 px at low noise up to the largest odd size that fits the image at high noise."""
    largest = image_size if image_size % 2 else image_size - 1
    return PatchSchedule.log_linear(min(3, largest), largest)


def _round_odd(value: float) -> int:
    return 2 * int(round((value - 1) / 2)) + 1


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ConfigError(f"patch size {size!r}: expected an odd integer >= 1 (pixels)")


# ----- the machine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LCSOptions:
    """How the machine matches patches and conditioners, and how it computes."""

    locality_radius: int | None = None  # None: ELS (any position); r: LS (within r px)
    margin_px: float = 1.0  # conditioners this far outside the window still count as nearby
    tolerance_px: float = 1.0  # matched conditioners may differ by this much (pixels)
    bandwidth_px: float | None = None  # soft kernel on the matched offsets; None = hard only
    fallback: Fallback = "unconditional"  # what a pixel with no compatible patch gets
    query_chunk: int = 1024  # query pixels per block
    train_chunk: int = 8192  # training patches per block
    dtype: torch.dtype | None = None  # compute dtype; None = x's (at least float32)

    def __post_init__(self) -> None:
        r = self.locality_radius
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
            raise ConfigError(f"locality_radius={r!r}: expected None (equivariant) or an integer >= 0 (pixels)")
        if not self.margin_px >= 0:
            raise ConfigError(f"margin_px={self.margin_px}: expected >= 0 pixels")
        if not self.tolerance_px > 0:
            raise ConfigError(f"tolerance_px={self.tolerance_px}: expected > 0 pixels (inf allowed)")
        if self.bandwidth_px is not None and not (self.bandwidth_px > 0 and math.isfinite(self.bandwidth_px)):
            raise ConfigError(f"bandwidth_px={self.bandwidth_px}: expected None or a finite value > 0")
        if self.fallback not in ("unconditional", "error"):
            raise ConfigError(f"fallback={self.fallback!r}: expected 'unconditional' or 'error'")
        for name in ("query_chunk", "train_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: expected an integer >= 1")
        if self.dtype is not None and not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise ConfigError(f"dtype={self.dtype!r}: expected None or a floating torch.dtype")
        object.__setattr__(self, "margin_px", float(self.margin_px))
        object.__setattr__(self, "tolerance_px", float(self.tolerance_px))


def _check_training_set(images: Tensor, conditioning: Conditioning) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError(f"training images must be a float tensor [N, C, H, W], got {shape}")
    if images.shape[0] == 0:
        raise ConfigError("the training set is empty: the machine needs at least one image")
    if not torch.isfinite(images).all():
        raise ConfigError("training images contain NaN or infinite values")
    if not isinstance(conditioning, Conditioning):
        raise ConfigError(f"conditioning must be a Conditioning, got {type(conditioning)}")
    if conditioning.batch_size != images.shape[0]:
        raise ConfigError(
            f"conditioning has {conditioning.batch_size} rows but there are "
            f"{images.shape[0]} training images; give one row per image"
        )
    conditioning.validate()


class LCSMachine(nn.Module):
    """The local conditional score machine over a training set (see the module doc).

    ``images``: [N, C, H, W] in [-1, 1]; ``conditioning``: their conditioners (batch N).
    ``patch_size``: an odd int, a ``PatchSchedule`` or ``f(sigma) -> odd int``; None = the
    default log-linear schedule for the image size.
    Counters: ``query_pixels`` (output pixels computed) and ``fallback_pixels`` (of those, the
    ones that had no compatible patch); ``reset_counts()`` zeroes both.
    """

    def __init__(self, images: Tensor, conditioning: Conditioning, patch_size: PatchSize | None = None,
                 **options) -> None:
        """``options``: the fields of ``LCSOptions`` (radius, tolerances, fallback, chunks, dtype)."""
        super().__init__()
        _check_training_set(images, conditioning)
        opts = LCSOptions(**options)
        self.register_buffer("images", images.detach().float().contiguous())
        self.register_buffer("locations", conditioning.locations.detach().float())
        self.register_buffer("mask", conditioning.mask.detach().bool())
        h, w = images.shape[-2:]
        if patch_size is None:
            patch_size = default_patch_schedule(min(h, w))
        if isinstance(patch_size, int) and not isinstance(patch_size, bool):
            patch_size = PatchSchedule.constant(patch_size)
        if isinstance(patch_size, PatchSchedule):
            for p in patch_size.sizes:
                self._check_fits(p)
        elif not callable(patch_size):
            raise ConfigError(
                f"patch_size must be an odd int, a PatchSchedule or a function of sigma, got "
                f"{patch_size!r}"
            )
        self.patch_size = patch_size
        for f in dataclasses.fields(opts):
            setattr(self, f.name, getattr(opts, f.name))
        self.reset_counts()

    # ----- construction helpers -------------------------------------------------------------
    @classmethod
    def from_dataset(
        cls, dataset, policy: str = "all", max_images: int | None = None,
        generator: torch.Generator | None = None, **options,
    ) -> "LCSMachine":
        """A machine over (the first ``max_images`` of) a ``SceneDataset``, conditioned as the
        model it is compared with was trained: ``policy`` "all" or "one" (see
        ``scenes.conditioners``)."""

        index = dataset.index if max_images is None else dataset.index[:max_images]
        batch = to_model_batch({k: v[index] for k, v in dataset.tensors.items()})
        return cls(batch["images"], batch_conditioning(batch, policy, generator), **options)

    def with_patch_size(self, patch_size: PatchSize) -> "LCSMachine":
        """The same machine (same training tensors, shared, and options) with another size."""
        return LCSMachine(
            self.images, Conditioning(self.locations, self.mask), patch_size,
            locality_radius=self.locality_radius, margin_px=self.margin_px,
            tolerance_px=self.tolerance_px, bandwidth_px=self.bandwidth_px,
            fallback=self.fallback, query_chunk=self.query_chunk, train_chunk=self.train_chunk,
            dtype=self.dtype,
        )

    def reset_counts(self) -> None:
        self.query_pixels = 0
        self.fallback_pixels = 0

    @property
    def fallback_rate(self) -> float:
        """Share of computed output pixels that fell back to the unconditional posterior."""
        return self.fallback_pixels / max(self.query_pixels, 1)

    def size_for(self, sigma: float) -> int:
        """The patch side used at noise level ``sigma``."""
        size = self.patch_size(sigma)
        _check_size(size)
        self._check_fits(size)
        return size

    def _check_fits(self, size: int) -> None:
        h, w = self.images.shape[-2:]
        if size > min(h, w):
            raise ConfigError(f"patch size {size} is larger than the {h}x{w} training images")

    # ----- the denoiser ---------------------------------------------------------------------
    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        self._check_inputs(x, cond)
        sigma = as_sigma_batch(sigma, x)
        if not (torch.isfinite(sigma).all() and (sigma > 0).all()):
            raise InputError(
                f"sigma must be finite and > 0 (the posterior is undefined at 0), got "
                f"{sigma.tolist()}"
            )
        sizes = torch.tensor([self.size_for(float(s)) for s in sigma])
        if (sizes == sizes[0]).all():  # the usual case: one noise level per batch
            return self._denoise(x, sigma, cond, int(sizes[0])).to(x.dtype)
        out = torch.zeros_like(x)
        for size in sizes.unique().tolist():
            idx = (sizes == size).nonzero()[:, 0].to(x.device)
            part = self._denoise(x[idx], sigma[idx], cond[idx], size)
            out = out.index_copy(0, idx, part.to(x.dtype))
        return out

    def _check_inputs(self, x: Tensor, cond: Conditioning) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(f"x must have shape [B, C, H, W], got {shape}")
        if tuple(x.shape[1:]) != tuple(self.images.shape[1:]):
            raise InputError(
                f"x has images of shape {tuple(x.shape[1:])} but the training set has "
                f"{tuple(self.images.shape[1:])}"
            )
        if not isinstance(cond, Conditioning):
            raise InputError(f"cond must be a Conditioning, got {type(cond).__name__}")
        if cond.batch_size != x.shape[0]:
            raise InputError(
                f"conditioning has batch size {cond.batch_size} but x has {x.shape[0]} images"
            )

    def _denoise(self, x: Tensor, sigma: Tensor, cond: Conditioning, size: int) -> Tensor:
        """Posterior-mean image for a batch that shares one patch size."""
        b, c, h, w = x.shape
        dtype = self.dtype or torch.promote_types(x.dtype, torch.float32)
        patches = F.unfold(x.to(dtype), size, padding=size // 2).transpose(1, 2)  # [B, HW, D]
        offsets, counts = _nearby(
            cond.locations.to(dtype), cond.mask, _pixel_centres(h, w, x.device, dtype), (h, w),
            size / 2 + self.margin_px,
        )
        q = _Queries(
            patches=patches.reshape(b * h * w, -1),
            inv_two_var=(0.5 / sigma.to(dtype) ** 2).repeat_interleave(h * w),
            pos=torch.arange(h * w, device=x.device).repeat(b),
            offsets=offsets.reshape(b * h * w, *offsets.shape[2:]),
            counts=counts.reshape(-1),
        )
        post = self._posterior(q, size, use_cond=True)
        values = post.mean()
        missing = (~post.found()).nonzero()[:, 0]
        self.query_pixels += q.patches.shape[0]
        self.fallback_pixels += int(missing.numel())
        if missing.numel():
            if self.fallback == "error":
                raise InputError(
                    f"{missing.numel()} of {q.patches.shape[0]} output pixels have no training "
                    f"patch with matching nearby conditioners (patch size {size}); raise "
                    "tolerance_px, lower margin_px, or use fallback='unconditional'"
                )
            values = values.index_copy(
                0, missing, self._posterior(q.subset(missing), size, use_cond=False).mean()
            )
        return values.reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)

    def _posterior(self, q: "_Queries", size: int, use_cond: bool) -> "_Posterior":
        if self.locality_radius is None:
            return self._posterior_equivariant(q, size, use_cond)
        return self._posterior_local(q, size, use_cond)

    def _posterior_equivariant(self, q: "_Queries", size: int, use_cond: bool) -> "_Posterior":
        """ELS: every query against training patches at every position, chunk by chunk."""
        n, c, h, w = self.images.shape
        dtype = q.patches.dtype
        post = _Posterior(q.patches.shape[0], c, q.patches)
        centres = _pixel_centres(h, w, q.patches.device, dtype)
        per_chunk = max(1, self.train_chunk // (h * w))
        for n0 in range(0, n, per_chunk):
            imgs = self.images[n0 : n0 + per_chunk].to(dtype)
            patches = F.unfold(imgs, size, padding=size // 2).transpose(1, 2)  # [n, HW, D]
            offsets, counts = _nearby(
                self.locations[n0 : n0 + per_chunk].to(dtype), self.mask[n0 : n0 + per_chunk],
                centres, (h, w), size / 2 + self.margin_px,
            )
            cand = _Candidates.build(
                patches.reshape(-1, patches.shape[-1]),
                imgs.flatten(2).transpose(1, 2).reshape(-1, c),
                offsets.reshape(-1, *offsets.shape[2:]),
                counts.reshape(-1) if use_cond else None,
            )
            for a in range(0, q.patches.shape[0], self.query_chunk):
                rows = torch.arange(a, min(a + self.query_chunk, q.patches.shape[0]),
                                    device=q.patches.device)
                self._add_block(post, q, rows, cand, use_cond)
        return post

    def _posterior_local(self, q: "_Queries", size: int, use_cond: bool) -> "_Posterior":
        """LS: queries at pixel i against training patches centred within ``r`` px of i."""
        n, c, h, w = self.images.shape
        r, half = self.locality_radius, size // 2
        dtype = q.patches.dtype
        post = _Posterior(q.patches.shape[0], c, q.patches)
        padded = F.pad(self.images.to(dtype), (half, half, half, half))
        for pos in q.pos.unique().tolist():
            rows = (q.pos == pos).nonzero()[:, 0]
            row, col = divmod(pos, w)
            near = [
                (i, j)
                for i in range(max(0, row - r), min(h, row + r + 1))
                for j in range(max(0, col - r), min(w, col + r + 1))
            ]
            centres = torch.tensor(
                [(j + 0.5, i + 0.5) for i, j in near], dtype=dtype, device=padded.device
            )
            per_chunk = max(1, self.train_chunk // len(near))
            for n0 in range(0, n, per_chunk):
                imgs = padded[n0 : n0 + per_chunk]
                patches = torch.stack(
                    [imgs[:, :, i : i + size, j : j + size].flatten(1) for i, j in near], 1
                )  # [n, npos, D]
                centre_px = torch.stack([imgs[:, :, i + half, j + half] for i, j in near], 1)
                offsets, counts = _nearby(
                    self.locations[n0 : n0 + per_chunk].to(dtype),
                    self.mask[n0 : n0 + per_chunk], centres, (h, w), size / 2 + self.margin_px,
                )
                cand = _Candidates.build(
                    patches.reshape(-1, patches.shape[-1]), centre_px.reshape(-1, c),
                    offsets.reshape(-1, *offsets.shape[2:]),
                    counts.reshape(-1) if use_cond else None,
                )
                self._add_block(post, q, rows, cand, use_cond)
        return post

    def _add_block(
        self, post: "_Posterior", q: "_Queries", rows: Tensor, cand: "_Candidates", use_cond: bool
    ) -> None:
        """Fold one block of (query rows x candidates) into the running posterior, one group of
        equal nearby-conditioner counts at a time (other pairs are incompatible anyway)."""
        q_counts = q.counts[rows] if use_cond else torch.zeros_like(rows)
        for count, group in cand.groups.items():
            sel = rows[q_counts == count]
            if sel.numel() == 0:
                continue
            # -|x - y|^2 / (2 s^2) up to a per-query constant (which the softmax ignores), as ONE
            # matmul of augmented vectors: [2 x / (2 s^2), -1 / (2 s^2)] . [y, |y|^2]
            inv = q.inv_two_var[sel, None]
            logits = torch.cat([q.patches[sel] * (2 * inv), -inv], 1) @ group.augmented.T
            if count > 0:
                cost, ok = _match(
                    q.offsets[sel, :count], group.offsets[:, :count], self.tolerance_px
                )
                if self.bandwidth_px is not None:
                    logits = logits - cost / (2 * self.bandwidth_px**2)
                logits = logits.masked_fill(~ok, -math.inf)
            post.add(sel, logits, group.values)


# ----- building blocks -----------------------------------------------------------------------


def _pixel_centres(h: int, w: int, device, dtype) -> Tensor:
    """[H*W, 2] (x, y) centres of the pixels in pixel units, row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype) + 0.5,
        torch.arange(w, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)


def _nearby(
    locations: Tensor, mask: Tensor, centres: Tensor, hw: tuple[int, int], reach: float
) -> tuple[Tensor, Tensor]:
    """Nearby conditioners of windows centred at ``centres`` [S, 2] (pixel units).

    Returns offsets ``[B, S, K, 2]`` (``location - centre`` in pixels, the nearby ones first,
    in slot order) and counts ``[B, S]``; offsets past a window's count are meaningless.
    """
    h, w = hw
    scale = torch.tensor([w, h], dtype=locations.dtype, device=locations.device)
    offsets = (locations * scale)[:, None, :, :] - centres[None, :, None, :]  # [B, S, K, 2]
    near = mask[:, None, :] & (offsets.abs().amax(-1) <= reach)
    order = torch.argsort((~near).to(torch.uint8), dim=-1, stable=True)
    offsets = offsets.gather(2, order[..., None].expand(*order.shape, 2))
    return offsets, near.sum(-1)


def _match(dq: Tensor, dt: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """Symmetric nearest-neighbour match of equal-sized offset sets.

    ``dq`` [R, c, 2] (queries), ``dt`` [T, c, 2] (candidates). Returns the Chamfer cost [R, T]
    and whether every offset on both sides has a partner within ``tolerance`` [R, T].
    """
    c = dq.shape[1]
    tol2 = tolerance**2
    if c == 1:  # the common case: one nearby conditioner on each side
        d2 = _sq_dist(dq[:, 0], dt[:, 0])
        return d2, d2 <= tol2
    pair = [[_sq_dist(dq[:, k], dt[:, m]) for m in range(c)] for k in range(c)]
    q_best = torch.stack([torch.stack(row).amin(0) for row in pair])  # [c, R, T]
    t_best = torch.stack([torch.stack(col).amin(0) for col in zip(*pair)])  # [c, R, T]
    ok = (q_best <= tol2).all(0) & (t_best <= tol2).all(0)
    return (q_best.sum(0) + t_best.sum(0)) / 2, ok


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """[R, T] squared distances between 2-D points ``a`` [R, 2] and ``b`` [T, 2], from the
    coordinate differences: exact for offsets on a half-pixel grid, so a match at exactly the
    tolerance is not lost to round-off (not ``torch.cdist``: it has no forward-mode derivative,
    which the locality probe uses)."""
    dx = a[:, None, 0] - b[None, :, 0]
    dy = a[:, None, 1] - b[None, :, 1]
    return torch.addcmul(dx * dx, dy, dy)


@dataclass
class _Queries:
    patches: Tensor  # [Q, D] noisy patches
    inv_two_var: Tensor  # [Q] 1 / (2 sigma^2) of each query's image
    pos: Tensor  # [Q] flat pixel index (row * W + col)
    offsets: Tensor  # [Q, K, 2] nearby conditioner offsets (nearby first)
    counts: Tensor  # [Q] number of nearby conditioners

    def subset(self, rows: Tensor) -> "_Queries":
        return _Queries(self.patches[rows], self.inv_two_var[rows], self.pos[rows],
                        self.offsets[rows], self.counts[rows])


@dataclass
class _Group:
    augmented: Tensor  # [T, D + 1] patches with their squared norm appended
    values: Tensor  # [T, C + 1] the patches' centre pixels with a 1 appended (to count weight)
    offsets: Tensor  # [T, M, 2]

    @classmethod
    def of(cls, patches: Tensor, centres: Tensor, offsets: Tensor) -> "_Group":
        ones = centres.new_ones(centres.shape[0], 1)
        return cls(torch.cat([patches, patches.square().sum(1, keepdim=True)], 1),
                   torch.cat([centres, ones], 1), offsets)


@dataclass
class _Candidates:
    """A chunk of training patches, split by nearby-conditioner count (all one group if the
    conditioners are ignored)."""

    groups: dict[int, _Group]

    @classmethod
    def build(
        cls, patches: Tensor, centres: Tensor, offsets: Tensor, counts: Tensor | None
    ) -> "_Candidates":
        if counts is None:
            return cls({0: _Group.of(patches, centres, offsets)})
        groups = {}
        for count in counts.unique().tolist():
            idx = (counts == count).nonzero()[:, 0]
            groups[int(count)] = _Group.of(patches[idx], centres[idx], offsets[idx])
        return cls(groups)


class _Posterior:
    """Running log-sum-exp of patch weights and weighted centre values, per query.

    ``add`` folds in a block of logits; blocks may come in any order and grouping (the result is
    the same up to round-off), which is what lets the machine chunk freely. The running maximum
    is a constant for autograd (it cancels in the ratio), so the block's logits can be turned
    into weights in place; the stored state is updated out of place, so ``torch.func``
    transforms (the locality probe) differentiate through it.
    """

    def __init__(self, n: int, channels: int, like: Tensor) -> None:
        self.log_max = like.new_full((n,), -math.inf).detach()
        self.sums = like.new_zeros(n, channels + 1)  # weighted centre values, then total weight

    def add(self, rows: Tensor, logits: Tensor, values: Tensor) -> None:
        old_max = self.log_max[rows]
        new_max = torch.maximum(old_max, logits.detach().amax(1))
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        weights = logits.sub_(shift[:, None]).exp_()  # the block's own tensor: in place is safe
        sums = self.sums[rows] * torch.exp(old_max - shift)[:, None] + weights @ values
        self.log_max = self.log_max.index_copy(0, rows, new_max)
        self.sums = self.sums.index_copy(0, rows, sums)

    def found(self) -> Tensor:
        """[Q] whether any compatible candidate was seen (the best one then weighs exp(0))."""
        return self.sums[:, -1].detach() > 0

    def mean(self) -> Tensor:
        """[Q, C] posterior means (0 where nothing was found)."""
        return self.sums[:, :-1] / self.sums[:, -1:].clamp_min(1e-30)


# ----- comparing denoisers -------------------------------------------------------------------


def r2_score(prediction: Tensor, reference: Tensor) -> float:
    """Coefficient of determination of ``prediction`` against ``reference`` over all entries:
    ``1 - SS_res / SS_tot`` (1 = identical; 0 = no better than the reference's mean)."""
    ss_res = (prediction - reference).double().square().sum()
    ss_tot = (reference - reference.mean()).double().square().sum()
    return float(1 - ss_res / ss_tot.clamp_min(1e-30))


def _noisy_inputs(
    images: Tensor, conds: Conditioning, sigmas, generator: torch.Generator | None
) -> list[tuple[float, Tensor]]:
    """``(sigma, images + sigma * noise)`` per noise level, one fresh noise draw per level."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"images must have shape [B, C, H, W], got {shape}")
    if conds.batch_size != images.shape[0]:
        raise InputError(
            f"conds has batch size {conds.batch_size} but there are {images.shape[0]} images"
        )
    levels = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)]
    if not levels or any(not (s > 0 and math.isfinite(s)) for s in levels):
        raise InputError(f"sigmas must be a non-empty list of finite values > 0, got {levels}")
    gen_device = generator.device if generator is not None else images.device
    out = []
    for s in levels:
        noise = torch.randn(images.shape, generator=generator, device=gen_device)
        out.append((s, images + s * noise.to(images.device, images.dtype)))
    return out


@torch.no_grad()
def r2_against(
    denoiser_a: Denoiser,
    denoiser_b: Denoiser,
    images: Tensor,
    conds: Conditioning,
    sigmas,
    generator: torch.Generator | None = None,
) -> Tensor:
    """[S] r^2 of ``denoiser_a``'s x0 predictions against ``denoiser_b``'s (the reference) at each
    noise level, both on the same noisy images ``images + sigma * noise``.

    x0 predictions rather than scores: the score carries ``-x / sigma^2``, shared by both, which
    would inflate r^2 at low noise (Kamb & Ganguli also compare the denoisers' outputs).
    """
    table = []
    for s, x in _noisy_inputs(images, conds, sigmas, generator):
        sig = torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device)
        table.append(r2_score(denoiser_a(x, sig, conds), denoiser_b(x, sig, conds)))
    return torch.tensor(table)


@torch.no_grad()
def calibrate_patch_schedule(
    machine: LCSMachine,
    trained_denoiser: Denoiser,
    images: Tensor,
    conds: Conditioning,
    sigmas,
    candidate_sizes,
    generator: torch.Generator | None = None,
) -> tuple[PatchSchedule, Tensor]:
    """Per noise level, the candidate patch size whose machine best matches a trained model.

    Returns the schedule (sizes at ``sigmas``) and the r^2 table ``[len(sigmas),
    len(candidate_sizes)]``: how well each window explains the model at each noise level, the
    curve Kamb & Ganguli use to show that the effective locality shrinks as noise falls.
    """
    sizes = [int(p) for p in candidate_sizes]
    if not sizes:
        raise ConfigError("candidate_sizes is empty: give at least one odd patch size")
    machines = [machine.with_patch_size(p) for p in sizes]  # validates every size
    table = torch.zeros(0, len(sizes))
    levels = []
    for s, x in _noisy_inputs(images, conds, sigmas, generator):
        sig = torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device)
        reference = trained_denoiser(x, sig, conds)
        row = torch.tensor([[r2_score(m(x, sig, conds), reference) for m in machines]])
        table = torch.cat([table, row])
        levels.append(s)
    best = table.argmax(1).tolist()
    return PatchSchedule(tuple(levels), tuple(sizes[k] for k in best)), table

"""The ``Conditioning`` type: what a denoiser is conditioned on, as a padded, masked set.

A set of 0..N conditioners (one per requested object) travels as fixed-size tensors plus a mask,
so that every count — including zero, and counts never seen in training — takes the same code
path. Locations are image-plane coordinates normalised to [0, 1]: ``x`` = column / width
(left to right), ``y`` = row / height (top to bottom); pixel ``(row i, col j)`` has its centre at
``((j + 0.5) / W, (i + 0.5) / H)``. Attributes are vocabulary indices (see ``scenes.vocab``),
``-1`` where an attribute is not given.

The empty set (mask all false) is the *null conditioning* used for classifier-free guidance and as
the unconditional background in score composition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .errors import ConfigError, InputError

# Order of the attribute columns in ``Conditioning.attributes``.
ATTRIBUTE_NAMES = ("color", "shape", "size", "material")


SHAPE_HINT = "a list with one list of [x, y] pairs per image, e.g. [[[0.3, 0.6], [0.7, 0.4]]]"


def check_list(value, what: str) -> list:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise InputError(f"{what} is {value!r}: expected {SHAPE_HINT}")
    return list(value)


def check_points(points, where: str) -> list[tuple[float, float]]:
    """One image's locations as (x, y) floats, or an ``InputError`` naming the bad one."""
    out = []
    for j, p in enumerate(check_list(points, f"the locations of {where}")):
        try:
            pair = tuple(float(v) for v in check_list(p, "a location"))
        except (TypeError, ValueError):  # InputError is a ValueError
            pair = ()
        if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
            raise InputError(f"location {j} of {where} is {p!r}: expected [x, y] (x = column, y = row from "
                             "the top, both in [0, 1])")
        out.append(pair)
    return out


@dataclass
class Conditioning:
    locations: Tensor  # [B, N, 2] float, (x, y) in [0, 1]; padded slots hold anything
    mask: Tensor  # [B, N] bool, True where a slot holds a conditioner
    attributes: Tensor | None = None  # [B, N, 4] long (color, shape, size, material), -1 = not given

    def __post_init__(self) -> None:
        if self.locations.ndim != 3 or self.locations.shape[-1] != 2:
            raise InputError(
                f"locations must have shape [batch, N, 2], got {tuple(self.locations.shape)}"
            )
        if tuple(self.mask.shape) != tuple(self.locations.shape[:2]):
            raise InputError(
                f"mask shape {tuple(self.mask.shape)} does not match locations "
                f"{tuple(self.locations.shape[:2])}"
            )
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.bool()
        if self.attributes is not None and (
            self.attributes.ndim != 3
            or tuple(self.attributes.shape[:2]) != tuple(self.locations.shape[:2])
            or self.attributes.shape[-1] != len(ATTRIBUTE_NAMES)
        ):
            raise InputError(
                f"attributes must have shape [batch, N, {len(ATTRIBUTE_NAMES)}], "
                f"got {tuple(self.attributes.shape)}"
            )

    # ----- construction ---------------------------------------------------------------------
    @classmethod
    def from_lists(
        cls, locations: list[list[tuple[float, float]]], max_conditioners: int | None = None
    ) -> "Conditioning":
        """Build from per-image lists of (x, y) locations; pads to the longest list. Anything else
        (a flat pair, a point without two coordinates, a number that is not one) is an
        ``InputError`` (a ``ValueError``) naming where and what shape was expected."""
        locations = [check_points(pts, f"image {b}") for b, pts in enumerate(check_list(locations, "locations"))]
        n = max([len(l) for l in locations] + [max_conditioners or 0, 1])
        loc = torch.zeros(len(locations), n, 2)
        mask = torch.zeros(len(locations), n, dtype=torch.bool)
        for b, pts in enumerate(locations):
            if pts:
                loc[b, : len(pts)] = torch.tensor(pts, dtype=torch.float32).reshape(-1, 2)
                mask[b, : len(pts)] = True
        cond = cls(loc, mask)
        cond.validate()
        return cond

    @classmethod
    def empty(cls, batch_size: int, slots: int = 1, device: torch.device | str | None = None):
        """The null conditioning: no conditioners at all."""
        return cls(
            torch.zeros(batch_size, slots, 2, device=device),
            torch.zeros(batch_size, slots, dtype=torch.bool, device=device),
        )

    # ----- properties -----------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.locations.shape[0]

    @property
    def slots(self) -> int:
        return self.locations.shape[1]

    @property
    def device(self) -> torch.device:
        return self.locations.device

    def counts(self) -> Tensor:
        """Number of conditioners per image, [B] long."""
        return self.mask.sum(dim=1)

    # ----- transformations ------------------------------------------------------------------
    def to(self, device: torch.device | str) -> "Conditioning":
        attrs = None if self.attributes is None else self.attributes.to(device)
        return Conditioning(self.locations.to(device), self.mask.to(device), attrs)

    def __getitem__(self, index) -> "Conditioning":
        """Select images (batch rows) by int, slice, list or tensor index."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        attrs = None if self.attributes is None else self.attributes[index]
        return Conditioning(self.locations[index], self.mask[index], attrs)

    def drop(self, keep: Tensor) -> "Conditioning":
        """Replace the conditioning of images where ``keep`` [B] is False by the null set."""
        mask = self.mask & keep.to(self.mask.device).bool()[:, None]
        return Conditioning(self.locations, mask, self.attributes)

    def keep_slots(self, keep: Tensor) -> "Conditioning":
        """Drop individual conditioners: slot (b, n) stays only where ``keep`` [B, N] is True."""
        return Conditioning(self.locations, self.mask & keep.to(self.mask.device).bool(), self.attributes)

    def with_locations(self, locations: Tensor) -> "Conditioning":
        """Same set with new location values (used to differentiate w.r.t. locations)."""
        return Conditioning(locations, self.mask, self.attributes)

    def single(self, slot: int) -> "Conditioning":
        """The conditioning that keeps only conditioner ``slot`` of every image."""
        keep = torch.zeros_like(self.mask)
        keep[:, slot] = True
        return Conditioning(self.locations, self.mask & keep, self.attributes)

    def repeat(self, times: int) -> "Conditioning":
        """Tile the batch ``times`` times (e.g. to batch conditional and null passes)."""
        attrs = None if self.attributes is None else self.attributes.repeat(times, 1, 1)
        return Conditioning(self.locations.repeat(times, 1, 1), self.mask.repeat(times, 1), attrs)

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        """Concatenate along the batch, padding every item to the largest slot count."""
        n = max(c.slots for c in items)
        padded = [c.pad_to(n) for c in items]
        with_attrs = any(c.attributes is not None for c in padded)
        attrs = None
        if with_attrs:
            attrs = torch.cat([c._attributes_or_unknown() for c in padded])
        return Conditioning(
            torch.cat([c.locations for c in padded]), torch.cat([c.mask for c in padded]), attrs
        )

    def pad_to(self, slots: int) -> "Conditioning":
        extra = slots - self.slots
        if extra < 0:
            raise InputError(f"cannot pad {self.slots} slots down to {slots}")
        if extra == 0:
            return self
        b, dev = self.batch_size, self.device
        loc = torch.cat([self.locations, torch.zeros(b, extra, 2, device=dev)], 1)
        mask = torch.cat([self.mask, torch.zeros(b, extra, dtype=torch.bool, device=dev)], 1)
        attrs = None
        if self.attributes is not None:
            pad = torch.full((b, extra, len(ATTRIBUTE_NAMES)), -1, dtype=torch.long, device=dev)
            attrs = torch.cat([self.attributes, pad], 1)
        return Conditioning(loc, mask, attrs)

    def _attributes_or_unknown(self) -> Tensor:
        if self.attributes is not None:
            return self.attributes
        return torch.full(
            (self.batch_size, self.slots, len(ATTRIBUTE_NAMES)), -1, dtype=torch.long,
            device=self.device,
        )

    # ----- checks ---------------------------------------------------------------------------
    def validate(self) -> "Conditioning":
        """Check values (not only shapes): locations of real conditioners lie in [0, 1]."""
        loc = self.locations[self.mask]
        if not torch.isfinite(loc).all():
            raise InputError("locations contain NaN or infinite values")
        if loc.numel() and (loc.min() < 0 or loc.max() > 1):
            bad = loc[((loc < 0) | (loc > 1)).any(-1)][0].tolist()
            raise InputError(
                f"location {bad} is outside the image; expected (x, y) in [0, 1] "
                "(x = column / width, y = row / height)"
            )
        return self


def pixel_centers(n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """[n] coordinates ``(i + 0.5) / n`` of the pixel centres along one side (the convention above)."""
    return (torch.arange(n, device=device, dtype=dtype) + 0.5) / n


def location_windows(cond: Conditioning, height: int, width: int, radius_px: float, softness_px: float = 0.5) -> Tensor:
    """[B, N, H, W] soft discs of ``radius_px`` around each present location (0 for empty slots).

    The edge is a logistic ramp of width ``softness_px`` so that the composed prediction has no
    hard seams; ``softness_px = 0`` gives a hard disc.
    """
    if radius_px <= 0:
        raise ConfigError(f"radius_px={radius_px}: expected a positive window radius in pixels")
    if softness_px < 0:
        raise ConfigError(f"softness_px={softness_px}: expected >= 0")
    dev = cond.locations.device
    ys, xs = pixel_centers(height, dev), pixel_centers(width, dev)
    loc = cond.locations.float()
    dx = (xs[None, None, None, :] - loc[..., 0, None, None]) * width
    dy = (ys[None, None, :, None] - loc[..., 1, None, None]) * height
    dist = torch.sqrt(dx**2 + dy**2)
    if softness_px == 0:
        win = (dist <= radius_px).float()
    else:
        win = torch.sigmoid((radius_px - dist) / softness_px)
    return win * cond.mask[..., None, None].float()


@dataclass
class Prompt:
    """What a text-conditioned (diffusers) UNet is conditioned on: token embeddings, not locations. A batch of 1 broadcasts to any batch."""

    encoder_hidden_states: Tensor  # [B, T, D] token embeddings read by cross-attention
    text_embeds: Tensor | None = None  # [B, D_pool] pooled text embedding (SDXL)
    time_ids: Tensor | None = None  # [B, 6] original size, crop corner, target size (SDXL)

    @property
    def batch_size(self) -> int:
        return self.encoder_hidden_states.shape[0]

    @property
    def tokens(self) -> int:
        return self.encoder_hidden_states.shape[1]

    def with_tokens(self, encoder_hidden_states: Tensor) -> "Prompt":
        """The same prompt with new token embeddings (the variable token Jacobians vary)."""
        return replace(self, encoder_hidden_states=encoder_hidden_states)

    def expand(self, batch: int) -> "Prompt":
        """Broadcast every field to ``batch`` rows (each row its own copy, so that per-image
        derivatives stay separate); a batch other than 1 or ``batch`` is an error."""

        def grow(t: Tensor | None, name: str) -> Tensor | None:
            if t is None or t.shape[0] == batch:
                return t
            if t.shape[0] != 1:
                raise InputError(
                    f"prompt {name} has batch {t.shape[0]} but the latents have batch {batch}; "
                    "expected 1 (shared) or equal"
                )
            return t.expand(batch, *t.shape[1:]).contiguous()

        return Prompt(
            grow(self.encoder_hidden_states, "encoder_hidden_states"),  # type: ignore[arg-type]
            grow(self.text_embeds, "text_embeds"),
            grow(self.time_ids, "time_ids"),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return Prompt(move(self.encoder_hidden_states), move(self.text_embeds),  # type: ignore
                      move(self.time_ids))

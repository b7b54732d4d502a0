"""Contact sheets: one row per object count, a few images per row, labelled ``k = ...``.

``contact_sheet`` lays out any images (data, or a model's samples per requested count) so the
report stage can reuse it; ``data_contact_sheet`` renders fresh scenes of a ``DataConfig``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ..errors import DataError
from .config import DataConfig
from .dataset import SceneDataset, SceneSource, shard_seed

LABEL_WIDTH = 44
GAP = 2
BACKGROUND = (255, 255, 255)


def _to_pil(image: Tensor, side: int) -> Image.Image:
    """[3, H, W] float in [0, 1] (or [-1, 1] when negative values occur), or uint8 -> PIL."""
    if image.dtype != torch.uint8:
        x = image.detach().float().cpu()
        if x.min() < 0:
            x = (x + 1) / 2
        image = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    return pil.resize((side, side), Image.NEAREST) if pil.size[0] != side else pil


def contact_sheet(
    rows: Sequence[Tensor], labels: Sequence[str] | None = None, min_side: int = 64
) -> Image.Image:
    """A grid image: ``rows[r]`` is a [C, 3, H, W] batch shown left to right, labelled ``labels[r]``.

    Small images are enlarged by whole factors (nearest neighbour) to at least ``min_side``
    pixels, so 16x16 data stays legible and pixels stay honest.
    """
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    res = int(rows[0].shape[-1])
    side = res * max(1, -(-min_side // res))
    cols = max(len(r) for r in rows)
    width = LABEL_WIDTH + cols * (side + GAP)
    height = len(rows) * (side + GAP)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        y = r * (side + GAP)
        if labels is not None:
            draw.text((4, y + side // 2 - 6), labels[r], fill=(0, 0, 0))
        for c, image in enumerate(row):
            sheet.paste(_to_pil(image, side), (LABEL_WIDTH + c * (side + GAP), y))
    return sheet


def data_contact_sheet(
    cfg: DataConfig, counts: Sequence[int] | None = None, per_row: int = 8, seed: int | None = None,
    device: torch.device | str = "cpu", root: Path | None = None,
) -> Image.Image:
    """Fresh renders of ``cfg``'s scenes, one row per count (default 0..scene.max_objects); for a
    data set read from a CLEVR folder, its stored images (``root``: the built cache)."""
    counts = list(range(min(cfg.scene.max_objects, 10) + 1)) if counts is None else list(counts)
    if cfg.source == "clevr_folder":
        return stored_contact_sheet(Path(root), counts, per_row)
    gen = torch.Generator().manual_seed(shard_seed(cfg.seed if seed is None else seed, "contact-sheet", 0))
    source = SceneSource(cfg, device)
    rows = []
    for k in counts:
        batch = source.render(torch.full((per_row,), k), gen, slots=max(k, 1))
        rows.append(batch["images"])
    return contact_sheet(rows, [f"k = {k}" for k in counts])


def stored_contact_sheet(root: Path, counts: Sequence[int], per_row: int) -> Image.Image:
    """The first ``per_row`` stored images with each count (test split first, then train)."""
    stored = []
    for split in ("test", "train"):
        try:
            stored.append(SceneDataset(root, split))
        except DataError:  # a split that was not built
            continue
    rows, labels = [], []
    for k in counts:
        images = torch.cat([d.tensors["images"][d.tensors["counts"] == k] for d in stored])[:per_row]
        if len(images):
            rows.append(images)
            labels.append(f"k = {k}")
    return contact_sheet(rows, labels)

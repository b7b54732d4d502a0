"""The same scenes from the torch renderer and from Blender, side by side, with their agreement.

Writes docs/blender_vs_torch.png (rows: torch render, Blender render, the two masks overlaid:
green = both, red = torch only, blue = Blender only) and prints, per object count, the IoU of the
two renderers' object masks and the distance between their centroids.
Run (after `make blender`):  python examples/blender_vs_torch.py [--resolution 64] [--samples 32]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from locodiff.scenes import Renderer, SceneSampler
from locodiff.scenes.blender import BlenderRenderer, agreement


def overlay(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """[N, H, W] masks of two renders -> an RGB picture of where they agree."""
    a, b = a.any(0).numpy(), b.any(0).numpy()
    out = np.zeros((*a.shape, 3), np.uint8)
    out[a & b] = (40, 200, 40)
    out[a & ~b] = (230, 40, 40)
    out[~a & b] = (40, 80, 230)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("docs/blender_vs_torch.png"))
    args = parser.parse_args()
    counts = torch.tensor([1, 2, 3, 4, 6, 8, 10] * 4)
    scenes = SceneSampler().sample(counts, torch.Generator().manual_seed(0), slots=10)
    torch_out = Renderer(args.resolution, 2)(scenes)
    blender_out = BlenderRenderer(args.resolution, samples=args.samples, workers=2)(scenes)
    for k in sorted(set(counts.tolist())):
        rows = counts == k
        iou, dist = agreement(blender_out.masks[rows], torch_out.masks[rows], scenes.mask[rows])
        print(f"k={k:2d}: {len(iou):3d} objects seen in both, IoU mean {iou.mean():.3f} min {iou.min():.3f}, "
              f"centroid distance mean {dist.mean():.2f} px max {dist.max():.2f} px")
    iou, dist = agreement(blender_out.masks, torch_out.masks, scenes.mask)
    print(f"all: IoU mean {iou.mean():.3f}, centroid distance max {dist.max():.2f} px over {len(iou)} objects")
    show = range(7)  # one scene per count
    to_rgb = lambda t: (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    rows = [np.concatenate([to_rgb(out.images[i]) for i in show], 1) for out in (torch_out, blender_out)]
    rows.append(np.concatenate([overlay(torch_out.masks[i], blender_out.masks[i]) for i in show], 1))
    picture = Image.fromarray(np.concatenate(rows, 0))
    picture = picture.resize((picture.width * 2, picture.height * 2), Image.NEAREST)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Figures of an evaluation, drawn from saved data (eval.jsonl, sample strips) so they can be redrawn.

- ``detection_grid``: one row per requested count k; requested locations as circles, detections as
  crosses; green where requested and detected agree (a match), red where they do not.
- ``accuracy_plot``: count / placed / success accuracy against k with Wilson 95% intervals, the
  trained range shaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import atomic_path
from .metrics import ACCURACY_KINDS, CountMetrics

MATCH, MISS = "#1fbf3f", "#e8253a"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def detection_grid(rows: Sequence[tuple[int, np.ndarray, Sequence[dict]]], path: str | Path, cell_inches: float = 1.1) -> Path:
    """Save a grid: ``rows`` holds (k, images [G, H, W, 3] uint8, records) per k.

    Each record is an eval.jsonl line: ``requested`` locations, ``detections`` and matched
    ``pairs`` (requested index, detection index).
    """
    plt = _pyplot()
    rows = [r for r in rows if len(r[1])]
    n_rows = max(len(rows), 1)
    n_cols = max([len(r[1]) for r in rows] + [1])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * cell_inches, n_rows * cell_inches), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, (k, images, records) in enumerate(rows):
        side = images.shape[1]
        for j, (img, rec) in enumerate(zip(images, records)):
            ax = axes[i, j]
            ax.imshow(img, extent=(0, side, side, 0), interpolation="nearest")
            matched_req = {p[0] for p in rec["pairs"]}
            matched_det = {p[1] for p in rec["pairs"]}
            for r, (x, y) in enumerate(rec["requested"]):
                color = MATCH if r in matched_req else MISS
                ax.scatter([x * side], [y * side], s=26, facecolors="none", edgecolors=color, linewidths=0.9)
            for d, (x, y) in enumerate(rec["detections"]["centers"]):
                color = MATCH if d in matched_det else MISS
                ax.scatter([x * side], [y * side], s=14, marker="x", c=color, linewidths=0.9)
            ax.set_xlim(0, side)
            ax.set_ylim(side, 0)
        axes[i, 0].set_axis_on()
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
        axes[i, 0].set_ylabel(f"k={k}", rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("requested (o) vs detected (x); green = matched, red = missed / extra", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_plot(per_k: dict[int, CountMetrics], path: str | Path, trained_range: tuple[int, int] | None = (1, 3),
                  title: str = "") -> Path:
    """Accuracy against requested count, with Wilson 95% intervals as error bars."""
    plt = _pyplot()
    ks = sorted(per_k)
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    if trained_range is not None:
        ax.axvspan(trained_range[0] - 0.5, trained_range[1] + 0.5, color="0.9", label="trained range")
    for offset, kind in zip((-0.12, 0.0, 0.12), ACCURACY_KINDS):
        acc = np.array([getattr(per_k[k], kind) for k in ks])
        ci = np.array([getattr(per_k[k], f"{kind}_ci") for k in ks]).reshape(-1, 2)
        err = np.stack([acc - ci[:, 0], ci[:, 1] - acc]).clip(min=0)
        ax.errorbar(np.array(ks) + offset, acc, yerr=err, marker="o", ms=3, capsize=2, lw=1, label=kind)
    ax.set_xlabel("requested objects k")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xticks(ks)
    ax.legend(fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path

"""Figures of locality results, drawn from saved data (a ``LocalityResult``, its summary dict,
or plain tensors), so they can be redrawn without re-running a probe.

- ``sensitivity_grid``: heat maps over an image, one column per sigma (the building block);
- ``pixel_sensitivity_figure``: where a probed output pixel looks, per sigma;
- ``conditioner_sensitivity_figure``: where each conditioner acts, per sigma;
- ``radius_vs_sigma_figure``: effective radii vs noise level, several models;
- ``index_vs_sigma_figure``: conditional-locality index vs noise level, several models,
  with each model's chance level dashed.

All functions return a matplotlib ``Figure`` (Agg backend, no display needed); ``save_figure``
writes one atomically and closes it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from ..io import atomic_path  # noqa: E402
from .jacobian import InputError  # noqa: E402
from .result import LocalityResult  # noqa: E402
from .stats import locations_to_pixels  # noqa: E402

ResultLike = LocalityResult | Mapping


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save atomically (the format follows the file suffix: png, pdf, svg) and close the figure:
    pyplot keeps every open figure alive, and a report draws dozens."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    plt.close(fig)
    return path


def image_for_display(image: Tensor) -> Tensor:
    """[C,H,W] in [-1, 1] -> [H,W,3] in [0, 1] (grey for 1-channel or non-RGB images)."""
    img = ((image.detach().float().cpu() + 1) / 2).clamp(0, 1)
    if img.shape[0] == 3:
        return img.permute(1, 2, 0)
    grey = img.mean(0)
    return grey[..., None].expand(-1, -1, 3)


HEAT_CMAP, HEAT_ALPHA = "magma", 0.65  # heat maps drawn over the scene


def sensitivity_grid(
    image: Tensor,
    maps: Tensor,
    sigmas: Sequence[float],
    marks: Tensor | None = None,
    row_titles: Sequence[str] | None = None,
    radius: float | None = None,
    all_marks: Tensor | None = None,
) -> Figure:
    """Heat maps ``maps`` [S, K, H, W] (S sigmas x K rows) over ``image`` [C,H,W].

    Each panel is scaled to its own maximum (the question is *where*, not how much); the image
    is shown dimmed in grey so that the heat map stays readable. ``marks``
    [K, 2] (row, col) marks the point a row is about, with a circle of ``radius`` pixels;
    ``all_marks`` [M, 2] are drawn in every panel (e.g. all conditioner locations).
    """
    s_count, k_count = maps.shape[:2]
    if len(sigmas) != s_count:
        raise InputError(f"{len(sigmas)} sigmas for maps with {s_count} noise levels")
    base = (0.25 + 0.5 * image_for_display(image).mean(-1, keepdim=True).expand(-1, -1, 3)).numpy()
    fig, axes = plt.subplots(
        k_count, s_count, figsize=(1.9 * s_count, 1.9 * k_count), squeeze=False
    )
    for k in range(k_count):
        for s in range(s_count):
            ax = axes[k][s]
            m = maps[s, k].detach().float().cpu()
            ax.imshow(base, interpolation="nearest")
            ax.imshow((m / m.max().clamp_min(1e-30)).numpy(), cmap=HEAT_CMAP, alpha=HEAT_ALPHA,
                      vmin=0, vmax=1, interpolation="nearest")
            if all_marks is not None:
                for r, c in all_marks.tolist():
                    ax.plot(c, r, "c+", ms=6)
            if marks is not None:
                r, c = marks[k].tolist()
                ax.plot(c, r, "wx", ms=6)
                if radius is not None:
                    ax.add_patch(Circle((c, r), radius, fill=False, ec="w", lw=0.8, ls="--"))
            ax.set_xlim(-0.5, base.shape[1] - 0.5)  # marks must not widen the axes
            ax.set_ylim(base.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(f"σ = {sigmas[s]:.3g}", fontsize=9)
            if s == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[k], fontsize=8)
    fig.tight_layout()
    return fig


def pixel_sensitivity_figure(
    result: LocalityResult, scene: int = 0, pixels: Sequence[int] = (0, 1, 2)
) -> Figure:
    """Jacobian-row energy of a few probed output pixels of one scene, one column per sigma."""
    a = _arrays(result, "pixel_energy")
    pixels = [p for p in pixels if p < a["pixel_energy"].shape[2]]
    maps = a["pixel_energy"][:, scene, pixels]  # [S, K, H, W]
    marks = a["pixels"][scene, pixels]
    titles = [f"pixel {tuple(m)}" for m in marks.tolist()]
    return sensitivity_grid(a["images"][scene], maps, result.sigmas, marks, titles,
                            radius=result.radius)


def conditioner_sensitivity_figure(result: LocalityResult, scene: int = 0) -> Figure:
    """``|d s / d c_k|^2`` for every real conditioner of one scene, one column per sigma."""
    a = _arrays(result, "cond_sensitivity")
    mask = a["mask"][scene].bool()
    slots = torch.nonzero(mask).reshape(-1).tolist()
    if not slots:
        raise InputError(f"scene {scene} has no conditioners to draw")
    h, w = a["images"].shape[-2:]
    where = locations_to_pixels(a["locations"][scene], h, w)  # [N, 2] (row, col)
    maps = a["cond_sensitivity"][:, scene, slots].pow(2)
    titles = [f"conditioner {k}" for k in slots]
    return sensitivity_grid(a["images"][scene], maps, result.sigmas, where[slots], titles,
                            radius=result.radius, all_marks=where[slots])


def _arrays(result: LocalityResult, key: str) -> Mapping[str, Tensor]:
    if not isinstance(result, LocalityResult) or key not in result.arrays:
        raise InputError(f"this figure needs the raw map {key!r}: probe with keep_maps=True")
    return result.arrays


def _summary(result: ResultLike) -> LocalityResult:
    return result if isinstance(result, LocalityResult) else LocalityResult.from_dict(dict(result))


def _band(ax, xs, curve: Mapping[str, list], color, label: str, ls: str = "-") -> None:
    nan = float("nan")
    lo = [nan if v is None else v for v in curve["lo"]]
    hi = [nan if v is None else v for v in curve["hi"]]
    mean = [nan if v is None else v for v in curve["mean"]]
    ax.plot(xs, mean, ls, color=color, marker="o", ms=3, label=label)
    if not all(math.isnan(v) for v in lo + hi):
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)


def radius_vs_sigma_figure(
    results: Mapping[str, ResultLike], quantiles: Sequence[float] = (0.5, 0.9)
) -> Figure:
    """Effective radius (pixels) vs sigma for each model; one line style per quantile."""
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    styles = ["-", "--", ":", "-."]
    for i, (name, res) in enumerate(results.items()):
        res = _summary(res)
        color = f"C{i}"
        for j, q in enumerate(quantiles):
            curve = res.radius_curve(q)
            _band(ax, curve["sigma"], curve, color, f"{name} ({int(q * 100)}%)",
                  styles[j % len(styles)])
    ax.set_xscale("log")
    ax.set_xlabel("noise level σ")
    ax.set_ylabel("effective radius (pixels)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def index_vs_sigma_figure(results: Mapping[str, ResultLike]) -> Figure:
    """Conditional-locality index vs sigma for several models on one plot (chance dashed)."""
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    radii = set()
    for i, (name, res) in enumerate(results.items()):
        res = _summary(res)
        radii.add(res.radius)
        curve = res.index_curve()
        color = f"C{i}"
        _band(ax, curve["sigma"], curve, color, name)
        ax.plot(curve["sigma"], curve["chance"], ":", color=color, lw=1)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("noise level σ")
    r = ", ".join(f"{v:g}" for v in sorted(radii))
    ax.set_ylabel(f"conditional-locality index (r = {r} px)")
    ax.legend(fontsize=7, title="dotted: chance", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig

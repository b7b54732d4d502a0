"""Figures that compare models (one model's figures live with its stage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path  # noqa: E402

if TYPE_CHECKING:  # a type only
    from ..evaluate.runner import EvalResult


# matplotlib's tab10, in its order; the explorer draws with the same colours
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def model_colours(names) -> dict[str, str]:
    """One colour per model for a whole report, figures and explorer alike, in the study's order."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


@dataclass(frozen=True)
class FigureFolder:
    """Where a report's figures go (``folder / "name.png"``), and each model's colour in all of them."""

    path: Path
    colours: Mapping[str, str] = field(default_factory=dict)

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def colour(colours: Mapping[str, str] | None, name: str, i: int) -> str:
    """A model's colour in the report, or the i-th of the palette for a model it does not name."""
    return (colours or {}).get(name, PALETTE[i % len(PALETTE)])


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def success_vs_k(evaluations: Mapping[str, EvalResult], path: str | Path, trained_range: tuple[int, int] = (1, 3),
                 kind: str = "success", colours: Mapping[str, str] | None = None) -> Path:
    """A rate (``kind``: success, placed, recall, precision) against requested k for several
    models, from their evaluations, with 95% intervals where they have them."""
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    ax.axvspan(trained_range[0] - 0.5, trained_range[1] + 0.5, color="0.9")
    for i, (name, ev) in enumerate(evaluations.items()):
        rows = [m for k, m in sorted(ev.per_k.items()) if getattr(m, kind) is not None]
        if not rows:
            continue
        ks, c = np.array([m.k for m in rows]), colour(colours, name, i)
        ax.plot(ks, [getattr(m, kind) for m in rows], "o-", ms=3, lw=1.2, color=c, label=name)
        if all(getattr(m, f"{kind}_ci") for m in rows):
            lo, hi = np.array([getattr(m, f"{kind}_ci") for m in rows]).T
            ax.fill_between(ks, lo, hi, color=c, alpha=0.15, lw=0)
    ax.set_xlabel("requested objects k")
    ax.set_ylabel(kind)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def recall_and_crowding(evaluations: Mapping[str, EvalResult], outside: Mapping[int, float], radius_px: float,
                        limit_k: int | None, path: str | Path, trained_range: tuple[int, int] = (1, 3),
                        colours: Mapping[str, str] | None = None) -> Path:
    """Each model's recall against k (left) beside the share of test objects whose window is more
    crowded than any common training window (right), with the k the crowding theory predicts."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    ax.axvspan(trained_range[0] - 0.5, trained_range[1] + 0.5, color="0.9")
    for i, (name, ev) in enumerate(evaluations.items()):
        rows = [m for k, m in sorted(ev.per_k.items()) if m.recall is not None]
        ax.plot([m.k for m in rows], [m.recall for m in rows], "o-", ms=3, lw=1.2, color=colour(colours, name, i),
                label=name)
    ks = sorted(outside)
    bx.bar(ks, [outside[k] for k in ks], color="0.55")
    for a in (ax, bx):
        if limit_k is not None:
            a.axvline(limit_k - 0.5, color="k", ls="--", lw=0.8)
        a.set_xlabel("requested objects k")
        a.grid(alpha=0.3)
    ax.set_ylabel("recall")
    ax.set_ylim(-0.03, 1.03)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    bx.set_ylabel(f"test objects beyond training's\ncrowding (r = {radius_px:g} px)")
    bx.set_ylim(0, max(0.3, max(outside.values(), default=0) * 1.1))
    fig.tight_layout()
    return _save(fig, path)


def locality_vs_generalization(points: Mapping[str, tuple[float, float]], path: str | Path,
                               colours: Mapping[str, str] | None = None) -> Path:
    """One labelled point per model: (mean normalised locality index, mean extrapolation recall),
    on axes fitted to the points, each label placed where it overlaps no other."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for i, (name, (x, y)) in enumerate(points.items()):
        ax.scatter([x], [y], color=colour(colours, name, i), s=30, zorder=3)
    ax.set_xlim(*fitted(x for x, _ in points.values()))
    ax.set_ylim(*fitted(y for _, y in points.values()))
    ax.set_xlabel("mean normalised conditional-locality index")
    ax.set_ylabel("mean recall over the extrapolation range")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    place_labels(fig, ax, points)
    return _save(fig, path)


def fitted(values, margin: float = 0.12) -> tuple[float, float]:
    """Axis limits around ``values`` with a margin (a tenth of the axis at least)."""
    values = list(values)
    lo, hi = min(values), max(values)
    pad = max(hi - lo, 0.1) * margin + 0.02
    return lo - pad, hi + pad


# where a label may sit around its point (offset in points, horizontal alignment), in order of preference
LABEL_SPOTS = [((5, 4), "left"), ((5, -10), "left"), ((-5, 4), "right"), ((-5, -10), "right"),
               ((5, 14), "left"), ((-5, 14), "right"), ((5, -20), "left"), ((-5, -20), "right")]


def place_labels(fig, ax, points: Mapping[str, tuple[float, float]]) -> None:
    """Label each point at the first spot whose box overlaps no label or point placed so far."""
    renderer = fig.canvas.get_renderer()
    taken = [ax.transData.transform(p) for p in points.values()]
    taken = [matplotlib.transforms.Bbox.from_bounds(x - 4, y - 4, 8, 8) for x, y in taken]
    for name, (x, y) in points.items():
        for (dx, dy), align in LABEL_SPOTS:
            label = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, ha=align)
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            inside = ax.get_window_extent(renderer).contains(box.x0, box.y0) and \
                ax.get_window_extent(renderer).contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in taken):
                break
            label.remove()
        else:
            label = ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
            box = label.get_window_extent(renderer)
        taken.append(box)


def cosine_matrices(matrices: Mapping[str, list], path: str | Path) -> Path:
    """One heat map per model of a concept-by-concept cosine matrix, on a shared -1..1 scale."""
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n + 0.6, 2.5), squeeze=False)
    im = None
    for ax, (name, m) in zip(axes[0], matrices.items()):
        im = ax.imshow(np.array(m, dtype=float), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    return _save(fig, path)


def emergence_figure(curves: Mapping[str, list[dict]], counts: list[int], path: str | Path,
                     colours: Mapping[str, str] | None = None) -> Path:
    """Locality (left) and recall per k (right) against training images, one colour per model.
    Each point is a dict with ``images_seen``, ``index``, ``presence`` and ``recall`` {k: value}."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.4), sharex=True)
    styles = ["-", "--", ":", "-."]
    for i, (name, points) in enumerate(curves.items()):
        x, c = [p["images_seen"] / 1000 for p in points], colour(colours, name, i)
        left.plot(x, [p["index"] for p in points], "-o", color=c, ms=3, label=f"{name} (moves)")
        left.plot(x, [p["presence"] for p in points], "--", color=c, label=f"{name} (presence)")
        for j, k in enumerate(counts):
            right.plot(x, [p["recall"].get(k) for p in points], styles[j % len(styles)], color=c,
                       label=f"{name} k={k}")
    left.set_ylabel("normalised locality index")
    right.set_ylabel("recall")
    for ax in (left, right):
        ax.set_xlabel("training images (thousands)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def locality_and_recall_vs_k(curves: Mapping[str, tuple[Mapping, Mapping[int, float]]], path: str | Path,
                             label: str, colours: Mapping[str, str] | None = None) -> Path:
    """Two panels over requested k, one line per model: a locality statistic (``Estimate`` per k,
    with its interval) and recall."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for i, (name, (stat, recall)) in enumerate(curves.items()):
        c = colour(colours, name, i)
        ks = [k for k, e in sorted(stat.items()) if e is not None and np.isfinite(e.mean)]
        if ks:
            mean = np.array([stat[k].mean for k in ks])
            lo = np.array([stat[k].lo if np.isfinite(stat[k].lo) else stat[k].mean for k in ks])
            hi = np.array([stat[k].hi if np.isfinite(stat[k].hi) else stat[k].mean for k in ks])
            left.plot(ks, mean, "o-", ms=3, lw=1.2, color=c, label=name)
            left.fill_between(ks, lo, hi, color=c, alpha=0.15, lw=0)
        rk = sorted(k for k in recall if k >= 1)
        right.plot(rk, [recall[k] for k in rk], "o-", ms=3, lw=1.2, color=c, label=name)
    left.set_ylabel(label)
    right.set_ylabel("recall")
    right.set_ylim(-0.03, 1.03)
    for ax in (left, right):
        ax.set_xlabel("requested objects k")
        ax.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def ablation_curves(curves: Mapping[str, tuple[str, str, Mapping[int, float], Mapping[int, float]]],
                    path: str | Path) -> Path:
    """Recall and efficacy per k for the count-coupling ablation: ``curves[name] = (label policy,
    network, recall per k, efficacy per k)``; one colour per network, solid for labels ``all``
    (Exp 1), dashed for ``one`` (Exp 2)."""
    colours = {net: f"C{i}" for i, net in enumerate(dict.fromkeys(c[1] for c in curves.values()))}
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 4.4))
    for name, (labels, net, recall, efficacy) in curves.items():
        style = dict(color=colours[net], ls="-" if labels == "all" else "--", marker="o", ms=3, lw=1.2)
        rk = sorted(k for k in recall if k >= 1)
        left.plot(rk, [recall[k] for k in rk], label=f"{name} ({net})", **style)
        ek = sorted(k for k in efficacy if efficacy[k] is not None)
        right.plot(ek, [efficacy[k] for k in ek], **style)
    left.set_ylabel("recall")
    left.set_ylim(-0.03, 1.03)
    right.set_ylabel("efficacy (1 = as alone)")
    right.axhline(1.0, color="0.5", lw=0.8)
    for ax in (left, right):
        ax.set_xlabel("requested objects k")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=6, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return _save(fig, path)

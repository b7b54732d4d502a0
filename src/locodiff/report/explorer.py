"""The report's explorer: the saved samples, detections and Jacobian maps, to click through in
the browser (one block of report.html: its data inlined as JSON, its script from
``assets/explorer.js``; no CDN, no server).

What it shows is what the stages saved, nothing recomputed: per model, the evaluation's sample
strips per k with each requested location marked found or missed; the locality probe's maps for
its first ``EXPLORER_SCENES`` scenes (the input-pixel Jacobian energy of each probed output pixel
and each conditioner's sensitivity map, at every noise level); recall and the extrapolation
efficacy per k with their 95% intervals; and where generalization is asked, a probed scene per
k = 1..10 with each conditioner's effect alone and among all the others (the extrapolation
probe's maps; a probe made before it kept them shows none). Maps are stored as bytes, each scaled by its own maximum
(``quantized_map``), which the page draws one canvas pixel per map pixel.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np
from safetensors.numpy import load_file

from ..layout import EXTRAPOLATION_MAPS
from .claims import HEADLINE
from .facts import ModelFacts

EXPLORER_SCENES = 4  # probe scenes embedded per model (about 120 kB each at 32 x 32)
MAPS_FILE = "maps.safetensors"


def quantized_map(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps [..., H, W] as uint8 (each scaled to its own maximum) and those maxima [...]."""
    peak = values.reshape(*values.shape[:-2], -1).max(-1)
    scale = np.where(peak > 0, 255.0 / np.where(peak > 0, peak, 1.0), 0.0)
    return np.round(values * scale[..., None, None]).clip(0, 255).astype(np.uint8), peak


def quantized_pair(pair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Effect maps [2, k, H, W] (alone, among) as uint8, each conditioner's two on one scale (its
    larger maximum), and those maxima [k]."""
    peak = pair.max(axis=(0, 2, 3))
    scale = np.where(peak > 0, 255.0 / np.where(peak > 0, peak, 1.0), 0.0)
    return np.round(pair * scale[None, :, None, None]).clip(0, 255).astype(np.uint8), peak


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(path: Path) -> str | None:
    return f"data:image/png;base64,{_b64(path.read_bytes())}" if path.is_file() else None


def _interval(estimate) -> list | None:
    if estimate is None or not np.isfinite(estimate.mean):
        return None
    return [estimate.mean, *(v if np.isfinite(v) else None for v in (estimate.lo, estimate.hi))]


def curves(f: ModelFacts) -> dict:
    """Recall and the extrapolation efficacy per k, as [k, mean, lo, hi] rows."""
    recall = []
    if f.evaluation is not None:
        for k, m in sorted(f.evaluation.per_k.items()):
            if m.recall is not None:
                recall.append([k, m.recall, *(m.recall_ci or (None, None))])
    locality = []
    if f.extrapolation is not None:
        for k in sorted(f.extrapolation.per_k):
            row = _interval(f.extrapolation.band(HEADLINE, k))
            if row is not None:
                locality.append([k, *row])
    return {"recall": recall, "locality": locality}


def samples(f: ModelFacts) -> dict:
    """Per k: the sample strip and, per sample, the requested locations (found or missed) and detections."""
    if f.eval_dir is None:
        return {}
    by_k: dict[int, list[dict]] = {}
    for rec in f.eval_records:
        found = [False] * len(rec["requested"])
        for pair in rec.get("pairs", []):
            found[pair[0]] = True
        by_k.setdefault(rec["k"], []).append({"requested": rec["requested"], "found": found,
                                              "detected": rec["detections"]["centers"], "index": rec["index"]})
    out = {}
    for k, items in sorted(by_k.items()):
        strip = _png(Path(f.eval_dir) / "samples" / f"k{k:02d}.png")
        if strip is not None:
            out[str(k)] = {"strip": strip, "items": sorted(items, key=lambda r: r["index"])}
    return out


def maps(f: ModelFacts, scenes: int = EXPLORER_SCENES) -> dict | None:
    """The probe's first ``scenes`` scenes: image, probed pixels, conditioners and their maps."""
    path = None if f.locality_dir is None else Path(f.locality_dir) / MAPS_FILE
    if path is None or not path.is_file() or f.locality is None:
        return None
    arrays = load_file(str(path))
    if "pixel_energy" not in arrays or "cond_sensitivity" not in arrays:
        return None
    pixel, pixel_peak = quantized_map(arrays["pixel_energy"][:, :scenes])  # [S, B, M, H, W]
    cond, cond_peak = quantized_map(arrays["cond_sensitivity"][:, :scenes])  # [S, B, N, H, W]
    images = ((arrays["images"][:scenes].clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)  # [B, C, H, W]
    rows = []
    for b in range(pixel.shape[1]):
        rows.append({
            "image": _b64(images[b].transpose(1, 2, 0).tobytes()),
            "pixels": arrays["pixels"][b].tolist(),
            "conditioners": arrays["locations"][b][arrays["mask"][b]].round(5).tolist(),
            "pixel_maps": [_b64(pixel[s, b].tobytes()) for s in range(pixel.shape[0])],
            "pixel_peaks": pixel_peak[:, b].tolist(),
            "cond_maps": [_b64(cond[s, b, arrays["mask"][b]].tobytes()) for s in range(cond.shape[0])],
            "cond_peaks": cond_peak[:, b][:, arrays["mask"][b]].tolist(),
        })
    height, width = pixel.shape[-2:]
    return {"sigmas": f.locality["sigmas"], "height": int(height), "width": int(width), "scenes": rows}


def effects(f: ModelFacts) -> dict | None:
    """Per k, the extrapolation probe's first scene: its image, conditioners, and each
    conditioner's effect alone and among the others, the pair scaled to one maximum."""
    path = None if f.locality_dir is None else Path(f.locality_dir) / EXTRAPOLATION_MAPS
    if path is None or not path.is_file():
        return None
    arrays = load_file(str(path))
    keys = sorted(k for k in arrays if k.endswith(".effects"))
    if not keys:
        return None
    out = {}
    for key in keys:
        k = key.split(".")[0]
        maps, peak = quantized_pair(arrays[key][0])  # [2, k, H, W]
        image = ((arrays[f"{k}.images"][0].clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)
        out[str(int(k[1:]))] = {"image": _b64(image.transpose(1, 2, 0).tobytes()),
                                "conditioners": arrays[f"{k}.locations"][0].round(5).tolist(),
                                "alone": _b64(maps[0].tobytes()), "among": _b64(maps[1].tobytes()),
                                "peaks": peak.tolist()}
    height, width = arrays[keys[0]].shape[-2:]
    return {"sigma": float(arrays["sigma"][0]), "height": int(height), "width": int(width), "counts": out}


def explorer_data(facts: list[ModelFacts], colours: Mapping[str, str]) -> dict:
    return {"models": [{"name": f.name, "arch": f.arch, "color": colours[f.name], **curves(f), "samples": samples(f),
                        "maps": maps(f), "effects": effects(f)} for f in facts]}


def explorer_html(facts: list[ModelFacts], colours: Mapping[str, str]) -> str:
    """The explorer block: its data as JSON, then its script. ``colours``: each model's colour in
    the report's figures, kept here."""
    data = json.dumps(explorer_data(facts, colours), separators=(",", ":")).replace("</", "<\\/")
    script = resources.files(__package__).joinpath("assets/explorer.js").read_text()
    return (f"<div id='explorer'></div><script type='application/json' id='explorer-data'>{data}</script>"
            f"<script>{script}</script>")

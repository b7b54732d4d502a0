"""The paper's three SDXL findings, measured on a trained ``diffusers_text`` model and on a
random-weight control of the same shape.

For each noise level, on test scenes and their captions:

1. **Spatial locality in pixel space**: the share of the score's input Jacobian within
   ``radius_px`` of the output pixel (``probe_diffusers``, run on the model *as reloaded from its
   saved diffusers folder*), and the same share for x0's Jacobian (the score's ``-x / sigma^2``
   term alone puts most of its Jacobian on the diagonal, so x0's says more about the network).
2. **Conditional locality in pixel space**: for each object's phrase (its seven tokens as one
   group), where its embedding moves the score — the share of that influence within ``radius_px``
   of the object's location, normalised so that 0 is chance (the disc's area share) and 1 is
   confined; and, per word class, each token's concentration on its top 10% of pixels.
3. **Conditional locality in feature space**: the same phrase share for the output of every
   block of the UNet (the disc scaled to the block's map), and the cosines between colour
   concept directions (one centred object of each colour, minus the empty caption) at the middle.

The paper reports (1) high, (2) low and (3) higher for SDXL. Influence maps are estimated from
random tangents per group (forward mode, ``probes`` JVPs per phrase).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from ..conditioning import Conditioning, Prompt
from ..io import write_json_atomic
from ..layout import TEXT_PROBE
from ..scenes.captions import COUNT_TOKENS, PHRASE_TOKENS, VOCABULARY, WORD_CLASSES, caption_ids
from .diffusers_probe import DiffusersProbeSpec, probe_diffusers, token_fn
from .feature_capture import (
    Sensitivity, capture_features, cosine_matrix, feature_fn, input_sensitivity, mean_difference_vectors,
)
from .feature_space import share_within
from .jacobian import transform_context
from .probe import ProbeSpec, probe_locality

if TYPE_CHECKING:  # types only: the probe takes the model and its UNet's Denoiser as arguments
    from ..models.diffusers_unet import DiffusersDenoiser
    from ..models.text import TextUNet

# Every block the prompt reaches (the finest down block has no attention: the prompt cannot move it).
BLOCKS = ("down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1")
_CLASS_OF = {VOCABULARY.index(w): c for c, words in WORD_CLASSES.items() for w in words}

TEXT_PROBE_PROBES = 4  # random tangents per phrase for the text model's influence maps


def phrase_groups(net: TextUNet, slots: int) -> list[list[int]]:
    """Token positions of each slot's phrase in ``caption_ids``' layout."""
    start = COUNT_TOKENS * net.count_word
    return [list(range(start + PHRASE_TOKENS * j, start + PHRASE_TOKENS * (j + 1))) for j in range(slots)]


def phrase_share(maps: Tensor, cond: Conditioning, side: int, radius_px: float) -> dict:
    """Mean over present phrases of their squared influence's share within ``radius_px`` image
    pixels of their object (``maps`` [B, N, h, w]), the chance share, and the normalised share."""
    share, chance = share_within(maps.double().pow(2), cond.locations.double(), side, radius_px)
    valid = cond.mask & (maps.pow(2).sum((-2, -1)) > 0)
    if not valid.any():
        return {"share": None, "chance": None, "normalised": None, "phrases": 0}
    s, c = float(share[valid].mean()), float(chance[valid].mean())
    return {"share": s, "chance": c, "normalised": (s - c) / (1 - c), "phrases": int(valid.sum()),
            "map": list(maps.shape[-2:])}


def class_concentration(concentration: Sequence[float | None], ids: Tensor) -> dict[str, float]:
    """Per word class, the mean of the tokens' concentrations (``probe_diffusers``' per-token
    values, averaged over images) over the positions whose word has that class in every image."""
    out: dict[str, list[float]] = {}
    for t, value in enumerate(concentration):
        classes = {_CLASS_OF[int(i)] for i in ids[:, t]}
        if value is None or math.isnan(value) or len(classes) != 1:
            continue
        out.setdefault(classes.pop(), []).append(value)
    return {c: sum(v) / len(v) for c, v in out.items()}


def colour_cosines(net: TextUNet, adapter: DiffusersDenoiser, x: Tensor, sigma: float, colors: Sequence[int],
                   blocks: Sequence[str] = BLOCKS) -> dict:
    """Cosines between colour concept directions at each block: one large rubber cube at the
    centre in each colour, minus the empty caption, on the same noisy inputs. Orthogonal
    directions (small off-diagonal |cos|) are the paper's necessary check for composition in
    feature space."""
    b = x.shape[0]

    def features(cond: Conditioning) -> dict[str, Tensor]:
        with torch.no_grad(), capture_features(adapter.unet, list(blocks)) as store:
            adapter(x, sigma, net.prompt(cond))
        return {k: v.float() for k, v in store.items()}

    centre, present = torch.full((b, 1, 2), 0.5), torch.ones(b, 1, dtype=torch.bool)
    concepts = [features(Conditioning(centre, present, torch.tensor([c, 0, 0, 0]).expand(b, 1, 4).clone()))
                for c in colors]
    background = features(Conditioning.empty(b))
    out = {"palette": list(colors), "sigma": float(sigma), "blocks": {}}
    for block in blocks:
        cos = cosine_matrix(mean_difference_vectors([c[block] for c in concepts], background[block]))
        off = cos[~torch.eye(cos.shape[0], dtype=torch.bool)]
        out["blocks"][block] = {"cosine": cos.tolist(), "offdiag_abs_mean": float(off.abs().nanmean())}
    return out


@dataclass(frozen=True)
class TextProbeSpec:
    """What ``probe_text_model`` measures: at each of ``sigmas``, ``pixels`` probed pixels per
    scene, shares within ``radius_px``, ``probes`` random tangents per phrase; colour concept
    cosines for the palette indices ``colors``."""

    sigmas: tuple[float, ...]
    radius_px: float
    pixels: int
    probes: int
    seed: int
    colors: tuple[int, ...] = ()


def probe_text_model(net: TextUNet, adapter: DiffusersDenoiser, images: Tensor, cond: Conditioning,
                     spec: TextProbeSpec) -> dict:
    """The three findings for one model (``adapter``: its UNet as a ``DiffusersDenoiser``, e.g.
    reloaded from its folder; ``net``: where its prompts come from). JSON-able."""
    net.eval()
    with torch.no_grad():
        prompt = net.prompt(cond)
    ids, _ = caption_ids(cond, net.max_objects, net.count_word, net.positions)
    adapter.set_prompt(prompt)
    sigmas, radius_px, pixels, probes, seed = spec.sigmas, spec.radius_px, spec.pixels, spec.probes, spec.seed
    spatial = probe_diffusers(adapter, images, DiffusersProbeSpec(tuple(sigmas), pixels, radius_px, seed=seed))
    # the score's -x / sigma^2 term alone puts its Jacobian on the diagonal; x0's shows how far D reaches
    x0_spec = ProbeSpec(tuple(sigmas), pixels, target="x0", radius=radius_px, keep_maps=False, n_boot=200,
                        batch_size=images.shape[0])
    x0_spatial = probe_locality(adapter, images, Conditioning.empty(images.shape[0]), x0_spec,
                                torch.Generator().manual_seed(seed), progress=False)
    at = x0_spatial.radii.index(float(radius_px))
    groups = phrase_groups(net, cond.slots)
    gen = torch.Generator().manual_seed(seed)
    side = images.shape[-1]
    per_sigma = []
    for sigma, row, x0_row in zip(sigmas, spatial["per_sigma"], x0_spatial.summaries):
        x = images + sigma * torch.randn(images.shape, generator=gen)
        ehs = prompt.encoder_hidden_states
        targets = {"score": token_fn(adapter, x, sigma, prompt)}
        for block in BLOCKS:
            targets[block] = feature_fn(adapter.unet, block, lambda e, x=x, s=sigma: adapter(x, s, Prompt(e)))
        shares = {}
        with transform_context():
            for name, fn in targets.items():
                maps = input_sensitivity(fn, ehs, generator=gen,
                                         how=Sensitivity(mode="sampled", probes=probes, groups=groups))
                shares[name] = phrase_share(maps, cond, side, radius_px)
        per_sigma.append({
            "sigma": float(sigma), "spatial_mass_within": row["mass_within_radius"],
            "spatial_mass_within_x0": x0_row.mass_fraction[at].mean,
            "effective_radius_90": row["effective_radius_90"],
            "token_concentration": class_concentration(row["token_concentration"], ids),
            "phrase_share": shares,
        })
    out = {"sigmas": [float(s) for s in sigmas], "radius_px": float(radius_px), "scenes": int(images.shape[0]),
           "pixels": pixels, "probes": probes, "chance_concentration": spatial["chance_concentration"],
           "blocks": list(BLOCKS), "per_sigma": per_sigma}
    if spec.colors:
        out["colour_cosines"] = colour_cosines(net, adapter, images + torch.randn(images.shape, generator=gen),
                                               1.0, spec.colors)
    return out


def summary(result: dict) -> dict:
    """Means over noise levels of the headline numbers of ``probe_text_model``'s result."""
    rows = result["per_sigma"]

    def mean(values: list) -> float | None:
        given = [v for v in values if v is not None]
        return sum(given) / len(given) if given else None

    blocks = {b: mean([r["phrase_share"][b]["normalised"] for r in rows]) for b in result["blocks"]}
    return {"spatial_mass_within": mean([r["spatial_mass_within"] for r in rows]),
            "spatial_mass_within_x0": mean([r.get("spatial_mass_within_x0") for r in rows]),
            "pixel_phrase_share": mean([r["phrase_share"]["score"]["normalised"] for r in rows]),
            "feature_phrase_share": blocks,
            "colour_offdiag": {b: v["offdiag_abs_mean"] for b, v in result.get("colour_cosines", {}).get("blocks", {}).items()}}


def write_text_probe(folder: Path, results: dict[str, dict]) -> Path:
    """``text_probe.json`` with each model's result and its summary."""
    path = Path(folder) / TEXT_PROBE
    write_json_atomic(path, {name: {**r, "summary": summary(r)} for name, r in results.items()})
    return path

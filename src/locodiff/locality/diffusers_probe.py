"""Locality of a diffusers model's score in latent space: ``locodiff probe-diffusers``.

Two questions, per noise level, on the latents a user gives (or standard-normal ones):

- **Spatial locality**: for sampled output pixels, how much of the score's Jacobian with
  respect to the input latents lies within ``radius_px`` (the pixel-locality statistics of
  ``probe_locality``, with no location conditioners);
- **Conditional locality** with respect to each prompt token: how concentrated a token's
  influence on the score is in space. For every token, the share of its squared sensitivity that
  falls on the top ``top_share`` of the probed pixels: ``top_share`` for an influence spread
  evenly over the image, near 1 for one confined to a small region. The paper found the first
  kind of locality in SDXL's pixel space and little of the second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..conditioning import Conditioning, Prompt
from ..errors import LocodiffError
from ..io import atomic_path, save_tensors, write_json_atomic
from ..progress import track
from .feature_capture import Sensitivity, input_sensitivity
from .figures import save_figure
from .jacobian import Target, as_image_batch, cond_target_fn
from .probe import ProbeSpec, probe_locality, sample_pixels

if TYPE_CHECKING:  # the probe reads any Denoiser that holds a prompt; this is the one it was written for
    from ..models.diffusers_unet import DiffusersDenoiser


def token_fn(
    adapter: DiffusersDenoiser,
    x: Tensor,
    sigma: Tensor | float,
    prompt: Prompt | None = None,
    target: Target = "score",
) -> Callable[[Tensor], Tensor]:
    """``tokens [B, T, D] -> target [B, C, H, W]`` at fixed latents, noise level and the
    rest of the prompt (pooled embedding, time ids): the function token Jacobians
    differentiate. ``target`` is the score or x0, as in ``locality.jacobian``."""
    x = as_image_batch(x)
    p = adapter.resolve_prompt(prompt, x.shape[0])
    return cond_target_fn(adapter, x, sigma, p.with_tokens, target)


# ----- per-token conditional locality --------------------------------------------------------


def token_sensitivity(adapter: DiffusersDenoiser, x: Tensor, sigma: Tensor | float, prompt: Prompt | None = None,
                      pixels=None, target: Target = "score", how: Sensitivity = Sensitivity(),
                      generator: torch.Generator | None = None) -> Tensor:
    """Per-token conditional-locality map: ``|d target_i / d e_k|``, the norm over the embedding
    dimension (and the output channels) of how the score at output pixel ``i`` changes with the
    embedding ``e_k`` of prompt token ``k``.

    Returns ``[B, T, H, W]`` for every latent pixel (``pixels=None``) or ``[B, T, P]`` for the
    given pixels (``[P]`` flat, ``[P, 2]`` or ``[B, P, 2]`` (row, col)). ``how.mode="auto"`` picks
    the cheaper engine (see ``feature_capture.input_sensitivity``): reverse mode, one VJP per probed
    pixel and output channel, unless the ``T x D`` embedding scalars (one JVP each, a JVP
    costing about two VJPs) are fewer. For a real text encoder (D = 768..2048) reverse mode
    always wins, even for the whole map; forward mode only pays for toy embeddings.
    ``how.mode="sampled"`` estimates the whole map from ``probes`` random tangents per token
    (``T x probes`` JVPs): the affordable whole map for a real model; ``groups`` (lists of token
    indices, e.g. each word alone and the padding together) measures groups jointly.
    """
    x = as_image_batch(x)
    p = adapter.resolve_prompt(prompt, x.shape[0])
    g = token_fn(adapter, x, sigma, p, target)
    return input_sensitivity(g, p.encoder_hidden_states, pixels, how, generator)


def token_concentration(sensitivity: Tensor, top_share: float = 0.1) -> Tensor:
    """[B, T, P] sensitivities -> [T]: the mean over images of each token's squared-sensitivity
    share on its top ``top_share`` of pixels (NaN for a token with no influence at all)."""
    energy = sensitivity.double().square()
    k = max(1, math.ceil(top_share * energy.shape[-1]))
    top = energy.topk(k, dim=-1).values.sum(-1)
    total = energy.sum(-1)
    share = torch.where(total > 0, top / total, torch.full_like(total, float("nan")))
    return share.nanmean(0)


@dataclass(frozen=True)
class DiffusersProbeSpec:
    """What ``probe_diffusers`` measures: ``n_pixels`` probed latent pixels per latent at each of
    ``sigmas``, spatial mass within ``radius_px``, each token's share on its top ``top_share`` of
    pixels; with ``words > 0`` the whole per-token map for the first ``words`` tokens (the rest as
    one group) from ``probes`` random tangents each."""

    sigmas: tuple[float, ...]
    n_pixels: int = 16
    radius_px: float = 2.0
    top_share: float = 0.1
    seed: int = 0
    words: int = 0
    probes: int = 1


def probe_diffusers(adapter, latents: Tensor, spec: DiffusersProbeSpec, progress: bool = False) -> dict:
    """Spatial and per-token conditional locality of ``adapter`` (a ``DiffusersDenoiser`` holding
    its prompt) at each sigma; returns a JSON-able summary.

    With ``spec.words > 0`` also the whole per-token map at every latent pixel of the first
    image (``(words + 1) * probes`` JVPs per sigma); the maps ride along under the key
    ``"_token_maps"`` ([sigmas, words + 1, H, W], not JSON) for ``write_probe`` to save."""
    sigmas, n_pixels, radius_px, top_share = spec.sigmas, spec.n_pixels, spec.radius_px, spec.top_share
    words, probes = spec.words, spec.probes
    if latents.ndim != 4:
        raise LocodiffError(f"latents must have shape [B, C, H, W], got {tuple(latents.shape)}")
    b, _, h, w = latents.shape
    tokens = adapter.prompt.tokens
    if words < 0 or (words and tokens < 2):
        raise LocodiffError(f"words={words}: expected 0 (no whole maps) or a count below the {tokens} prompt tokens")
    words = min(words, tokens - 1)
    groups = [[i] for i in range(words)] + [list(range(words, tokens))]
    gen = torch.Generator().manual_seed(spec.seed)
    pixels = sample_pixels(h, w, n_pixels, gen, batch=b)
    # one batch: the held prompt has one row per latent (or one for all), so it cannot be chunked
    probe = ProbeSpec(tuple(sigmas), n_pixels, radius=radius_px, keep_maps=False, n_boot=200, batch_size=b)
    spatial = probe_locality(adapter, latents, Conditioning.empty(b), probe, gen, pixels=pixels, progress=progress)
    r_index = spatial.radii.index(float(radius_px))
    noise = torch.randn(latents.shape, generator=gen, dtype=latents.dtype)
    maps = []
    per_sigma = []
    for sigma, summary in track(zip(spatial.sigmas, spatial.summaries), "token sensitivity", "sigma", enabled=progress):
        sens = token_sensitivity(adapter, latents + sigma * noise, sigma, pixels=pixels)  # [B, T, P]
        conc = token_concentration(sens, top_share)
        per_sigma.append({
            "sigma": sigma,
            "mass_within_radius": summary.mass_fraction[r_index].mean,
            "effective_radius_90": summary.effective_radius[spatial.quantiles.index(0.9)].mean,
            "token_concentration": [None if math.isnan(v) else v for v in conc.tolist()],
            "token_concentration_mean": float(conc.nanmean()),
        })
        if words:
            sampled = Sensitivity(mode="sampled", probes=probes, groups=groups)
            whole = token_sensitivity(adapter, latents[:1] + sigma * noise[:1], sigma, how=sampled,
                                      generator=gen)  # [1, words + 1, H, W]
            maps.append(whole[0].float().cpu())
            whole_conc = token_concentration(whole.flatten(2), top_share)
            per_sigma[-1]["map_concentration"] = [None if math.isnan(v) else v for v in whole_conc.tolist()]
    result = {"latent_shape": list(latents.shape), "sigmas": list(spatial.sigmas), "n_pixels": n_pixels,
              "radius_px": radius_px, "top_share": top_share, "chance_concentration": top_share,
              "per_sigma": per_sigma}
    if words:
        result.update(map_words=words, map_probes=probes, _token_maps=torch.stack(maps))
    return result


def write_probe(result: dict, out_dir: str | Path) -> Path:
    """``probe.json`` and ``token_concentration.png`` in ``out_dir``."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = dict(result)
    maps = result.pop("_token_maps", None)
    write_json_atomic(out / "probe.json", result)
    import matplotlib.pyplot as plt

    if maps is not None:

        with atomic_path(out / "token_maps.safetensors") as tmp:
            save_tensors({"maps": maps.contiguous()}, str(tmp))
        save_figure(_token_map_figure(maps, result), out / "token_maps.png")

    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for i, row in enumerate(result["per_sigma"]):
        vals = [float("nan") if v is None else v for v in row["token_concentration"]]
        ax.plot(range(len(vals)), vals, "o-", ms=2, lw=1, color=f"C{i}", label=f"σ = {row['sigma']:g}")
    ax.axhline(result["chance_concentration"], ls=":", color="k", lw=1, label="spread evenly")
    ax.set_xlabel("prompt token")
    ax.set_ylabel(f"share on top {result['top_share']:.0%} of pixels")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "token_concentration.png")
    return out / "probe.json"


def _token_map_figure(maps: Tensor, result: dict):
    """One row per sigma, one panel per mapped token (the last: the padding group)."""
    import matplotlib.pyplot as plt

    n_sigma, n_maps = maps.shape[:2]
    fig, axes = plt.subplots(n_sigma, n_maps, figsize=(1.1 * n_maps, 1.15 * n_sigma), squeeze=False)
    for i in range(n_sigma):
        for j in range(n_maps):
            ax = axes[i, j]
            ax.imshow(maps[i, j].numpy(), cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("pad" if j == n_maps - 1 else f"t{j}", fontsize=7)
        axes[i, 0].set_ylabel(f"σ={result['sigmas'][i]:g}", fontsize=7)
    fig.tight_layout()
    return fig


def load_prompt_file(path: str | Path):
    """A ``Prompt`` from a .safetensors file with ``encoder_hidden_states`` [B|1, T, D] (and, for
    SDXL, ``text_embeds`` and ``time_ids``), e.g. saved from a pipeline's ``encode_prompt``."""

    path = Path(path)
    if not path.is_file():
        raise LocodiffError(f"prompt embeddings file {str(path)!r} does not exist")
    try:
        t = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise LocodiffError(f"cannot read prompt embeddings {str(path)!r}: {e}") from None
    if "encoder_hidden_states" not in t:
        raise LocodiffError(f"{str(path)!r} holds {sorted(t)}; expected at least 'encoder_hidden_states' [B, T, D]")
    return Prompt(t["encoder_hidden_states"], t.get("text_embeds"), t.get("time_ids"))


def summary_lines(result: dict) -> list[str]:
    lines = [f"sigma    spatial mass within {result['radius_px']:g} px   r90 (px)   token concentration "
             f"(chance {result['chance_concentration']:.2f})"]
    for r in result["per_sigma"]:
        lines.append(f"{r['sigma']:<8g} {r['mass_within_radius']:.3f}                      "
                     f"{r['effective_radius_90']:.2f}      {r['token_concentration_mean']:.3f}")
    return lines

"""Architecture registry: build a network from a ``ModelConfig`` and describe it.

``build_network(cfg)`` returns a ``Network`` (trained and checkpointed as itself; its Denoiser is
``as_denoiser(net)``, one path for every architecture); ``describe(cfg)`` reports its parameter
count and how far a pixel's dependence reaches; ``conditioned_on(arch)`` what it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..conditioning import Conditioning
from ..denoiser import ConditionedOn, Denoiser
from ..errors import ConfigError
from ..hardware import best_seconds
from .config import ARCHITECTURES, UNET_ARCHITECTURES, ModelConfig
from .local import LocalNet
from .network import Network
from .mechanisms import CrossAttentionConditioning, GlobalConditioning, Mechanism, SpatialConditioning
from .text import TextUNet
from .unet import UNet


def _emb_dim(cfg: ModelConfig) -> int:
    return 4 * cfg.channels[0]


def _cross_attention(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg, CrossAttentionConditioning(cfg), _emb_dim(cfg))


def _spatial(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg, SpatialConditioning(cfg), _emb_dim(cfg))


def _global(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg, GlobalConditioning(cfg, _emb_dim(cfg)), _emb_dim(cfg))


def _local(cfg: ModelConfig) -> nn.Module:
    return LocalNet(cfg)


_BUILDERS: dict[str, Callable[[ModelConfig], Network]] = {
    "cross_attention": _cross_attention,
    "spatial": _spatial,
    "global": _global,
    "local": _local,
    "diffusers_text": TextUNet,
}
assert list(_BUILDERS) == ARCHITECTURES
_CLASSES: dict[str, type[Network]] = {
    "cross_attention": UNet, "spatial": UNet, "global": UNet, "local": LocalNet, "diffusers_text": TextUNet,
}


def register_mechanism(name: str, make: Callable[[ModelConfig, int], Mechanism]) -> None:
    """Make ``model.arch = name`` build locodiff's UNet backbone with the conditioning mechanism
    ``make(cfg, emb_dim)`` returns (a ``Mechanism``; ``emb_dim`` is the noise embedding's width, for
    a mechanism that adds to it). Training, evaluation, the probes and the study then take the new
    architecture like the built-in ones; the README's "Extending locodiff" walks through it."""
    if name in _BUILDERS:
        raise ConfigError(f"architecture {name!r} is already registered")
    _BUILDERS[name] = lambda cfg: UNet(cfg, make(cfg, _emb_dim(cfg)), _emb_dim(cfg))
    _CLASSES[name] = UNet
    ARCHITECTURES.append(name)
    UNET_ARCHITECTURES.append(name)


def available_architectures() -> tuple[str, ...]:
    return tuple(ARCHITECTURES)


def build_network(cfg: ModelConfig) -> Network:
    """The network for ``cfg`` (``None`` options resolved to the architecture's defaults)."""
    return _BUILDERS[cfg.arch](cfg.resolved())


def as_denoiser(net: nn.Module) -> Denoiser:
    """The Denoiser of a built network, or of one wrapped for data-parallel training (see
    ``Network.as_denoiser``)."""
    inner = extract_model_from_parallel(net)
    return inner.as_denoiser(None if inner is net else net)


def _probe_input(cfg: ModelConfig, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    """A network's input for counting and timing: ``batch`` blank images with three conditioners
    (attributes included, for the networks that read them)."""
    x = torch.zeros(batch, cfg.image_channels, cfg.image_size, cfg.image_size)
    cond = Conditioning.from_lists([[(0.3, 0.3), (0.6, 0.6), (0.5, 0.2)]] * batch)
    cond.attributes = torch.tensor([[[0, 0, 0, 0], [1, 1, 0, 1], [2, 2, 1, 0]]] * batch)  # colour, shape, size, material
    return x, torch.zeros(batch), cond


def _fresh_network(cfg: ModelConfig) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the global random stream is left untouched
        return build_network(cfg)


@lru_cache(maxsize=None)
def forward_flops(cfg: ModelConfig) -> int:
    """Floating-point operations of one forward pass on one image with three conditioners, counted
    by torch's flop counter on a network built for the purpose: what a training image costs, up
    to a factor shared by the family. Cached: a study asks for each model under every seed."""
    cfg = cfg.resolved()
    net = _fresh_network(cfg)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(*_probe_input(cfg))
    return int(counter.get_total_flops())


@lru_cache(maxsize=None)
def training_seconds_per_image(cfg: ModelConfig, batch: int) -> float:
    """Seconds one training image takes on one thread of this machine, measured now (three steps):
    forward and backward of a ``batch``-image step, channels-last as training runs it. The study
    orders its jobs by this, not by FLOPs: per FLOP the quick preset's local network trains a
    third faster than its UNets (48 vs 36 GFLOP/s in a quick study on an AVX2 Zen 3 core)."""
    cfg = cfg.resolved()
    net = _fresh_network(cfg).to(memory_format=torch.channels_last)
    inputs = _probe_input(cfg, batch)
    return best_seconds(lambda: net(*inputs).square().mean().backward(), repeats=2, threads=1) / batch


def conditioned_on(arch: str) -> ConditionedOn:
    """What the networks of ``arch`` read of a Conditioning, as their class declares."""
    return _CLASSES[arch].conditioned_on


@dataclass(frozen=True)
class ArchitectureInfo:
    arch: str
    param_count: int
    # Radius in px (Chebyshev) of the input pixels an output pixel depends on; None = global.
    receptive_field: int | None
    # Distance in px (Chebyshev) beyond which a conditioner cannot affect a pixel; None = global.
    conditioner_window: float | None
    # Radius in px reached by the convolution path alone (exact for local, an upper-bound
    # estimate for UNets, whose GroupNorm and attention make them global anyway).
    conv_radius: int
    note: str


def param_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def unet_conv_radius(cfg: ModelConfig) -> int:
    """Receptive-field radius of the UNet's deepest conv path, in input pixels.

    Walks the layers with the current pixel spacing ``jump``: a 3x3 conv at spacing ``j`` adds
    ``j``; a stride-2 conv adds ``j`` then doubles ``j``; nearest up-sampling halves ``j`` (its
    half-pixel replication is counted as up to ``j / 2`` more). A patch stem scales the result by
    the patch side (plus the patch itself).
    """
    radius, jump = 1, 1  # conv_in
    for level in range(cfg.levels):
        radius += 2 * jump * cfg.res_blocks
        if level < cfg.levels - 1:
            radius += jump
            jump *= 2
    radius += 4 * jump  # two middle blocks
    for level in reversed(range(cfg.levels)):
        radius += 2 * jump * cfg.res_blocks
        if level > 0:
            jump //= 2
            radius += jump + jump  # replication + the conv after it
    radius += 1  # conv_out
    return radius * cfg.patch_size + cfg.patch_size - 1


_NOTES = {
    "global": "global: the pooled conditioner vector modulates every pixel (non-local baseline)",
    "local": "local by construction: per-pixel norms, no down-sampling or attention; "
    "exact receptive field; bumps cut off hard",
    "diffusers_text": "global: a diffusers UNet2DConditionModel (GroupNorm, self-attention) reading a caption "
    "through cross-attention at every level; no location enters except as coarse position words",
}


def locality_note(cfg: ModelConfig) -> str:
    """What in the network lets a pixel depend on far pixels or conditioners (``cfg`` resolved)."""
    if cfg.arch in _NOTES:
        return _NOTES[cfg.arch]
    mixers = ["GroupNorm statistics"] if cfg.norm == "group" else []
    mixers += ["self-attention"] if cfg.attention_resolutions else []
    if cfg.arch == "cross_attention":
        mixers += ["a softmax over all tokens"] if cfg.cross_attention.weights == "softmax" else []
        tail = "cross-attention reaches every token from every pixel"
    elif cfg.arch == "spatial":
        tail = "conditioners enter locally (bumps)"
    else:  # a registered mechanism
        tail = f"conditioners enter through the {cfg.arch!r} mechanism"
    verb = "mix" if len(mixers) > 1 else "mixes"
    where = f"{', '.join(mixers)} {verb} the whole image" if mixers else "per-pixel norms"
    return f"global: {where}; {tail}, and the down-sampled levels reach far"


def describe(cfg: ModelConfig) -> ArchitectureInfo:
    """Parameter count and locality of the network ``cfg`` builds (built on the meta device: no
    memory, and the global random stream is left untouched)."""
    cfg = cfg.resolved()
    with torch.device("meta"):
        net = build_network(cfg)
    if cfg.arch == "local":
        assert isinstance(net, LocalNet)
        rf, window, conv = net.radius, net.conditioner_window, net.radius
    else:
        rf, window, conv = None, None, unet_conv_radius(cfg)
    return ArchitectureInfo(cfg.arch, param_count(net), rf, window, conv, locality_note(cfg))

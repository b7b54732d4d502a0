"""Model options: a backbone shared by the family, and one section per conditioning mechanism.

Options shared by several architectures (widths, encodings) always carry a value and are ignored
where unused. A mechanism's own options are a section (``model.cross_attention``, ``model.local``,
``model.caption``), absent unless that mechanism is the architecture; giving a section to another
architecture is an error rather than a silent no-op, so a config never claims something the
network does not do. ``resolved()`` fills in the architecture's section and defaults, which is
the form to save beside a checkpoint. Options that moved into a section still read under their
old flat names (``MOVED``), and run folders keep the names they had (``legacy_identity``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import IDENTITY_UNLESS_DEFAULT, SIGNED
from ..errors import ConfigError
from ..scenes.encodings import MAX_FREQ_LOG2

# Names of the architectures (the registry in ``registry.py`` maps each to a builder; a
# mechanism registered there with ``register_mechanism`` is added to both lists).
ARCHITECTURES = ["cross_attention", "spatial", "global", "local", "diffusers_text"]
UNET_ARCHITECTURES = ["cross_attention", "spatial", "global"]

# Arch-specific defaults, applied by ``ModelConfig.resolved``.
DEFAULT_SELF_ATTENTION_MAX_RES = 8  # self-attention at 16x16 is slow on CPU
DEFAULT_CROSS_ATTENTION_MAX_RES = 16  # cross-attention to <= 11 tokens is cheap
DEFAULT_LOCAL_CUTOFF = 3.0
DEFAULT_SIGMOID_BIAS = -1.4  # sigmoid(-1.4) ~ 0.2: a token starts at a fifth of full weight


@dataclass(frozen=True)
class CrossAttentionOptions:
    """``cross_attention``: pixels attend to location tokens plus a learned null token."""

    resolutions: tuple[int, ...] | None = None  # levels with cross-attention; None = every level <= 16 px
    # pixel-position term on the queries: without it placement had not been learned at 32x32 after
    # 9 CPU minutes in a quick experiment
    query_position: bool = True
    shared_position: bool = False  # keys get the queries' position encoding of their location
    position_bias_px: float = 0.0  # learned distance bias on attention logits, initial width px; 0 = off
    # hard locality mask: a pixel attends only to tokens within this many px (and the null token); None = off
    attention_radius_px: float | None = field(default=None, metadata=IDENTITY_UNLESS_DEFAULT)
    # How a pixel weighs the tokens. softmax: the weights sum to 1 over the tokens, so each of k
    # tokens gets ~1/k of a pixel's attention and a conditioner's effect shrinks as others are added
    # (a count coupling). sigmoid: each token's weight is sigmoid(q.k / sqrt(d) + sigmoid_bias) on
    # its own, unnormalised, so a token's contribution does not depend on which others are present.
    weights: Literal["softmax", "sigmoid"] = field(default="softmax", metadata=IDENTITY_UNLESS_DEFAULT)
    sigmoid_bias: float = field(default=DEFAULT_SIGMOID_BIAS, metadata={**IDENTITY_UNLESS_DEFAULT, **SIGNED})

    def __post_init__(self) -> None:
        if self.weights == "softmax" and self.sigmoid_bias != DEFAULT_SIGMOID_BIAS:
            raise ConfigError(f"model.cross_attention.sigmoid_bias={self.sigmoid_bias} has no effect with "
                              "weights='softmax'; set weights='sigmoid' or leave it unset")
        if self.shared_position and not self.query_position:
            raise ConfigError("model.cross_attention.shared_position=true needs query_position=true")
        if self.attention_radius_px is not None and not self.attention_radius_px > 0:
            raise ConfigError(f"model.cross_attention.attention_radius_px={self.attention_radius_px}: "
                              "expected a radius > 0 pixels (unset = off)")


@dataclass(frozen=True)
class LocalOptions:
    """``local``: a network local by construction (``models.local``)."""

    radius: int = 8  # receptive-field radius in px (= 3x3 convs)
    width: int = 64  # channels

    def __post_init__(self) -> None:
        if self.radius < 1 or self.width < 1:
            raise ConfigError(f"model.local: radius={self.radius}, width={self.width}: expected >= 1")


@dataclass(frozen=True)
class CaptionOptions:
    """``diffusers_text``: a diffusers UNet2DConditionModel reading CLEVR captions (``models.text``)."""

    objects: int = 10  # phrases a caption has room for (the evaluation's largest k)
    count_word: bool = False  # lead with "three objects"
    text_layers: int = 2  # caption-encoder layers: one within phrases, the rest over the caption
    # False: phrases without the 3 x 3 cell words ("large red metal cube"), as prompts that name
    # objects, not positions (the paper's SDXL statements are about such prompts)
    positions: bool = field(default=True, metadata=IDENTITY_UNLESS_DEFAULT)

    def __post_init__(self) -> None:
        if self.objects < 1 or self.text_layers < 1:
            raise ConfigError(f"model.caption: objects={self.objects}, text_layers={self.text_layers}: expected >= 1")


# the section of each mechanism that has one
SECTIONS = {"cross_attention": "cross_attention", "local": "local", "diffusers_text": "caption"}
_SECTION_TYPES = {"cross_attention": CrossAttentionOptions, "local": LocalOptions, "caption": CaptionOptions}


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "spatial"  # conditioning mechanism / network: one of ARCHITECTURES
    image_size: int = 32  # training resolution (square); places the attention levels
    image_channels: int = 3  # channels of the images being denoised
    # --- UNet backbone (cross_attention, spatial, global; the widths also diffusers_text) ---
    channels: tuple[int, ...] = (32, 64, 64)  # width per level; level i is image_size / patch_size / 2**i px
    patch_size: int = 1  # pixel-unshuffle stem / pixel-shuffle head: the UNet runs on patch x patch blocks
    res_blocks: int = 1  # residual blocks per level, in the encoder and in the decoder
    attention_resolutions: tuple[int, ...] | None = None  # self-attention; None = levels <= 8 px
    # Normalisation in the UNet's blocks. group: GroupNorm, whose statistics pool the whole image, so
    # every added object renormalises every pixel (a count coupling); pixel: LayerNorm over the
    # channels of each pixel alone (a block's output at a pixel then depends only on the pixels its
    # convolutions reach); none: no normalisation.
    norm: Literal["group", "pixel", "none"] = field(default="group", metadata=IDENTITY_UNLESS_DEFAULT)
    norm_groups: int = 8  # GroupNorm groups; must divide every width (norm = "group")
    head_dim: int = 32  # attention head width (heads = width // head_dim, at least 1)
    dropout: float = 0.0  # dropout inside residual blocks
    # --- conditioner encodings ---
    n_freqs: int = 6  # location Fourier frequencies 2**0 .. 2**(n_freqs-1) (token archs)
    token_dim: int = 64  # width of conditioner tokens (cross_attention, global)
    use_attributes: bool = False  # embed colour/shape/size/material too (all archs)
    bump_sigma_px: float = 1.5  # Gaussian bump std in full-resolution pixels (spatial, local)
    bump_cutoff: float | None = None  # bumps are 0 beyond cutoff * bump_sigma_px (spatial, local); None = 3 (local)
    # --- the mechanism's own section (absent for the others) ---
    cross_attention: CrossAttentionOptions | None = None
    local: LocalOptions | None = None
    caption: CaptionOptions | None = None

    MOVED: ClassVar[dict[str, str]] = {
        "cross_attention_resolutions": "cross_attention.resolutions",
        "query_position": "cross_attention.query_position",
        "shared_position": "cross_attention.shared_position",
        "position_bias_px": "cross_attention.position_bias_px",
        "attention_radius_px": "cross_attention.attention_radius_px",
        "local_radius": "local.radius", "local_width": "local.width",
        "caption_objects": "caption.objects", "caption_count": "caption.count_word", "text_layers": "caption.text_layers",
    }

    def __post_init__(self) -> None:
        self._check_arch_options()
        self._check_backbone()
        self._check_encodings()

    def legacy_identity(self, identity: dict) -> dict:
        """The identity as run folders were named when the sections' options were flat (and
        ``None`` where they did not apply), so existing folders keep their names."""
        ca, lo, cap = (identity.pop(name, None) for name in ("cross_attention", "local", "caption"))
        flat = {"cross_attention_resolutions": (ca or {}).get("resolutions")}
        flat.update({name: (ca or {}).get(name) for name in ("query_position", "shared_position", "position_bias_px")})
        if ca and ca.get("attention_radius_px") is not None:
            flat["attention_radius_px"] = ca["attention_radius_px"]
        flat.update({name: ca[name] for name in ("weights", "sigmoid_bias") if name in (ca or {})})  # unless default
        flat.update(local_radius=(lo or {}).get("radius"), local_width=(lo or {}).get("width"))
        if cap:
            flat.update(caption_objects=cap["objects"], caption_count=cap["count_word"], text_layers=cap["text_layers"])
            if "positions" in cap:  # only when not the default (position words), which older folders had
                flat["caption_positions"] = cap["positions"]
        return {**identity, **flat}

    # ----- derived values -------------------------------------------------------------------
    @property
    def levels(self) -> int:
        return len(self.channels)

    def level_resolutions(self) -> tuple[int, ...]:
        """Side length in grid cells of each UNet level at ``image_size`` (one cell of level 0 is
        ``patch_size`` x ``patch_size`` pixels)."""
        return tuple(self.image_size // self.patch_size // 2**i for i in range(self.levels))

    def resolved(self) -> "ModelConfig":
        """The same config with the architecture's section and defaults filled in (``None`` where
        they do not apply)."""
        res = self.level_resolutions()
        unet = self.arch in UNET_ARCHITECTURES
        filled: dict[str, object] = {}
        if self.attention_resolutions is None:
            filled["attention_resolutions"] = tuple(r for r in res if r <= DEFAULT_SELF_ATTENTION_MAX_RES) if unet else ()
        section = SECTIONS.get(self.arch)
        if section is not None:
            filled[section] = getattr(self, section) or _SECTION_TYPES[section]()
        if self.arch == "cross_attention" and filled["cross_attention"].resolutions is None:
            filled["cross_attention"] = dataclasses.replace(
                filled["cross_attention"], resolutions=tuple(r for r in res if r <= DEFAULT_CROSS_ATTENTION_MAX_RES))
        if self.arch == "local" and self.bump_cutoff is None:
            filled["bump_cutoff"] = DEFAULT_LOCAL_CUTOFF
        return dataclasses.replace(self, **filled)

    # ----- validation -----------------------------------------------------------------------
    def _check_arch_options(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"model.arch={self.arch!r}: unknown architecture; expected one of {list(ARCHITECTURES)}")
        for arch, section in SECTIONS.items():
            if getattr(self, section) is not None and self.arch != arch:
                raise ConfigError(f"model.{section} has no effect with model.arch={self.arch!r}; it applies to "
                                  f"{arch!r} only (leave it unset)")
        if self.patch_size != 1 and self.arch not in UNET_ARCHITECTURES:
            raise ConfigError(f"model.patch_size={self.patch_size} has no effect with model.arch={self.arch!r}; "
                              f"it applies to {list(UNET_ARCHITECTURES)} only (leave it unset)")
        if self.bump_cutoff is not None and self.arch not in ("local", "spatial"):
            raise ConfigError(f"model.bump_cutoff={self.bump_cutoff} has no effect with model.arch={self.arch!r}; "
                              "it applies to ['local', 'spatial'] only (leave it unset)")
        if self.bump_cutoff is not None and self.bump_cutoff <= 0:
            raise ConfigError(f"model.bump_cutoff={self.bump_cutoff}: expected > 0 (in units of bump_sigma_px)")
        if self.norm != "group" and self.arch not in UNET_ARCHITECTURES:
            why = ("keeps SDXL's layout (GroupNorm)" if self.arch == "diffusers_text"
                   else "normalises each pixel by construction")
            raise ConfigError(f"model.norm={self.norm!r} has no effect with model.arch={self.arch!r}, which {why}; "
                              f"it applies to {list(UNET_ARCHITECTURES)} only (leave it unset)")
        if self.arch == "diffusers_text" and len(self.channels) < 2:
            raise ConfigError(f"model.channels={list(self.channels)}: a diffusers_text UNet needs >= 2 levels "
                              "(the finest has no attention, as in SDXL)")
        if self.arch in ("diffusers_text", "local") and self.attention_resolutions:
            why = ("has self- and cross-attention in every block (SD-style)" if self.arch == "diffusers_text" else
                   "has no self-attention (it would let every pixel see the whole image)")
            raise ConfigError(f"model.attention_resolutions={list(self.attention_resolutions)}: the {self.arch} "
                              f"architecture {why}; leave it unset")

    def _check_backbone(self) -> None:
        if self.image_channels < 1:
            raise ConfigError(f"model.image_channels={self.image_channels}: expected >= 1")
        if self.image_size < 1:
            raise ConfigError(f"model.image_size={self.image_size}: expected >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout}: expected in [0, 1)")
        if self.head_dim < 1:
            raise ConfigError(f"model.head_dim={self.head_dim}: expected >= 1")
        if self.arch not in UNET_ARCHITECTURES + ["diffusers_text"]:
            return
        if not self.channels:
            raise ConfigError(
                "model.channels is empty: expected one width per level, e.g. [32, 64, 64]"
            )
        if any(c < 1 for c in self.channels):
            raise ConfigError(f"model.channels={list(self.channels)}: widths must be >= 1")
        if self.res_blocks < 1:
            raise ConfigError(f"model.res_blocks={self.res_blocks}: expected >= 1")
        if self.norm == "group" and (self.norm_groups < 1 or any(c % self.norm_groups for c in self.channels)):
            raise ConfigError(
                f"model.norm_groups={self.norm_groups} must divide every width in "
                f"model.channels={list(self.channels)}"
            )
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ConfigError(
                f"model.patch_size={self.patch_size}: expected a positive divisor of "
                f"model.image_size={self.image_size}"
            )
        bottom = 2 ** (self.levels - 1) * self.patch_size
        if self.image_size % bottom or self.image_size // bottom < 2:
            raise ConfigError(
                f"model.image_size={self.image_size} cannot be halved {self.levels - 1} times "
                f"(model.channels has {self.levels} levels"
                + (f", on {self.patch_size}-px patches" if self.patch_size > 1 else "")
                + f"): expected a multiple of {bottom} and at least {2 * bottom}"
            )
        self._check_levels()

    def _check_levels(self) -> None:
        """Attention levels that exist, and widths that split into whole heads."""
        res = self.level_resolutions()
        ca = self.cross_attention.resolutions if self.cross_attention else None
        for name, values in (("attention_resolutions", self.attention_resolutions), ("cross_attention.resolutions", ca)):
            for r in values or ():
                if r not in res:
                    raise ConfigError(
                        f"model.{name} contains {r}, which is not a level of this UNet; "
                        f"the levels are {list(res)} px (image_size / 2**level)"
                    )
        for level, width in enumerate(self.channels):
            heads = max(1, width // self.head_dim)
            if width % heads:
                raise ConfigError(
                    f"model.channels[{level}]={width} does not split into {heads} heads of "
                    f"about model.head_dim={self.head_dim}; pick a width divisible by the "
                    "head count"
                )

    def _check_encodings(self) -> None:
        if not 1 <= self.n_freqs <= MAX_FREQ_LOG2 + 1:
            raise ConfigError(
                f"model.n_freqs={self.n_freqs}: expected 1..{MAX_FREQ_LOG2 + 1} "
                f"(frequencies above 2**{MAX_FREQ_LOG2} alias and spoil location Jacobians)"
            )
        if self.token_dim < 1:
            raise ConfigError(f"model.token_dim={self.token_dim}: expected >= 1")
        if self.bump_sigma_px <= 0:
            raise ConfigError(f"model.bump_sigma_px={self.bump_sigma_px}: expected > 0 pixels")

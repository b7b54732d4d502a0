"""Model options: one frozen dataclass for every architecture in the family.

Options shared by several architectures (widths, encodings) always carry a value and are ignored
where unused. Options that only make sense for one architecture default to ``None``, meaning
"that architecture's default"; setting one for an architecture that has no use for it is an
error rather than a silent no-op, so a config never claims something the network does not do.
``resolved()`` fills the ``None``s in, which is the form to save beside a checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..config import IDENTITY_UNLESS_DEFAULT
from ..errors import ConfigError
from ..scenes.encodings import MAX_FREQ_LOG2

# Names of the architectures (the registry in ``registry.py`` maps each to a builder).
ARCHITECTURES = ("cross_attention", "spatial", "global", "local", "diffusers_text")
UNET_ARCHITECTURES = ("cross_attention", "spatial", "global")

# Arch-specific defaults, applied by ``ModelConfig.resolved``.
DEFAULT_SELF_ATTENTION_MAX_RES = 8  # self-attention at 16x16 is slow on CPU
DEFAULT_CROSS_ATTENTION_MAX_RES = 16  # cross-attention to <= 11 tokens is cheap
DEFAULT_LOCAL_RADIUS = 8
DEFAULT_LOCAL_WIDTH = 64
DEFAULT_LOCAL_CUTOFF = 3.0
DEFAULT_CAPTION_OBJECTS = 10  # phrases a diffusers_text caption has room for (the evaluation's largest k)
DEFAULT_TEXT_LAYERS = 2  # caption-encoder layers: one within phrases, the rest over the caption


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "spatial"  # conditioning mechanism / network: one of ARCHITECTURES
    image_size: int = 32  # training resolution (square); places the attention levels
    image_channels: int = 3  # channels of the images being denoised
    # --- UNet backbone (cross_attention, spatial, global) ---
    channels: tuple[int, ...] = (32, 64, 64)  # width per level; level i is image_size / patch_size / 2**i px
    patch_size: int = 1  # pixel-unshuffle stem / pixel-shuffle head: the UNet runs on patch x patch blocks
    res_blocks: int = 1  # residual blocks per level, in the encoder and in the decoder
    attention_resolutions: tuple[int, ...] | None = None  # self-attention; None = levels <= 8 px
    norm_groups: int = 8  # GroupNorm groups; must divide every width
    head_dim: int = 32  # attention head width (heads = width // head_dim, at least 1)
    dropout: float = 0.0  # dropout inside residual blocks
    # --- conditioner encodings ---
    n_freqs: int = 6  # location Fourier frequencies 2**0 .. 2**(n_freqs-1) (token archs)
    token_dim: int = 64  # width of conditioner tokens (cross_attention, global)
    use_attributes: bool = False  # embed colour/shape/size/material too (all archs)
    bump_sigma_px: float = 1.5  # Gaussian bump std in full-resolution pixels (spatial, local)
    # --- cross_attention only ---
    cross_attention_resolutions: tuple[int, ...] | None = None  # None = every level <= 16 px
    query_position: bool | None = None  # pixel-position term on the queries; None = on
    shared_position: bool | None = None  # keys get the queries' position encoding of their location; None = off
    position_bias_px: float | None = None  # learned distance bias on attention logits, initial width px; None/0 = off
    # hard locality mask: a pixel attends only to tokens within this many px (and the null token); None = off
    attention_radius_px: float | None = field(default=None, metadata=IDENTITY_UNLESS_DEFAULT)
    # --- local only (spatial may also set bump_cutoff) ---
    local_radius: int | None = None  # receptive-field radius in px (= 3x3 convs); None = 8
    local_width: int | None = None  # channels of the local network; None = 64
    bump_cutoff: float | None = None  # bumps are 0 beyond cutoff * bump_sigma_px; None = 3 (local)
    # --- diffusers_text only (a diffusers UNet2DConditionModel reading CLEVR captions; models/text.py) ---
    caption_objects: int | None = field(default=None, metadata=IDENTITY_UNLESS_DEFAULT)  # phrases per caption; None = 10
    caption_count: bool | None = field(default=None, metadata=IDENTITY_UNLESS_DEFAULT)  # lead with "three objects"; None = no
    text_layers: int | None = field(default=None, metadata=IDENTITY_UNLESS_DEFAULT)  # caption-encoder layers; None = 2

    def __post_init__(self) -> None:
        self._check_arch_options()
        self._check_backbone()
        self._check_encodings()

    # ----- derived values -------------------------------------------------------------------
    @property
    def levels(self) -> int:
        return len(self.channels)

    def level_resolutions(self) -> tuple[int, ...]:
        """Side length in grid cells of each UNet level at ``image_size`` (one cell of level 0 is
        ``patch_size`` x ``patch_size`` pixels)."""
        return tuple(self.image_size // self.patch_size // 2**i for i in range(self.levels))

    def resolved(self) -> "ModelConfig":
        """The same config with each applicable ``None`` replaced by the architecture's default.

        Options that do not apply to ``arch`` stay ``None``.
        """
        res = self.level_resolutions()
        defaults: dict[str, object] = {}
        if self.arch in UNET_ARCHITECTURES:
            defaults["attention_resolutions"] = tuple(
                r for r in res if r <= DEFAULT_SELF_ATTENTION_MAX_RES
            )
        else:
            defaults["attention_resolutions"] = ()
        if self.arch == "cross_attention":
            defaults["cross_attention_resolutions"] = tuple(
                r for r in res if r <= DEFAULT_CROSS_ATTENTION_MAX_RES
            )
            defaults["query_position"] = True
            defaults["shared_position"] = False
            defaults["position_bias_px"] = 0.0
        if self.arch == "local":
            defaults["local_radius"] = DEFAULT_LOCAL_RADIUS
            defaults["local_width"] = DEFAULT_LOCAL_WIDTH
            defaults["bump_cutoff"] = DEFAULT_LOCAL_CUTOFF
        if self.arch == "diffusers_text":
            defaults["caption_objects"] = DEFAULT_CAPTION_OBJECTS
            defaults["caption_count"] = False
            defaults["text_layers"] = DEFAULT_TEXT_LAYERS
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)

    # ----- validation -----------------------------------------------------------------------
    def _check_arch_options(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(
                f"model.arch={self.arch!r}: unknown architecture; "
                f"expected one of {list(ARCHITECTURES)}"
            )
        only = {
            "cross_attention_resolutions": ("cross_attention",),
            "query_position": ("cross_attention",),
            "shared_position": ("cross_attention",),
            "position_bias_px": ("cross_attention",),
            "attention_radius_px": ("cross_attention",),
            "local_radius": ("local",),
            "local_width": ("local",),
            "bump_cutoff": ("local", "spatial"),
            "caption_objects": ("diffusers_text",),
            "caption_count": ("diffusers_text",),
            "text_layers": ("diffusers_text",),
        }
        if self.patch_size != 1 and self.arch not in UNET_ARCHITECTURES:
            raise ConfigError(
                f"model.patch_size={self.patch_size} has no effect with model.arch={self.arch!r}; "
                f"it applies to {list(UNET_ARCHITECTURES)} only (leave it unset)"
            )
        for name, archs in only.items():
            value = getattr(self, name)
            if value is not None and self.arch not in archs:
                raise ConfigError(
                    f"model.{name}={value!r} has no effect with model.arch={self.arch!r}; "
                    f"it applies to {list(archs)} only (leave it unset)"
                )
        if self.shared_position and self.query_position is False:
            raise ConfigError(
                "model.shared_position=true needs the query position term; leave "
                "model.query_position unset or true"
            )
        if self.attention_radius_px is not None and not self.attention_radius_px > 0:
            raise ConfigError(f"model.attention_radius_px={self.attention_radius_px}: expected a radius > 0 pixels (unset = off)")
        if self.position_bias_px is not None and self.position_bias_px < 0:
            raise ConfigError(f"model.position_bias_px={self.position_bias_px}: expected >= 0 pixels (0 = off)")
        if self.arch == "diffusers_text" and len(self.channels) < 2:
            raise ConfigError(f"model.channels={list(self.channels)}: a diffusers_text UNet needs >= 2 levels "
                              "(the finest has no attention, as in SDXL)")
        if self.arch == "diffusers_text" and self.attention_resolutions:
            raise ConfigError(
                f"model.attention_resolutions={list(self.attention_resolutions)}: a diffusers_text UNet has "
                "self- and cross-attention in every block (SD-style); leave it unset"
            )
        if self.arch == "local" and self.attention_resolutions:
            raise ConfigError(
                f"model.attention_resolutions={list(self.attention_resolutions)}: the local "
                "architecture has no self-attention (it would let every pixel see the whole "
                "image); leave it unset or set []"
            )
        if self.arch == "local":
            if self.local_radius is not None and self.local_radius < 1:
                raise ConfigError(f"model.local_radius={self.local_radius}: expected >= 1 pixel")
            if self.local_width is not None and self.local_width < 1:
                raise ConfigError(f"model.local_width={self.local_width}: expected >= 1")
        if self.caption_objects is not None and self.caption_objects < 1:
            raise ConfigError(f"model.caption_objects={self.caption_objects}: expected >= 1 phrase")
        if self.text_layers is not None and self.text_layers < 1:
            raise ConfigError(f"model.text_layers={self.text_layers}: expected >= 1")
        if self.bump_cutoff is not None and self.bump_cutoff <= 0:
            raise ConfigError(
                f"model.bump_cutoff={self.bump_cutoff}: expected > 0 (in units of bump_sigma_px)"
            )

    def _check_backbone(self) -> None:
        if self.image_channels < 1:
            raise ConfigError(f"model.image_channels={self.image_channels}: expected >= 1")
        if self.image_size < 1:
            raise ConfigError(f"model.image_size={self.image_size}: expected >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout}: expected in [0, 1)")
        if self.head_dim < 1:
            raise ConfigError(f"model.head_dim={self.head_dim}: expected >= 1")
        if self.arch not in UNET_ARCHITECTURES + ("diffusers_text",):
            return
        if not self.channels:
            raise ConfigError(
                "model.channels is empty: expected one width per level, e.g. [32, 64, 64]"
            )
        if any(c < 1 for c in self.channels):
            raise ConfigError(f"model.channels={list(self.channels)}: widths must be >= 1")
        if self.res_blocks < 1:
            raise ConfigError(f"model.res_blocks={self.res_blocks}: expected >= 1")
        if self.norm_groups < 1 or any(c % self.norm_groups for c in self.channels):
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
        res = self.level_resolutions()
        for name in ("attention_resolutions", "cross_attention_resolutions"):
            for r in getattr(self, name) or ():
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

"""A text-conditioned diffusers ``UNet2DConditionModel`` trained on CLEVR captions (``arch = "diffusers_text"``).

The network is a real diffusers SDXL-style UNet (a transformer reading the prompt at every level but
the finest) read through locodiff's ``DiffusersDenoiser`` adapter, so the trained model is what
``probe-diffusers`` probes in SDXL: a DDPM-family UNet that predicts ``v`` at a timestep. Through the adapter, the
v-prediction parametrisation is exactly EDM's preconditioning with ``sigma_data = 1``
(``c_skip = 1 / (1 + sigma^2)``, ``c_out = sigma / sqrt(1 + sigma^2)``, ``c_in = 1 / sqrt(1 + sigma^2)``,
the network's output being ``-F``), with the timestep of ``sigma`` in the VP table as ``c_noise``;
locodiff's EDM loss and samplers therefore train and sample it like any other model.

The prompt comes from the scene's caption (``scenes.captions``): a learned word embedding and a
small transformer whose first layer attends only within a phrase (it binds "red" to "cube") and
whose later layers attend over the whole caption (context, as in CLIP). There are no absolute
position embeddings, so a caption longer than any seen in training needs no position the encoder
never learned. Padding tokens attend to the caption in the later layers and so carry information,
as CLIP's do in Stable Diffusion.

``save_text_model`` writes a diffusers folder (``unet/``, ``scheduler/``) that ``adapters.load_diffusers_unet``
reads like SDXL's, plus ``text_encoder/`` and ``tokenizer/``; ``adapters.SavedTextModel`` reads all of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning, Prompt
from ..errors import InputError
from ..io import save_tensors, write_json_atomic
from ..scenes.captions import VOCABULARY, WordTokenizer, caption_ids, caption_length, phrase_index_of
from .config import ModelConfig
from .diffusers_unet import DiffusersDenoiser
from .network import Network

# The VP noise table: diffusers' "linear" betas, started low enough that EDM's sigma_min = 0.002
# is inside it (sigma_0 = 0.00197); sigma_999 = 148 covers EDM's sigma_max = 80.
TIMESTEPS = 1000
BETA_START = 3.9e-6
BETA_END = 0.02
SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": TIMESTEPS, "beta_start": BETA_START,
    "beta_end": BETA_END, "beta_schedule": "linear", "prediction_type": "v_prediction", "clip_sample": False,
}
TEXT_ENCODER_FILE = "model.safetensors"


def alphas_cumprod() -> Tensor:
    """The table as diffusers' ``DDPMScheduler`` computes it for ``SCHEDULER_CONFIG`` (float32)."""
    betas = torch.linspace(BETA_START, BETA_END, TIMESTEPS, dtype=torch.float32, device="cpu")
    return torch.cumprod(1.0 - betas, dim=0)


class CaptionEncoder(nn.Module):
    """``(ids [B, T], phrase [B, T]) -> encoder_hidden_states [B, T, D]`` (see the module doc)."""

    def __init__(self, dim: int, layers: int, heads: int, vocabulary_size: int = len(VOCABULARY)) -> None:
        super().__init__()
        if layers < 1 or dim % heads:
            raise InputError(f"caption encoder: {layers} layers, width {dim}, {heads} heads: expected >= 1 layer "
                             "and a width divisible by the heads")
        self.heads = heads
        self.embed = nn.Embedding(vocabulary_size, dim)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor, phrase: Tensor) -> Tensor:
        return self.encode_embeddings(self.embed(ids), phrase)

    def encode_embeddings(self, h: Tensor, phrase: Tensor) -> Tensor:
        """The encoder after the embedding lookup (differentiable in the word embeddings ``h``)."""
        real = phrase >= 0
        eye = torch.eye(phrase.shape[1], dtype=torch.bool, device=phrase.device)[None]
        same = (phrase[:, :, None] == phrase[:, None, :]) & real[:, None, :]
        local = ~(same | eye)  # True = may not attend
        wide = ~(real[:, None, :] | eye).expand_as(local)
        for i, layer in enumerate(self.layers):
            mask = (local if i == 0 else wide).repeat_interleave(self.heads, 0)
            h = layer(h, src_mask=mask)
        return self.norm(h)


class TextUNet(Network):
    """The ``diffusers_text`` Denoiser: ``(x, sigma, cond) -> x0`` with the prompt from ``cond``'s captions.

    ``cond`` may also be a ``Prompt`` (token embeddings given directly, as the probes do).
    """

    conditioned_on = "captions"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel  # optional heavy dependency

        cfg = cfg.resolved()
        self.max_objects = cfg.caption.objects
        self.count_word = cfg.caption.count_word
        self.positions = cfg.caption.positions
        unet = UNet2DConditionModel(**unet_config(cfg))
        self.adapter = DiffusersDenoiser(unet, text_scheduler(), prediction_type="v_prediction", sigma_range="clamp")
        self.text = CaptionEncoder(cfg.token_dim, cfg.caption.text_layers, max(1, cfg.token_dim // cfg.head_dim))

    @property
    def unet(self) -> nn.Module:
        return self.adapter.unet

    def as_denoiser(self, caller: nn.Module | None = None) -> nn.Module:
        """A caption model preconditions inside its adapter: it is its own Denoiser (called
        through ``caller``, a data-parallel wrapper of it, when given)."""
        return caller if caller is not None else self

    @property
    def tokens(self) -> int:
        return caption_length(self.max_objects, self.count_word)

    def prompt(self, cond: Conditioning) -> Prompt:
        ids, phrase = caption_ids(cond, self.max_objects, self.count_word, self.positions)
        return Prompt(self.text(ids, phrase))

    def text_prompt(self, texts: list[str]) -> Prompt:
        """The ``Prompt`` of captions given as text (the words of ``scenes.captions``), e.g.
        ``["large red metal cube top left"]``: what a user types instead of a Conditioning."""
        ids = WordTokenizer(self.tokens).encode(texts).to(self.text.embed.weight.device)
        return Prompt(self.text(ids, phrase_index_of(ids)))

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditioning | Prompt) -> Tensor:
        prompt = cond if isinstance(cond, Prompt) else self.prompt(cond)
        return self.adapter(x, sigma, prompt)


def text_scheduler() -> SimpleNamespace:
    """What ``DiffusersDenoiser`` reads of a scheduler, without building a diffusers one."""
    return SimpleNamespace(alphas_cumprod=alphas_cumprod(), config=dict(SCHEDULER_CONFIG))


def unet_config(cfg: ModelConfig) -> dict:
    """The ``UNet2DConditionModel`` arguments for ``cfg``, laid out like SDXL's: no attention at the
    finest level, a transformer (self-attention, cross-attention to the prompt) at every coarser
    level and in the middle."""
    levels = len(cfg.channels)
    return dict(  # diffusers reads attention_head_dim as the number of heads (its legacy naming)
        sample_size=cfg.image_size, in_channels=cfg.image_channels, out_channels=cfg.image_channels,
        block_out_channels=tuple(cfg.channels), layers_per_block=cfg.res_blocks, norm_num_groups=cfg.norm_groups,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.token_dim, attention_head_dim=tuple(max(1, c // cfg.head_dim) for c in cfg.channels),
    )


# ----- a diffusers folder on disk ------------------------------------------------------------


def save_text_model(net: TextUNet, folder: str | Path) -> Path:
    """Write ``net`` as a diffusers folder (``unet/``, ``scheduler/`` in safetensors and JSON) plus
    ``text_encoder/`` and ``tokenizer/``; the folder appears whole or not at all."""
    from diffusers import DDPMScheduler  # optional heavy dependency

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    net.unet.save_pretrained(tmp / "unet", safe_serialization=True)
    DDPMScheduler.from_config(SCHEDULER_CONFIG).save_pretrained(tmp / "scheduler")
    (tmp / "text_encoder").mkdir()
    text = net.text
    save_tensors({k: v.detach().contiguous().cpu() for k, v in text.state_dict().items()},
              str(tmp / "text_encoder" / TEXT_ENCODER_FILE))
    write_json_atomic(tmp / "text_encoder" / "config.json", {
        "dim": text.embed.embedding_dim, "layers": len(text.layers), "heads": text.heads,
        "max_objects": net.max_objects, "count_word": net.count_word, "positions": net.positions})
    (tmp / "tokenizer").mkdir()
    write_json_atomic(tmp / "tokenizer" / "vocab.json", {"words": list(VOCABULARY), "length": net.tokens})
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder

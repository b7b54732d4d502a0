"""A saved ``diffusers_text`` model (``models.text.save_text_model``) read back the way a diffusers
user reads SDXL: the UNet through ``load_diffusers_unet``, plus its caption encoder and tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..conditioning import Prompt
from ..errors import CheckpointError
from ..models.text import TEXT_ENCODER_FILE, CaptionEncoder
from ..scenes.captions import VOCABULARY, WordTokenizer, phrase_index_of
from .diffusers_unet import load_diffusers_unet


class SavedTextModel:
    """A saved ``diffusers_text`` model: the UNet as a ``DiffusersDenoiser``, its caption encoder
    and tokenizer. ``prompt(["large red metal cube top left"])`` gives the ``Prompt`` of captions."""

    def __init__(self, folder: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "text_encoder" / "config.json").read_text())
            vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{folder} is not a locodiff text model (text_encoder/ and tokenizer/): {e}") from None
        if tuple(vocab["words"]) != VOCABULARY:
            raise CheckpointError(f"{folder / 'tokenizer' / 'vocab.json'} has another vocabulary than this locodiff's")
        self.tokenizer = WordTokenizer(int(vocab["length"]))
        self.encoder = CaptionEncoder(int(meta["dim"]), int(meta["layers"]), int(meta["heads"]))
        try:
            self.encoder.load_state_dict(load_file(str(folder / "text_encoder" / TEXT_ENCODER_FILE)))
        except Exception as e:  # noqa: BLE001 - safetensors and load_state_dict raise several types
            raise CheckpointError(f"cannot read the text encoder in {folder / 'text_encoder'}: {e}") from None
        self.encoder.eval().requires_grad_(False).to(device)
        self.adapter = load_diffusers_unet(folder, dtype, device)

    def prompt(self, texts: list[str]) -> Prompt:
        ids = self.tokenizer.encode(texts)
        with torch.no_grad():
            return Prompt(self.encoder(ids, phrase_index_of(ids)))


def is_text_model(folder: str | Path) -> bool:
    return (Path(folder) / "text_encoder" / "config.json").is_file()

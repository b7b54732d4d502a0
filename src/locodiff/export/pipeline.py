"""``LocodiffPipeline``: sample a locodiff model the way one samples any diffusers pipeline.

    pipe = LocodiffPipeline.from_pretrained("exported/exp1")
    images = pipe(locations=[[(0.3, 0.6), (0.7, 0.4)]], num_inference_steps=18,
                  generator=torch.Generator().manual_seed(0)).images

It runs locodiff's own EDM Heun sampler (no diffusers scheduler: the model is an EDM Denoiser), in
the same batches and with the same noise as ``locodiff sample``, so both give the same images for
the same seed. A caption model samples from text (``captions=["large red metal cube top left"]``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from huggingface_hub import snapshot_download  # comes with diffusers
from torch import Tensor

from ..conditioning import Conditioning, check_list
from ..diffusion import ClassifierFreeGuidance
from ..diffusion.samplers import sample_heun, sample_in_batches
from ..errors import CheckpointError, InputError
from ..scenes.vocab import COLOR_NAMES, MATERIALS, SHAPES, SIZE_NAMES, index_of
from .model import LocodiffModel, check_weights_folder

ATTRIBUTE_WORDS = (("colour", COLOR_NAMES), ("shape", SHAPES), ("size", SIZE_NAMES), ("material", MATERIALS))
Location = Sequence[float]


def attribute_indices(obj: Sequence[str | int]) -> list[int]:
    """One object's (colour, shape, size, material), as names ("red", "cube", "large", "metal")
    or vocabulary indices, to indices."""
    if len(obj) != len(ATTRIBUTE_WORDS):
        raise InputError(f"attributes {list(obj)}: expected (colour, shape, size, material)")
    return [v if isinstance(v, int) else index_of(kind, v, names) for v, (kind, names) in zip(obj, ATTRIBUTE_WORDS)]


def location_conditioning(locations: list[list[Location]], attributes: list[list] | None) -> Conditioning:
    cond = Conditioning.from_lists(locations)  # checks the shape: a ValueError naming what it expected
    if attributes is not None:
        if [len(a) for a in attributes] != [len(image) for image in locations]:
            raise InputError("attributes: give one (colour, shape, size, material) per location")
        attrs = torch.full((cond.batch_size, cond.slots, len(ATTRIBUTE_WORDS)), -1, dtype=torch.long)
        for b, image in enumerate(attributes):
            for n, obj in enumerate(image):
                attrs[b, n] = torch.tensor(attribute_indices(obj))
        cond.attributes = attrs
    return cond


def resolve_export(name_or_path: str | Path, local_files_only: bool = True) -> Path:
    """The local folder of an export: ``name_or_path`` itself, or (downloads allowed) the snapshot of
    the hub repository it names, its JSON, Markdown and safetensors files only."""
    folder = Path(name_or_path)
    if not (folder / "model_index.json").is_file() and not local_files_only and not folder.exists():
        folder = Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.md", "*.safetensors",
                                                                          "pipeline.py"]))
    if not (folder / "model_index.json").is_file():
        hint = "" if local_files_only else " (and no hub repository of that name could be read)"
        raise CheckpointError(f"{name_or_path} is not an exported locodiff pipeline (no model_index.json){hint}; "
                              "a hub id loads with local_files_only=False")
    check_weights_folder(folder / "model")
    return folder


class LocodiffPipeline(DiffusionPipeline):
    """Images from requested object locations (or captions, for a caption model)."""

    model_cpu_offload_seq = "model"
    batch_size = 64  # images per sampler call: as ``locodiff sample``, whose noise order it keeps

    def __init__(self, model: LocodiffModel) -> None:
        super().__init__()
        self.register_modules(model=model)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "LocodiffPipeline":
        """A folder ``locodiff export`` wrote, or a hub id of one where downloads are allowed
        (``local_files_only=False``); safetensors only, and no code from the folder is run (its
        ``pipeline.py`` is for ``diffusers.DiffusionPipeline.from_pretrained``). ``torch_dtype``
        (or ``dtype``) loads the weights in that precision."""
        folder = resolve_export(pretrained_model_name_or_path, kwargs.pop("local_files_only", True))
        dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
        model = LocodiffModel.from_pretrained(folder / "model", **({"torch_dtype": dtype} if dtype else {}))
        return cls(model)

    @torch.no_grad()
    def __call__(
        self, locations: list[list[Location]] | None = None, captions: list[str] | None = None,
        attributes: list[list] | None = None, num_inference_steps: int = 18, guidance_scale: float = 1.0,
        generator: torch.Generator | None = None, output_type: str = "pil", return_dict: bool = True,
        num_images_per_prompt: int = 1,
    ):
        """``num_images_per_prompt`` images per entry of ``locations`` (a list of (x, y) in [0, 1] per
        image, x the column and y the row from the top; optional ``attributes`` per object) or of
        ``captions``. ``output_type``: "pil", "np" (HWC in [0, 1]) or "pt" (BCHW in [0, 1]). Noise
        comes from ``generator`` (a CPU generator) in order; without one, fresh noise drawn from
        torch's global generator (``torch.manual_seed`` repeats it)."""
        if (locations is None) == (captions is None):
            raise InputError("give locations (a list of (x, y) lists, one per image) or captions, not both")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise InputError(f"num_images_per_prompt={num_images_per_prompt!r}: expected an integer >= 1")
        repeat = num_images_per_prompt
        locations = None if locations is None else [im for im in check_list(locations, 'locations')
                                                    for _ in range(repeat)]
        attributes = None if attributes is None else [a for a in attributes for _ in range(repeat)]
        captions = None if captions is None else [c for c in captions for _ in range(repeat)]
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
        if captions is not None:
            images = self._sample_captions(list(captions), num_inference_steps, guidance_scale, generator)
        else:
            images = self._sample_locations(location_conditioning(locations, attributes), num_inference_steps,
                                            guidance_scale, generator)
        return self._output(images, output_type, return_dict)

    def _sample_locations(self, cond: Conditioning, steps: int, guidance: float, generator: torch.Generator) -> Tensor:
        if self.model.conditioned_on != "locations":
            raise InputError("this model reads captions: call the pipeline with captions=[...]")
        model = self.model if guidance == 1.0 else ClassifierFreeGuidance(self.model, guidance)
        batches = sample_in_batches(model, cond, self.model.config.resolution, steps, generator, self.batch_size,
                                    device=self.device)
        out = []
        with self.progress_bar(total=math.ceil(cond.batch_size / self.batch_size)) as bar:
            for _, _, images in batches:
                out.append(images.cpu())
                bar.update(1)
        return torch.cat(out)

    def _sample_captions(self, texts: list[str], steps: int, guidance: float, generator: torch.Generator) -> Tensor:
        """Like ``sample_in_batches`` (the same noise order), with the prompt of each batch's text."""
        if self.model.conditioned_on != "captions":
            raise InputError("this model reads locations: call the pipeline with locations=[...]")
        if guidance != 1.0:
            raise InputError("guidance_scale: the caption model is sampled without guidance (1.0)")
        net, res, out = self.model.network, self.model.config.resolution, []
        for start in self.progress_bar(range(0, len(texts), self.batch_size)):
            part = texts[start: start + self.batch_size]
            prompt = net.text_prompt(part)
            noise = torch.randn(len(part), 3, res, res, generator=generator)
            empty = Conditioning.from_lists([[] for _ in part])
            out.append(sample_heun(lambda x, s, _: net(x, s, prompt), noise.to(self.device), empty.to(self.device),
                                   steps, generator=generator).cpu())
        return torch.cat(out)

    def _output(self, images: Tensor, output_type: str, return_dict: bool):
        unit = ((images + 1) / 2).clamp(0, 1)
        if output_type == "pt":
            result = unit
        elif output_type in ("np", "pil"):
            result = unit.permute(0, 2, 3, 1).float().numpy().astype(np.float32)
            result = self.numpy_to_pil(result) if output_type == "pil" else result
        else:
            raise InputError(f"output_type {output_type!r}: expected pil, np or pt")
        return ImagePipelineOutput(images=result) if return_dict else (result,)

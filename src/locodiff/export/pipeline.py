"""``LocodiffPipeline``: sample a locodiff model the way one samples any diffusers pipeline.

    pipe = LocodiffPipeline.from_pretrained("exported/exp1")
    images = pipe(locations=[[(0.3, 0.6), (0.7, 0.4)]], num_inference_steps=18,
                  generator=torch.Generator().manual_seed(0)).images

Its default scheduler, ``LocodiffHeunScheduler``, is locodiff's own EDM Heun sampler, run in the
same batches and with the same noise as ``locodiff sample``, so both give the same images for the
same seed; diffusers' EDM schedulers can replace it (``EDMEulerScheduler.from_config(
pipe.scheduler.config)``). ``latents``, ``num_images_per_prompt``, ``callback_on_step_end`` and
``output_type`` mean what they mean in diffusers. A caption model samples from text
(``captions=["large red metal cube top left"]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import diffusers
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin
from huggingface_hub import snapshot_download  # comes with diffusers
from torch import Tensor

from ..conditioning import Conditioning, check_list
from ..diffusion import ClassifierFreeGuidance
from ..errors import CheckpointError, InputError
from ..scenes.vocab import COLOR_NAMES, MATERIALS, SHAPES, SIZE_NAMES, index_of
from ..denoiser import Denoiser
from .model import LocodiffModel, check_weights_folder
from .scheduler import LocodiffHeunScheduler, check_scheduler, model_output_for

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


StepCallback = Callable[[Any, int, Any, dict], dict]


@dataclass
class Requests:
    """What a pipeline call asks for, one entry per image (``num_images_per_prompt`` applied)."""

    locations: list[list[Location]] | None
    captions: list[str] | None
    attributes: list[list] | None

    @property
    def count(self) -> int:
        return len(self.locations if self.captions is None else self.captions)

    @classmethod
    def of(cls, locations, captions, attributes, per_prompt) -> "Requests":
        if (locations is None) == (captions is None):
            raise InputError("give locations (a list of (x, y) lists, one per image) or captions, not both")
        if isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or per_prompt < 1:
            raise InputError(f"num_images_per_prompt={per_prompt!r}: expected an integer >= 1")

        def repeat(items):
            return None if items is None else [item for item in items for _ in range(per_prompt)]

        locations = repeat(None if locations is None else check_list(locations, "locations"))
        captions = repeat(None if captions is None else list(captions))
        return cls(locations, captions, repeat(attributes))


class Noise:
    """The starting noise of each batch: slices of ``latents``, or draws from ``generator`` in
    batch order (as ``locodiff sample`` draws them)."""

    def __init__(self, latents: Tensor | None, generator: torch.Generator | None, count: int, resolution: int):
        shape = (count, 3, resolution, resolution)
        if latents is not None and not isinstance(latents, Tensor):
            raise InputError(f"latents: expected a tensor of shape {shape}, got {type(latents).__name__}")
        if latents is not None and tuple(latents.shape) != shape:
            raise InputError(f"latents of shape {tuple(latents.shape)}: expected {shape} (one standard-normal "
                             "[3, H, W] per image, num_images_per_prompt included)")
        self.latents, self.generator, self.shape, self.start = latents, generator, shape, 0

    def next(self, n: int) -> Tensor:
        self.start += n
        if self.latents is not None:
            return self.latents[self.start - n: self.start].float()
        return torch.randn(n, *self.shape[1:], generator=self.generator)


@dataclass
class StepReport:
    """After each scheduler step: advance the progress bar, then let the user's callback see (and
    replace) the latents, as diffusers pipelines do."""

    bar: Any
    callback: StepCallback | None

    def __call__(self, pipe, i: int, t, latents: Tensor) -> Tensor:
        self.bar.update(1)
        if self.callback is None:
            return latents
        returned = self.callback(pipe, i, t, {"latents": latents}) or {}
        return returned.get("latents", latents)


def saved_scheduler(folder: Path) -> SchedulerMixin | None:
    """The scheduler an export saved, if it names one from locodiff or diffusers (no other code is
    imported); exports from before schedulers existed get the default."""
    entry = json.loads((folder / "model_index.json").read_text()).get("scheduler")
    if not entry or entry[1] is None:
        return None
    library, name = entry
    source = {"locodiff.export.scheduler": {"LocodiffHeunScheduler": LocodiffHeunScheduler}}.get(library)
    kind = source.get(name) if source else getattr(diffusers, name, None) if library == "diffusers" else None
    if kind is None or not issubclass(kind, SchedulerMixin):
        raise CheckpointError(f"{folder}: model_index.json names scheduler {library}.{name}, which is neither "
                              "locodiff's nor one of diffusers'")
    return kind.from_pretrained(folder, subfolder="scheduler")


class LocodiffPipeline(DiffusionPipeline):
    """Images from requested object locations (or captions, for a caption model)."""

    model_cpu_offload_seq = "model"
    batch_size = 64  # images per batch: as ``locodiff sample``, whose noise order it keeps
    _callback_tensor_inputs = ["latents"]
    _optional_components = ["scheduler"]  # exports written before schedulers existed load with the default

    def __init__(self, model: LocodiffModel, scheduler: SchedulerMixin | None) -> None:
        """``scheduler`` None: ``LocodiffHeunScheduler()`` (``locodiff sample``'s sampler). No default
        value, as diffusers saves only the components its signature requires."""
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler if scheduler is not None else LocodiffHeunScheduler())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "LocodiffPipeline":
        """A folder ``locodiff export`` wrote, or a hub id of one where downloads are allowed
        (``local_files_only=False``); safetensors only, and no code from the folder is run (its
        ``pipeline.py`` is for ``diffusers.DiffusionPipeline.from_pretrained``). ``torch_dtype``
        (or ``dtype``) loads the weights in that precision; ``scheduler=`` replaces the saved one."""
        folder = resolve_export(pretrained_model_name_or_path, kwargs.pop("local_files_only", True))
        dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
        model = LocodiffModel.from_pretrained(folder / "model", **({"torch_dtype": dtype} if dtype else {}))
        return cls(model, kwargs.pop("scheduler", None) or saved_scheduler(folder))

    @torch.no_grad()
    def __call__(
        self, locations: list[list[Location]] | None = None, captions: list[str] | None = None,
        attributes: list[list] | None = None, num_inference_steps: int = 18, guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1, generator: torch.Generator | None = None, latents: Tensor | None = None,
        output_type: str = "pil", return_dict: bool = True, callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        """``num_images_per_prompt`` images per entry of ``locations`` (a list of (x, y) in [0, 1] per
        image, x the column and y the row from the top; optional ``attributes`` per object) or of
        ``captions``. ``output_type``: "pil", "np" (HWC in [0, 1]) or "pt" (BCHW in [0, 1]).

        The starting noise is ``latents`` (standard normal, one [3, H, W] per image) if given, else
        drawn from ``generator`` (a CPU generator) batch by batch, else fresh from torch's global
        generator (``torch.manual_seed`` repeats it). ``callback_on_step_end(pipe, i, t, {"latents":
        x})`` is called after every scheduler step of every batch and may return new latents."""
        check_scheduler(self.scheduler)
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise InputError(f"callback_on_step_end_tensor_inputs: {sorted(unknown)}; only 'latents' is offered")
        requests = Requests.of(locations, captions, attributes, num_images_per_prompt)
        if generator is None and latents is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
        batches = list(self._batches(requests, guidance_scale))
        noise = Noise(latents, generator, requests.count, self.model.config.resolution)
        self.scheduler.set_timesteps(num_inference_steps)
        with self.progress_bar(total=len(batches) * len(self.scheduler.timesteps)) as bar:
            images = [self._denoise(denoiser, cond, noise.next(cond.batch_size), num_inference_steps,
                                    StepReport(bar, callback_on_step_end))
                      for denoiser, cond in batches]
        return self._output(torch.cat(images), output_type, return_dict)

    def _batches(self, requests: "Requests", guidance: float) -> Iterator[tuple[Denoiser, Conditioning]]:
        """The Denoiser and the conditioning of each batch of ``batch_size`` images."""
        net, asked = self.model.network, "captions" if requests.captions is not None else "locations"
        if self.model.conditioned_on != asked:
            raise InputError(f"this model reads {self.model.conditioned_on}: call the pipeline with "
                             f"{self.model.conditioned_on}=[...]")
        if asked == "locations":
            cond = location_conditioning(requests.locations, requests.attributes)
            model = self.model if guidance == 1.0 else ClassifierFreeGuidance(self.model, guidance)
            for start in range(0, cond.batch_size, self.batch_size):
                yield model, cond[start: start + self.batch_size]
            return
        if guidance != 1.0:
            raise InputError("guidance_scale: the caption model is sampled without guidance (1.0)")
        for start in range(0, requests.count, self.batch_size):
            texts = requests.captions[start: start + self.batch_size]
            prompt = net.text_prompt(texts)
            yield (lambda x, s, _, p=prompt: net(x, s, p)), Conditioning.from_lists([[]] * len(texts))

    def _denoise(self, denoiser: Denoiser, cond: Conditioning, noise: Tensor, steps: int,
                 report: "StepReport") -> Tensor:
        """One batch down the scheduler's levels: the model's x0 at each call, handed to the scheduler
        in the form it expects (``locodiff sample``'s arithmetic with the default scheduler)."""
        scheduler, cond = self.scheduler, cond.to(self.device)
        scheduler.set_timesteps(steps)
        x = noise.to(self.device) * scheduler.init_noise_sigma
        for i, t in enumerate(scheduler.timesteps):
            scheduler.scale_model_input(x, t)  # starts the scheduler's count; the model scales its own input
            sigma = scheduler.sigmas[scheduler.step_index].to(x.device)
            x0 = denoiser(x, sigma.expand(x.shape[0]), cond).to(x.dtype)
            x = scheduler.step(model_output_for(scheduler, x, x0, sigma), t, x, return_dict=False)[0].to(x0.dtype)
            x = report(self, i, t, x)
        return x.cpu()

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

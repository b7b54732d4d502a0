"""``locodiff export RUN OUT``: a trained run (or an intervention on one) as a diffusers pipeline folder.

    OUT/model_index.json                         the pipeline (LocodiffPipeline) and its parts
    OUT/pipeline.py                              one import, for diffusers.DiffusionPipeline.from_pretrained
    OUT/model/config.json                        the network's ModelConfig and resolution
    OUT/model/diffusion_pytorch_model.safetensors the weights (EMA by default; an intervention's: its base run's)
    OUT/scheduler/scheduler_config.json          the sampler (LocodiffHeunScheduler: locodiff sample's)
    OUT/locodiff.json                            where it came from: run (relative to OUT), checkpoint, images seen
    OUT/README.md                                a model card: what it is, its conditioning, data, recall per k

A diffusers user loads it with ``LocodiffPipeline.from_pretrained(OUT)`` without knowing the run
layout. The folder appears whole or not at all; an existing folder is replaced only when it is an
earlier export (nothing else is ever overwritten).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..config import from_dict, to_dict
from ..errors import CheckpointError, LocodiffError
from ..evaluate.config import EvalConfig
from ..evaluate.metrics import default_tolerance_px
from ..evaluate.runner import EvalResult
from ..layout import PROBE_SUMMARY, eval_dir
from ..locality.extrapolation import ExtrapolationResult
from ..models import describe
from ..io import write_json_atomic, write_text_atomic
from ..checkpoints import latest_checkpoint, load_weights, no_checkpoint, read_state
from ..intervene.config import InterventionSpec
from ..stages.subjects import read_intervention, training_run
from ..train.run_folder import read_run_config
from .model import LocodiffModel
from .pipeline import LocodiffPipeline

SOURCE = "locodiff.json"

CARD = """---
library_name: diffusers
tags:
- locodiff
- compositional-generalization
- clevr
- location-conditioned
---

# {name}: a locodiff model

A `{arch}` network trained by locodiff {version} on
{resolution}x{resolution} CLEVR-like scenes. It draws objects where it is asked to:
{conditioning}.

- **Training data**: {train_images} rendered scenes with {train_counts} objects each (label
  policy `{label_policy}`: {policy_words}); {images_seen} training images seen; {weights} weights.
- **Network**: {note}.
{evaluation}
## Load and sample

```python
import torch
from locodiff.export import LocodiffPipeline

pipe = LocodiffPipeline.from_pretrained("{folder}")
images = pipe({example}, num_inference_steps=18,
              generator=torch.Generator().manual_seed(0)).images
```

`pipe.model(x, sigma, cond)` is the Denoiser itself (images in [-1, 1]), for locodiff's probes.

## Why it exists

Bradley, *Local Mechanisms of Compositional Generalization in Conditional Diffusion*
(arXiv 2509.16447): a model trained on a few objects draws more than it ever saw exactly when its
score is local (each pixel depends on nearby pixels and on the conditioners near it). locodiff
trains, evaluates and probes such models; this one comes from a locodiff study.
"""

POLICY_WORDS = {"all": "every object in an image is a conditioner",
                "one": "one random object per image is a conditioner, the others are unlabelled clutter"}


def export_run(subject: str | Path, out: str | Path, checkpoint: str | Path | None = None, ema: bool = True) -> Path:
    """Write a training run or an intervention folder (its base run's weights and the composition
    that makes it local) to ``out``, at its latest checkpoint unless ``checkpoint`` names one."""
    subject, out = Path(subject), Path(out)
    run = training_run(subject)
    spec = read_intervention(subject)[0] if run != subject else None
    cfg = read_run_config(run)
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run)
    if ckpt is None:
        raise CheckpointError(no_checkpoint(run))
    if out.exists() and not (out / SOURCE).is_file():
        raise CheckpointError(f"{out} exists and is not an earlier locodiff export; choose a new folder")
    model = LocodiffModel(network_config=to_dict(cfg.model), resolution=cfg.data.resolution,
                          composition=None if spec is None else to_dict(spec))
    load_weights(model.network, ckpt / ("ema.safetensors" if ema else "model.safetensors"))
    source = {"run": relative(run, out), "checkpoint": ckpt.name, "images_seen": read_state(ckpt)["images_seen"],
              "weights": "ema" if ema else "raw", "label_policy": cfg.label_policy, "locodiff_version": __version__}
    if spec is not None:
        source["intervention"] = relative(subject, out)
    card = model_card(cfg, source, out, Measured(evaluation_of(subject, ckpt.name), efficacy_of(subject, ckpt.name)),
                      spec)
    write_export(out, LocodiffPipeline(model.eval(), None), source, card)
    return out


def relative(folder: Path, out: Path) -> str:
    return Path(os.path.relpath(folder.resolve(), out.resolve())).as_posix()


def write_export(out: Path, pipe: LocodiffPipeline, source: dict, card: str) -> None:
    """The folder whole or not at all: written beside ``out``, then renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for_diffusers_loader(tmp)
        write_json_atomic(tmp / SOURCE, source)
        write_text_atomic(tmp / "README.md", card)
        readable_by_all(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SHIM = '''"""The pipeline of a locodiff export, for diffusers' own loader:
``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` (locodiff installed)."""

from locodiff.export.pipeline import LocodiffPipeline  # noqa: F401
'''


def for_diffusers_loader(folder: Path) -> None:
    """Name the pipeline class where diffusers' loader finds it: ``model_index.json`` points to the
    folder's ``pipeline.py``, which imports locodiff's (``LocodiffPipeline.from_pretrained`` runs no
    code from the folder; diffusers asks for ``trust_remote_code=True`` to run that one import)."""
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "LocodiffPipeline"]
    write_json_atomic(folder / "model_index.json", index)
    write_text_atomic(folder / "pipeline.py", SHIM)


def readable_by_all(folder: Path) -> None:
    """Give an export the modes any other folder gets (its temporary folder was owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def evaluation_of(run: Path, checkpoint: str) -> EvalResult | None:
    """The run's evaluation of this checkpoint, if one was made (the one with the most counts)."""
    found = []
    for folder in run.glob("eval-*"):
        try:
            settings = json.loads((folder / "eval_config.json").read_text())
            config = from_dict(EvalConfig, settings["config"])
        except (OSError, ValueError, KeyError, LocodiffError):
            continue
        result = EvalResult.load(folder) if eval_dir(run, config, checkpoint) == folder else None
        if result is not None:
            found.append(result)
    return max(found, key=lambda r: len(r.per_k), default=None)


def efficacy_of(subject: Path, checkpoint: str) -> ExtrapolationResult | None:
    """The subject's extrapolation probe of this checkpoint, if one was made (the most counts)."""
    found = []
    for folder in subject.glob("locality-*"):
        try:
            meta = json.loads((folder / PROBE_SUMMARY).read_text())["meta"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        result = ExtrapolationResult.load(folder) if meta.get("checkpoint") == checkpoint else None
        if result is not None and "efficacy" in next(iter(result.per_k.values()), {}).get("band", {}):
            found.append(result)
    return max(found, key=lambda r: len(r.per_k), default=None)


def efficacy_lines(result: ExtrapolationResult | None) -> str:
    if result is None:
        return ""
    ks = sorted(k for k in result.per_k if k >= 2)
    cells = " | ".join("–" if e is None or math.isnan(e.mean) else f"{e.mean:.2f}"
                       for e in (result.band("efficacy", k) for k in ks))
    return ("- **Locality** (efficacy: a conditioner's effect on the score among all the others over its "
            "effect alone, 1 for a local conditional score; the project's probe on the evaluation's "
            f"scenes):\n\n| k | {' | '.join(map(str, ks))} |\n|---|{'---|' * len(ks)}\n| efficacy | {cells} |\n\n")


def evaluation_lines(result: EvalResult | None) -> str:
    if result is None:
        return "- **Evaluation**: none yet (`locodiff evaluate RUN` measures recall per requested count).\n"
    ks = sorted(k for k in result.per_k if k >= 1)
    cells = " | ".join(f"{result.per_k[k].recall:.2f}" if result.per_k[k].recall is not None else "–" for k in ks)
    return ("- **Evaluation** (recall: the share of requested objects drawn within "
            f"{result.config.tolerance_px or default_tolerance_px(result.resolution):g} px, "
            f"{result.config.per_count} samples per k, "
            f"{result.detector} detector):\n\n| k | {' | '.join(map(str, ks))} |\n"
            f"|---|{'---|' * len(ks)}\n| recall | {cells} |\n\n")


@dataclass
class Measured:
    """What the study measured of the exported checkpoint, for its card."""

    evaluation: EvalResult | None = None
    extrapolation: ExtrapolationResult | None = None


def model_card(cfg, source: dict, out: Path, measured: Measured = Measured(),
               intervention: InterventionSpec | None = None) -> str:
    captions = cfg.model.arch == "diffusers_text"
    example = ('captions=["large red metal cube top left"]' if captions
               else "locations=[[(0.3, 0.6), (0.7, 0.4)]]")
    conditioning = ("a caption names each object and its coarse place (e.g. \"large red metal cube top left\")"
                    if captions else "one (x, y) per object, x the column and y the row from the top, both in "
                    "[0, 1]; an image may ask for any number of objects, 0 included")
    counts = cfg.data.train_counts
    note = describe(cfg.model).note
    if intervention is not None:
        note += (f". Sampled as a masked composition ({intervention.description or 'Exp 3'}): the network is "
                 "called once per conditioner and each conditioner's prediction acts only within "
                 f"{intervention.radius_px:g} px of its location, a local conditional score by construction "
                 "(no retraining)")
    return CARD.format(name=intervention_name(source) or cfg.name, arch=cfg.model.arch, version=__version__,
                       resolution=cfg.data.resolution,
                       conditioning=conditioning, train_images=cfg.data.train_images,
                       train_counts=f"{min(counts)}–{max(counts)}" if len(counts) > 1 else str(counts[0]),
                       label_policy=cfg.label_policy, policy_words=POLICY_WORDS.get(cfg.label_policy, ""),
                       images_seen=source["images_seen"], weights=source["weights"],
                       note=note,
                       evaluation=evaluation_lines(measured.evaluation) + efficacy_lines(measured.extrapolation),
                       folder=out.name, example=example)


def intervention_name(source: dict) -> str | None:
    path = source.get("intervention")
    return None if path is None else Path(path).name.rsplit("-", 1)[0]


def read_source(folder: str | Path) -> dict:
    """What an export came from (its ``locodiff.json``)."""
    try:
        return json.loads((Path(folder) / SOURCE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder} is not a locodiff export ({SOURCE} unreadable: {e})") from None

"""``locodiff export RUN OUT``: a trained run as a diffusers pipeline folder.

    OUT/model_index.json                         the pipeline (LocodiffPipeline) and its parts
    OUT/model/config.json                        the network's ModelConfig and resolution
    OUT/model/diffusion_pytorch_model.safetensors the weights (EMA by default)
    OUT/locodiff.json                            where it came from: run, checkpoint, images seen
    OUT/README.md                                how to load and sample it

A diffusers user loads it with ``LocodiffPipeline.from_pretrained(OUT)`` without knowing the run
layout. The folder appears whole or not at all; an existing folder is replaced only when it is an
earlier export (nothing else is ever overwritten).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .. import __version__
from ..config import to_dict
from ..errors import CheckpointError
from ..io import write_json_atomic, write_text_atomic
from ..checkpoints import latest_checkpoint, load_weights, no_checkpoint, read_state
from ..train.run_folder import read_run_config
from .model import LocodiffModel
from .pipeline import LocodiffPipeline

SOURCE = "locodiff.json"

CARD = """# {name}: a locodiff model

A `{arch}` network trained by locodiff {version} on {resolution}x{resolution} CLEVR-like scenes
(label policy `{label_policy}`, {images_seen} training images, {weights} weights).

```python
import torch
from locodiff.export import LocodiffPipeline

pipe = LocodiffPipeline.from_pretrained("{folder}")
images = pipe({example}, num_inference_steps=18,
              generator=torch.Generator().manual_seed(0)).images
```

`pipe.model(x, sigma, cond)` is the Denoiser itself (images in [-1, 1]), for locodiff's probes.
"""


def export_run(run: str | Path, out: str | Path, checkpoint: str | Path | None = None, ema: bool = True) -> Path:
    """Write run ``run`` (its latest checkpoint unless ``checkpoint`` names one) to ``out``."""
    run, out = Path(run), Path(out)
    cfg = read_run_config(run)
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run)
    if ckpt is None:
        raise CheckpointError(no_checkpoint(run))
    if out.exists() and not (out / SOURCE).is_file():
        raise CheckpointError(f"{out} exists and is not an earlier locodiff export; choose a new folder")
    model = LocodiffModel(network_config=to_dict(cfg.model), resolution=cfg.data.resolution)
    load_weights(model.network, ckpt / ("ema.safetensors" if ema else "model.safetensors"))
    source = {"run": str(run.resolve()), "checkpoint": ckpt.name, "images_seen": read_state(ckpt)["images_seen"],
              "weights": "ema" if ema else "raw", "label_policy": cfg.label_policy, "locodiff_version": __version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        LocodiffPipeline(model.eval()).save_pretrained(tmp, safe_serialization=True)
        write_json_atomic(tmp / SOURCE, source)
        write_text_atomic(tmp / "README.md", model_card(cfg, source, out))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_card(cfg, source: dict, out: Path) -> str:
    captions = cfg.model.arch == "diffusers_text"
    example = ('captions=["large red metal cube top left"]' if captions
               else "locations=[[(0.3, 0.6), (0.7, 0.4)]]")
    return CARD.format(name=cfg.name, arch=cfg.model.arch, version=__version__, resolution=cfg.data.resolution,
                       label_policy=cfg.label_policy, images_seen=source["images_seen"], weights=source["weights"],
                       folder=out.name, example=example)


def read_source(folder: str | Path) -> dict:
    """What an export came from (its ``locodiff.json``)."""
    try:
        return json.loads((Path(folder) / SOURCE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder} is not a locodiff export ({SOURCE} unreadable: {e})") from None

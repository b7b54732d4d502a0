"""Data sets of rendered scenes: cached on disk in checksummed shards, or rendered on the fly.

Layout of a cache (``root = <out_dir>/data/<config-hash>``)::

    root/config.json                     the DataConfig that made it (and the format version)
    root/manifest.json                   per split: shard names, image counts, sizes, sha256
    root/{train,test}/shard-00000.safetensors   images (uint8), scene tensors, centres, ...
    root/{train,test}/shard-00000.json          the same scenes as readable JSON

Why it is built this way:
- the folder name is a hash of the config and a format version, so changing any option (or the
  renderer's look) writes a new data set instead of reusing a stale one;
- every shard is a pure function of (seed, split, shard index): an interrupted build resumes by
  skipping shards whose file matches its manifest entry, and a corrupted shard is rebuilt
  byte-identically;
- files are written atomically and the manifest is updated after each shard, so a crash loses at
  most the shard in progress; a shard whose checksum or size does not match is never read.

Train images hold 1..3 objects (``train_counts``, drawn uniformly per image); the test split holds
``test_images_per_count`` images for each count in ``test_counts`` (0..10), in count order.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from torch.utils.data import Dataset

from ..config import to_dict
from ..errors import ConfigError, DataError
from ..io import atomic_path, notice, save_tensors, sha256_file, write_json_atomic
from ..layout import dataset_root
from ..locks import folder_lock
from ..progress import progress_bar
from .renderers import renderer_for
from .config import FORMAT_VERSION, SPLITS, DataConfig, Split, check_split
from .sampler import SceneSampler, as_generator
from .scene import SceneBatch
from ..rng import derived_seed
from . import clevr_format

RENDER_BATCH = 256  # scenes sampled and rendered per step while building a shard


def shard_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit seed for one shard, independent of every other shard's."""
    return derived_seed(seed, "data", split, index)


def resolve_device(name: str | torch.device) -> torch.device:
    """A torch device that exists on this machine, or a ``ConfigError`` saying why not."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {name!r} is not a torch device ({e}); use e.g. cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available on this machine; use cpu")
    return device


# ----- rendering batches (shared by the cache and the on-the-fly stream) ----------------------
class SceneSource:
    """A sampler and a renderer for one ``DataConfig``: scenes in, training batches out."""

    def __init__(self, cfg: DataConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        device = resolve_device(device)
        self.sampler = SceneSampler(cfg.scene, cfg.camera)
        self.renderer = renderer_for(cfg, device=device)

    def render(self, counts: Tensor, generator: torch.Generator, slots: int, masks: bool = False) -> dict[str, Tensor]:
        """Sample scenes with ``counts`` objects and render them; images as uint8 [B, 3, H, W]."""
        scenes = self.sampler.sample(counts, generator, slots=slots)
        out = self.renderer(scenes)
        batch = {k: v.to(self.renderer.device) for k, v in scenes.tensors().items()}
        batch.update(
            images=(out.images * 255).round().to(torch.uint8),
            centers=out.centers,
            visible_pixels=out.visible_pixels,
            counts=scenes.counts(),
        )
        if masks:
            batch["masks"] = out.masks
        return batch

    def draw_counts(self, split: Split, n: int, generator: torch.Generator) -> Tensor:
        """Object counts for ``n`` images of a split (train: uniform over ``train_counts``)."""
        if split == "train":
            table = torch.tensor(self.cfg.train_counts)
            return table[torch.randint(len(table), (n,), generator=generator)]
        return torch.tensor(self.cfg.test_counts).repeat_interleave(self.cfg.test_images_per_count)[:n]


def to_model_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """uint8 images -> float images in [-1, 1]; every other tensor unchanged."""
    out = dict(batch)
    out["images"] = batch["images"].float() / 127.5 - 1.0
    return out


class SceneStream:
    """An endless stream of freshly rendered training batches (nothing touches the disk).

    Each batch is a dict like a collated ``SceneDataset`` batch: ``images`` in [-1, 1] plus the
    scene tensors and ``centers``; make the conditioning with ``batch_conditioning``.
    """

    def __init__(
        self, cfg: DataConfig, batch_size: int, seed: int | torch.Generator = 0,
        split: Split = "train", device: torch.device | str = "cpu",
    ) -> None:
        check_split(split)
        if batch_size < 1:
            raise ConfigError(f"batch_size {batch_size}: expected a positive integer")
        self.source = SceneSource(cfg, device)
        self.batch_size, self.split = batch_size, split
        self.generator = as_generator(seed)

    def next_batch(self) -> dict[str, Tensor]:
        cfg = self.source.cfg
        if self.split == "train":
            counts = self.source.draw_counts("train", self.batch_size, self.generator)
        else:
            table = torch.tensor(cfg.test_counts)
            counts = table[torch.randint(len(table), (self.batch_size,), generator=self.generator)]
        return to_model_batch(self.source.render(counts, self.generator, cfg.slots(self.split)))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while True:
            yield self.next_batch()


# ----- the on-disk cache ------------------------------------------------------------------------
def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _shard_ok(root: Path, split: str, name: str, entry: dict | None) -> bool:
    """A shard may be used only if both files exist with the recorded size and checksum."""
    if not entry:
        return False
    for suffix in (".safetensors", ".json"):
        path = root / split / f"{name}{suffix}"
        rec = entry.get(suffix.lstrip("."))
        if rec is None or not path.is_file() or path.stat().st_size != rec["bytes"]:
            return False
        if sha256_file(path) != rec["sha256"]:
            return False
    return True


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and prove it accepts files, or raise a ``DataError`` naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".locodiff-write-test-"):
            pass  # a name of its own, so that processes sharing the folder never race on one file
    except OSError as e:
        raise DataError(
            f"cannot write to {str(folder)!r} ({e.strerror or e}); choose another output folder"
        ) from None


def _read_manifest(root: Path, cfg: DataConfig) -> dict:
    path = root / "manifest.json"
    fresh = {"format": FORMAT_VERSION, "key": cfg.cache_key(), "splits": {s: {} for s in SPLITS}}
    if not path.is_file():
        return fresh
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return fresh  # unreadable: every shard is re-verified from scratch
    if manifest.get("key") != cfg.cache_key() or not isinstance(manifest.get("splits"), dict):
        return fresh
    for s in SPLITS:
        manifest["splits"].setdefault(s, {})
    return manifest


def build_shard(source: SceneSource, split: Split, index: int) -> tuple[dict[str, Tensor], list[dict]]:
    """Render shard ``index`` of ``split``: its tensors and its scenes as JSON-able dicts."""
    cfg = source.cfg
    start = index * cfg.shard_size
    n = min(cfg.shard_size, cfg.split_size(split) - start)
    gen = torch.Generator().manual_seed(shard_seed(cfg.seed, split, index))
    if split == "train":
        counts = source.draw_counts("train", n, gen)
    else:
        counts = source.draw_counts("test", cfg.split_size("test"), gen)[start : start + n]
    parts = [
        source.render(counts[s : s + RENDER_BATCH], gen, cfg.slots(split), masks=cfg.save_masks)
        for s in range(0, n, RENDER_BATCH)
    ]
    tensors = {k: torch.cat([p[k] for p in parts]).cpu().contiguous() for k in parts[0]}
    scenes = [s.to_dict() for s in SceneBatch.from_tensors(tensors).to_scenes()]
    return tensors, scenes


def _write_shard(root: Path, split: str, name: str, tensors: dict[str, Tensor], scenes: list[dict], meta: dict) -> dict:
    folder = root / split
    entry = {"images": int(tensors["images"].shape[0])}
    tensor_path, json_path = folder / f"{name}.safetensors", folder / f"{name}.json"
    with atomic_path(tensor_path) as tmp:
        # one metadata key: safetensors stores a map whose key order is not stable across runs
        save_tensors(tensors, str(tmp), metadata={"locodiff": json.dumps(meta, sort_keys=True)})
    write_json_atomic(json_path, {"scenes": scenes, **meta})
    for key, path in (("safetensors", tensor_path), ("json", json_path)):
        entry[key] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return entry


def build_dataset(
    cfg: DataConfig,
    out_dir: str | Path,
    splits: tuple[str, ...] = SPLITS,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Path:
    """Make sure every shard of ``splits`` exists and is intact; render the missing ones.

    Returns the cache folder. Safe to interrupt and call again: finished shards are kept.
    """
    device = resolve_device(device)
    root = dataset_root(cfg, out_dir)
    ensure_writable(root)
    with folder_lock(root, f"data set {root.name} is being rendered"):
        return _build(cfg, root, splits, device, progress)


def _build(cfg: DataConfig, root: Path, splits: tuple[str, ...], device: torch.device, progress: bool) -> Path:
    stamp = {"format": FORMAT_VERSION, "data": to_dict(cfg)}
    try:
        same = json.loads((root / "config.json").read_text()) == json.loads(json.dumps(stamp))
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:  # a finished cache is left untouched
        write_json_atomic(root / "config.json", stamp)
    manifest = _read_manifest(root, cfg)
    if cfg.source == "clevr_folder":
        return _import_clevr(cfg, root, manifest, splits, progress)
    todo = []
    for split in splits:
        check_split(split)
        entries = manifest["splits"][split]
        for i in range(cfg.num_shards(split)):
            entry = entries.get(shard_name(i))
            if not _shard_ok(root, split, shard_name(i), entry):
                if entry:  # it was finished once: say that it is damaged and redone
                    notice(f"{root / split / shard_name(i)}: missing or damaged (size or checksum differs); rendering it again")
                todo.append((split, i))
    source = SceneSource(cfg, device) if todo else None

    total = sum(min(cfg.shard_size, cfg.split_size(s) - i * cfg.shard_size) for s, i in todo)
    with progress_bar(total, "render", "img", enabled=progress and bool(todo)) as bar:
        for split, i in todo:
            tensors, scenes = build_shard(source, split, i)
            meta = {"split": split, "index": i, "key": cfg.cache_key(), "format": FORMAT_VERSION}
            entry = _write_shard(root, split, shard_name(i), tensors, scenes, meta)
            manifest["splits"][split][shard_name(i)] = entry
            write_json_atomic(root / "manifest.json", manifest)
            bar.update(entry["images"])
    return root


def _import_clevr(cfg: DataConfig, root: Path, manifest: dict, splits: tuple[str, ...], progress: bool) -> Path:
    """The splits read from ``cfg.clevr_folder`` (see ``clevr_format``). A split is read and
    checked whole before its shards are written, and the manifest names them only once all are:
    an import that fails half-way leaves nothing a later run would use."""
    folder = Path(cfg.clevr_folder).expanduser()
    chosen = clevr_format.select_splits(clevr_format.scenes_of_folder(folder), cfg.train_counts, cfg.train_images,
                                        cfg.test_counts, cfg.test_images_per_count)
    source = clevr_format.fingerprint(folder)
    if manifest.get("source") != source:
        manifest = {**manifest, "source": source, "splits": {s: {} for s in SPLITS}}
    for split in splits:
        check_split(split)
        entries = manifest["splits"][split]
        if entries and all(_shard_ok(root, split, name, entry) for name, entry in entries.items()):
            continue
        counts = cfg.train_counts if split == "train" else cfg.test_counts
        if not chosen[split]:
            raise DataError(f"{folder}: no scene with {list(counts)} objects for the {split} split")
        tensors = clevr_format.read_split(folder, chosen[split], cfg.resolution, cfg.slots(split))
        if len(tensors["images"]) < cfg.split_size(split):
            notice(f"{folder}: the {split} split has {len(tensors['images'])} of the {cfg.split_size(split)} images asked")
        entries.clear()
        with progress_bar(len(tensors["images"]), f"import {split}", "img", enabled=progress) as bar:
            for i, start in enumerate(range(0, len(tensors["images"]), cfg.shard_size)):
                part = {k: v[start: start + cfg.shard_size].contiguous() for k, v in tensors.items()}
                scenes = [s.to_dict() for s in SceneBatch.from_tensors(part).to_scenes()]
                meta = {"split": split, "index": i, "key": cfg.cache_key(), "format": FORMAT_VERSION}
                entries[shard_name(i)] = _write_shard(root, split, shard_name(i), part, scenes, meta)
                bar.update(len(part["images"]))
        write_json_atomic(root / "manifest.json", manifest)
    return root


# ----- reading ---------------------------------------------------------------------------------
class SceneDataset(Dataset):
    """The images and scenes of one split of a built cache, held in memory.

    Items are dicts: ``images`` float [3, H, W] in [-1, 1], the ``SceneBatch`` fields of the
    image (``shape``, ``color``, ``material``, ``size``, ``positions``, ``rotations``, ``mask``),
    ``centers`` [N, 2], ``visible_pixels`` and ``counts``. The default collate stacks them; turn a
    batch into a ``Conditioning`` with ``batch_conditioning(batch, policy, generator)``.
    ``counts`` restricts the split to images with those object counts (e.g. one k of the test
    split). Shards are verified against the manifest before use.
    """

    def __init__(self, root: str | Path, split: Split = "train", counts: tuple[int, ...] | None = None, verify: bool = True):
        check_split(split)
        self.root, self.split = Path(root), split
        self.tensors = self._load(verify)
        keep = torch.ones(len(self.tensors["images"]), dtype=torch.bool)
        if counts is not None:
            keep = torch.isin(self.tensors["counts"], torch.tensor(list(counts)))
        self.index = keep.nonzero(as_tuple=True)[0]

    @classmethod
    def from_config(
        cls, cfg: DataConfig, out_dir: str | Path, split: Split = "train",
        counts: tuple[int, ...] | None = None, build: bool = True, progress: bool = False,
    ) -> "SceneDataset":
        """Open a split, first building (or repairing) the cache when ``build`` is set."""
        root = build_dataset(cfg, out_dir, (split,), progress=progress) if build else dataset_root(cfg, out_dir)
        return cls(root, split, counts)

    def _load(self, verify: bool) -> dict[str, Tensor]:
        manifest_path = self.root / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
            entries = manifest["splits"][self.split]
        except (OSError, json.JSONDecodeError, KeyError):
            raise DataError(
                f"no readable manifest for split {self.split!r} in {str(self.root)!r}; "
                "build it with `locodiff render`"
            ) from None
        if not entries:
            raise DataError(f"split {self.split!r} in {str(self.root)!r} has no shards; run `locodiff render`")
        parts = []
        for name in sorted(entries):
            path = self.root / self.split / f"{name}.safetensors"
            if verify and not _shard_ok(self.root, self.split, name, entries[name]):
                raise DataError(
                    f"shard {str(path)!r} is missing, partial or corrupted (size or checksum "
                    "mismatch); run `locodiff render` again to rebuild it"
                )
            try:
                parts.append(load_file(str(path)))
            except (OSError, SafetensorError) as e:
                raise DataError(f"shard {str(path)!r} is unreadable ({e}); run `locodiff render` to rebuild it") from None
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        j = self.index[i]
        item = {k: v[j] for k, v in self.tensors.items()}
        return to_model_batch(item)

    @property
    def resolution(self) -> int:
        return int(self.tensors["images"].shape[-1])

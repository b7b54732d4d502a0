"""A small learned object detector, trained on locodiff's own renders: the default for scoring.

Why learned: at 32x32 with the study's camera most scenes with five or more objects have objects
that touch or overlap in the image (measured: with the default ``min_separation = 0.12`` about
half of the 3-object scenes and nearly all 6-object scenes have two masks within one pixel), and
grey objects have the same brightness as shadows. A colour/background detector then merges or
drops objects. The renderer, however, can produce unlimited labelled scenes, so a network can
simply be taught where the objects' projected centres are.

What it is: a fully convolutional encoder-decoder (~0.23 M parameters) that sees the image resized
to a fixed working resolution (32x32 by default; one network serves 16, 32 and 64 pixel images)
plus two pixel-coordinate channels (object appearance depends on the position under perspective),
and predicts per pixel:
- a centre heat map (CenterNet-style: a Gaussian bump at every projected 3-D centre),
- a sub-pixel offset from the pixel to the nearest centre,
- an object-vs-floor mask (areas), and
- the object's palette colour and shape (attribute evaluation; a detection takes the
  probabilities averaged over its pixels).
Detections are heat-map peaks (3x3 local maxima above ``threshold``); their centre is the peak
pixel plus its predicted offset. Training renders scenes with 0..10 objects on the fly, at a mix
of resolutions, with Gaussian blur, pixel noise and colour jitter like samplers leave.

Training takes minutes on a CPU; the result is cached per (scene vocabulary, camera,
supersampling, data-format version, detector options) under ``<cache>/heatmap-<hash>/``, and an
interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import math
import time
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..conditioning import pixel_centers
from ..config import config_hash, to_dict
from ..hardware import best_seconds
from ..io import append_jsonl, atomic_path, notice, save_tensors, write_json_atomic
from ..layout import DETECTOR_VERSION
from ..locks import folder_lock
from ..progress import progress_bar
from ..scenes import SceneBatch, SceneSampler, vocab
from ..scenes.renderers import renderer_for
from .config import HeatmapConfig
from .detector import Detections, InputError, to_unit_images
from ..checkpoints import CheckpointState, latest_checkpoint, load_checkpoint, load_extra, save_checkpoint

# ----- the network -------------------------------------------------------------------------------

def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation), nn.SiLU())


N_COLORS, N_SHAPES = len(vocab.COLOR_NAMES), len(vocab.SHAPES)
HEAT, OFFSET, FOREGROUND = 0, slice(1, 3), 3  # output channels
COLOR = slice(4, 4 + N_COLORS)
SHAPE = slice(4 + N_COLORS, 4 + N_COLORS + N_SHAPES)


class HeatmapNet(nn.Module):
    """Two downsampling stages, a dilated bottleneck, two upsampling stages with skips."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w1, w2, w3 = width, width * 3 // 2, width * 2
        self.enc1 = nn.Sequential(_conv(5, w1), _conv(w1, w1))
        self.enc2 = nn.Sequential(_conv(w1, w2, stride=2), _conv(w2, w2))
        self.enc3 = nn.Sequential(_conv(w2, w3, stride=2), _conv(w3, w3), _conv(w3, w3, dilation=2))
        self.dec2 = _conv(w3 + w2, w2)
        self.dec1 = nn.Sequential(_conv(w2 + w1, w1), _conv(w1, w1))
        self.head = nn.Conv2d(w1, SHAPE.stop, 1)
        with torch.no_grad():
            self.head.bias[HEAT] = -4.0  # start with "no object anywhere": stable focal loss

    def forward(self, images: Tensor) -> Tensor:
        """[B, 3, R, R] in [0, 1] -> [B, 4 + colours + shapes, R, R] raw outputs."""
        b, _, h, w = images.shape
        ys, xs = pixel_centers(h, images.device) * 2 - 1, pixel_centers(w, images.device) * 2 - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        x = torch.cat([images * 2 - 1, gx.expand(b, 1, h, w), gy.expand(b, 1, h, w)], 1)
        a = self.enc1(x)
        m = self.enc2(a)
        z = self.enc3(m)
        u = self.dec2(torch.cat([F.interpolate(z, size=m.shape[-2:]), m], 1))
        u = self.dec1(torch.cat([F.interpolate(u, size=a.shape[-2:]), a], 1))
        return self.head(u)


@lru_cache(maxsize=None)
def training_seconds_per_image(heat: HeatmapConfig) -> float:
    """Seconds one training image of the detector network takes on one thread, measured now:
    forward and backward at the working resolution (the scenes' rendering, a few per cent of it
    at the quick preset's sizes, is not counted). The study's schedule orders jobs by this."""
    with torch.random.fork_rng(devices=[]):
        net = HeatmapNet(heat.width)
    images = torch.rand(heat.batch_size, 3, heat.work_resolution, heat.work_resolution)
    return best_seconds(lambda: net(images).square().mean().backward(), repeats=2, threads=1) / heat.batch_size


def resize(images: Tensor, side: int) -> Tensor:
    """Area-average down, bilinear up: what a sampler's image looks like at another size."""
    if images.shape[-1] == side:
        return images
    if images.shape[-1] > side:
        return F.interpolate(images, size=(side, side), mode="area")
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)


# ----- the detector -------------------------------------------------------------------------------

class HeatmapDetector:
    """Finds objects with a trained ``HeatmapNet``; any square input size, values in [0, 1]."""

    name = "heatmap"

    def __init__(self, net: HeatmapNet, config: HeatmapConfig, batch_size: int = 256) -> None:
        self.net = net.eval()
        self.config = config
        self.batch_size = batch_size
        # 3x3 peaks must be >= 2 working pixels apart; training used min_separation.
        self.min_separation = max(config.min_separation, 2.0 / config.work_resolution)

    @torch.no_grad()
    def __call__(self, images: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> list[Detections]:
        x = to_unit_images(images, value_range)
        out: list[Detections] = []
        for start in range(0, len(x), self.batch_size):
            out += self._detect(x[start : start + self.batch_size])
        return out

    def _detect(self, x: Tensor) -> list[Detections]:
        side, wr = x.shape[-1], self.config.work_resolution
        small = resize(x, wr)
        param = next(self.net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        y = self.net(small.to(device)).float().cpu()
        heat = torch.sigmoid(y[:, HEAT])
        peaks = (heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]) & (heat > self.config.threshold)
        fg = torch.sigmoid(y[:, FOREGROUND]) > 0.5
        colour_prob, shape_prob = torch.softmax(y[:, COLOR], 1), torch.softmax(y[:, SHAPE], 1)
        return [
            self._objects(peaks[b], heat[b], y[b, OFFSET], fg[b], colour_prob[b], shape_prob[b], small[b],
                          (side / wr) ** 2)
            for b in range(len(x))
        ]

    def _objects(self, peaks, heat, offset, fg, colour_prob, shape_prob, img, area_scale) -> Detections:
        rows, cols = peaks.nonzero(as_tuple=True)
        if len(rows) == 0:
            return Detections.empty()
        wr = self.config.work_resolution
        cx = (cols + 0.5 + offset[0, rows, cols]) / wr
        cy = (rows + 0.5 + offset[1, rows, cols]) / wr
        centers = torch.stack([cx, cy], 1).clamp(0, 1)
        # Each foreground pixel belongs to the nearest peak (a Voronoi split of the mask); the peak
        # pixel always belongs to its own object, so every detection has an area.
        ys, xs = torch.meshgrid(torch.arange(wr) + 0.5, torch.arange(wr) + 0.5, indexing="ij")
        d2 = (xs[None] - (centers[:, 0, None, None] * wr)) ** 2 + (ys[None] - (centers[:, 1, None, None] * wr)) ** 2
        owner = d2.argmin(0)
        member = (owner[None] == torch.arange(len(rows))[:, None, None]) & fg[None]
        member[torch.arange(len(rows)), rows, cols] = True
        counts = member.sum((1, 2)).float()
        w = member.float()
        colors = torch.einsum("mhw,chw->mc", w, img) / counts[:, None]
        colour_idx = torch.einsum("mhw,chw->mc", w, colour_prob).argmax(1)
        shape_idx = torch.einsum("mhw,chw->mc", w, shape_prob).argmax(1)
        return Detections(
            centers=centers.double().numpy(),
            scores=heat[rows, cols].double().numpy(),
            areas=(counts * area_scale).double().numpy(),
            colors=colors.double().numpy(),
            color_index=colour_idx.numpy().astype(np.int64),
            shape_index=shape_idx.numpy().astype(np.int64),
        )


# ----- training --------------------------------------------------------------------------------

def _targets(centers: Tensor, mask: Tensor, masks: Tensor, colors: Tensor, shapes: Tensor,
             cfg: HeatmapConfig) -> dict[str, Tensor]:
    """Per-pixel training targets at the working resolution from one rendered batch."""
    wr = cfg.work_resolution
    b, n = mask.shape
    pix = torch.arange(wr) + 0.5
    gy, gx = torch.meshgrid(pix, pix, indexing="ij")
    c = centers.cpu() * wr
    dx = c[..., 0, None, None] - gx  # [B, N, H, W]: from pixel to centre
    dy = c[..., 1, None, None] - gy
    d2 = torch.where(mask[..., None, None], dx**2 + dy**2, torch.full_like(dx, 1e9))
    heat = torch.exp(-d2 / (2 * cfg.heat_sigma_px**2)).amax(1)
    peak = torch.zeros(b, wr, wr, dtype=torch.bool)
    bi, ni = mask.nonzero(as_tuple=True)
    cell = c.floor().long().clamp(0, wr - 1)
    peak[bi, cell[bi, ni, 1], cell[bi, ni, 0]] = True
    heat = torch.where(peak, torch.ones_like(heat), heat)
    nearest = d2.argmin(1, keepdim=True)
    offset = torch.cat([dx.gather(1, nearest), dy.gather(1, nearest)], 1)  # [B, 2, H, W]
    near = d2.amin(1) <= 1.5**2
    side = masks.shape[-1]
    cover = masks.float().reshape(b * n, 1, side, side)
    cover = F.adaptive_avg_pool2d(cover, wr) if side >= wr else F.interpolate(cover, size=(wr, wr), mode="nearest")
    cover = cover.reshape(b, n, wr, wr)
    owner = torch.cat([1 - cover.sum(1, keepdim=True).clamp(max=1), cover], 1).argmax(1)  # 0 = floor
    fg = owner > 0

    def per_pixel(attribute: Tensor) -> Tensor:  # the owning object's attribute (0 on the floor)
        table = torch.cat([torch.zeros(b, 1, dtype=torch.long), attribute.cpu().long()], 1)
        return table.gather(1, owner.reshape(b, -1)).reshape(b, wr, wr)

    return {"heat": heat, "peak": peak, "offset": offset, "near": near, "fg": fg,
            "color": per_pixel(colors), "shape": per_pixel(shapes)}


def _focal_loss(logit: Tensor, heat: Tensor, peak: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss: few positives, soft negatives near them."""
    p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
    pos = -((1 - p) ** 2) * torch.log(p) * peak
    neg = -((1 - heat) ** 4) * p**2 * torch.log(1 - p) * ~peak
    return (pos.sum() + neg.sum()) / peak.sum().clamp(min=1)


def detector_loss(y: Tensor, t: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    heat = _focal_loss(y[:, HEAT], t["heat"], t["peak"])
    near = t["near"].float()
    offset = ((y[:, OFFSET] - t["offset"]).abs().sum(1) * near).sum() / near.sum().clamp(min=1)
    fg = F.binary_cross_entropy_with_logits(y[:, FOREGROUND], t["fg"].float())
    fgw = t["fg"].float()
    colour = (F.cross_entropy(y[:, COLOR], t["color"], reduction="none") * fgw).sum() / fgw.sum().clamp(min=1)
    shape = (F.cross_entropy(y[:, SHAPE], t["shape"], reduction="none") * fgw).sum() / fgw.sum().clamp(min=1)
    total = heat + offset + fg + 0.5 * colour + 0.5 * shape
    return total, {"heat": heat.item(), "offset": offset.item(), "fg": fg.item(), "color": colour.item(),
                   "shape": shape.item()}


def gaussian_blur(images: Tensor, sigma_px: Tensor | float) -> Tensor:
    """Blur each image with its own sigma (pixels); sigma 0 leaves it unchanged."""
    sig = torch.as_tensor(sigma_px, dtype=images.dtype).reshape(-1).expand(len(images))
    out = images.clone()
    for i in (sig > 0.05).nonzero(as_tuple=True)[0].tolist():
        s = float(sig[i])
        r = max(1, math.ceil(3 * s))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=images.dtype) / s) ** 2)
        k = k / k.sum()
        x = F.pad(images[i : i + 1], (r, r, r, r), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        out[i] = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]
    return out


def _augment(images: Tensor, cfg: HeatmapConfig, gen: torch.Generator) -> Tensor:
    """Sampler-like damage: blur at the render size, then resize, pixel noise, colour jitter."""
    b, side = images.shape[0], images.shape[-1]
    on = torch.rand(b, generator=gen) < 0.7
    sigma = torch.rand(b, generator=gen) * cfg.blur_max_px * side / 32 * on
    x = resize(gaussian_blur(images, sigma), cfg.work_resolution)
    on = (torch.rand(b, 1, 1, 1, generator=gen) < 0.7).float()
    std = torch.rand(b, 1, 1, 1, generator=gen) * cfg.noise_max * on
    x = x + std * torch.randn(x.shape, generator=gen)
    gain = 1 + cfg.jitter * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    shift = cfg.jitter * (torch.rand(b, 3, 1, 1, generator=gen) - 0.5)
    return (x * gain + shift).clamp(0, 1)


def render_fingerprint(data_cfg) -> str:
    """Hash of a fixed reference scene rendered with ``data_cfg``'s camera and supersampling.

    Part of the cache key so that any change to the renderer's look (lights, materials, shadows)
    retrains the detector even if nobody remembered to bump a version number.
    """

    n = len(vocab.COLOR_NAMES)
    scenes = SceneBatch.empty(2, n)
    scenes.color[0] = torch.arange(n)
    scenes.shape[0] = torch.arange(n) % len(vocab.SHAPES)
    scenes.material[0] = torch.arange(n) % len(vocab.MATERIALS)
    scenes.size[0] = (torch.arange(n) // 2) % len(vocab.SIZE_NAMES)
    angle = torch.arange(n) * (2 * math.pi / n)
    scenes.positions[0] = 2.0 * torch.stack([angle.cos(), angle.sin()], -1)
    scenes.rotations[0] = angle
    scenes.mask[0] = True
    images = renderer_for(data_cfg, 32)(scenes, with_masks=False).images
    return hashlib.sha256((images * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def detector_key(data_cfg, cfg: HeatmapConfig) -> str:
    """Cache key: everything that changes what the detector sees or how it was trained."""
    scene = replace(data_cfg.scene, min_separation=cfg.min_separation)
    return config_hash({
        "version": DETECTOR_VERSION, "look": render_fingerprint(data_cfg), "scene": to_dict(scene),
        "camera": to_dict(data_cfg.camera), "supersample": data_cfg.supersample, "detector": to_dict(cfg),
    })


def train_heatmap_detector(data_cfg, cfg: HeatmapConfig | None = None, folder: str | Path | None = None,
                           progress: bool = False, device: str | torch.device = "cpu") -> HeatmapDetector:
    """Train a detector on fresh renders that look like ``data_cfg``'s (a ``scenes.DataConfig``).

    With ``folder`` the training checkpoints there every ``checkpoint_every`` images and resumes
    from the last checkpoint when called again; the finished weights are ``detector.safetensors``.
    """

    cfg = cfg or HeatmapConfig()
    scene_cfg = replace(data_cfg.scene, min_separation=cfg.min_separation, max_objects=max(cfg.max_objects, data_cfg.scene.max_objects))
    sampler = SceneSampler(scene_cfg, data_cfg.camera)
    sides = sorted(set(cfg.render_resolutions) | {data_cfg.resolution})
    renderers = {r: renderer_for(data_cfg, r, device) for r in sides}
    with torch.random.fork_rng(devices=[]):  # initial weights from the seed, the global stream untouched
        torch.manual_seed(cfg.seed)
        net = HeatmapNet(cfg.width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)  # the detector's stream since version 1 (weights unchanged)
    folder = Path(folder) if folder is not None else None
    seen, step = _resume(folder, net, opt, gen)
    net.train()
    bar = progress_bar(cfg.train_images, "detector", "img", enabled=progress, initial=seen)
    since_ckpt, t0 = 0, time.perf_counter()
    while seen < cfg.train_images:
        for group in opt.param_groups:  # cosine schedule over the image budget
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * seen / max(cfg.train_images, 1)))
        x, targets = _training_batch(sampler, renderers, cfg, gen)
        loss, parts = detector_loss(net(x.to(device)).cpu(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += cfg.batch_size
        step += 1
        since_ckpt += cfg.batch_size
        bar.update(cfg.batch_size)
        if folder is not None and (since_ckpt >= cfg.checkpoint_every or seen >= cfg.train_images):
            since_ckpt = 0
            save_checkpoint(folder, net, None, opt, CheckpointState(seen, step, folder.name), keep=1,
                            extra={"generator": gen.get_state()})
            append_jsonl(Path(folder) / "training_log.jsonl", {
                "images_seen": seen, "loss": round(loss.item(), 5), **{k: round(v, 5) for k, v in parts.items()},
                "seconds": round(time.perf_counter() - t0, 1),
            })
    bar.close()
    net.eval()
    return HeatmapDetector(net.cpu(), cfg)


def _resume(folder: Path | None, net: nn.Module, opt, gen: torch.Generator) -> tuple[int, int]:
    """(images seen, step) of the last checkpoint in ``folder``, its weights, Adam moments and scene
    generator restored (no pickles); (0, 0) to start."""
    ckpt = latest_checkpoint(folder) if folder is not None else None
    if ckpt is None:
        return 0, 0
    meta = load_checkpoint(ckpt, net, None, opt)
    gen.set_state(load_extra(ckpt)["generator"])
    return meta["images_seen"], meta["step"]


def _training_batch(sampler, renderers: dict, cfg: HeatmapConfig, gen: torch.Generator) -> tuple[Tensor, dict]:
    """Fresh scenes with 0..max_objects objects, rendered at a random one of the sides, augmented."""
    counts = torch.randint(0, cfg.max_objects + 1, (cfg.batch_size,), generator=gen)
    scenes = sampler.sample(counts, gen, slots=cfg.max_objects)
    sides = list(renderers)
    side = sides[int(torch.randint(len(sides), (1,), generator=gen))]
    rendered = renderers[side](scenes)
    targets = _targets(rendered.centers, scenes.mask.cpu(), rendered.masks.cpu(), scenes.color, scenes.shape, cfg)
    return _augment(rendered.images.cpu(), cfg, gen), targets


def save_detector(detector: HeatmapDetector, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "detector.safetensors") as tmp:
        save_tensors({k: v.detach().cpu().contiguous() for k, v in detector.net.state_dict().items()}, str(tmp))
    write_json_atomic(folder / "detector.json", {"version": DETECTOR_VERSION, "config": asdict(detector.config)})
    return folder / "detector.safetensors"


def load_detector(folder: str | Path) -> HeatmapDetector:
    """Load a detector saved by ``save_detector``; clear errors for missing or stale files."""
    folder = Path(folder)
    meta_path, weights = folder / "detector.json", folder / "detector.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise InputError(f"no trained detector in {str(folder)!r} (expected detector.json and detector.safetensors)")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != DETECTOR_VERSION:
        raise InputError(
            f"detector in {str(folder)!r} has version {meta.get('version')}, this code expects "
            f"{DETECTOR_VERSION}; delete the folder to retrain"
        )
    raw = meta["config"]
    raw["render_resolutions"] = tuple(raw["render_resolutions"])
    cfg = HeatmapConfig(**raw)
    net = HeatmapNet(cfg.width)
    net.load_state_dict(load_file(str(weights)))
    return HeatmapDetector(net, cfg)


def _train_into(folder: Path, data_cfg, cfg: HeatmapConfig, progress: bool, device) -> None:
    if (folder / "training_state.pt").exists():  # made by locodiff <= 0.1 with torch.save
        notice(f"{folder / 'training_state.pt'} is a pickle from an older locodiff; it is never loaded "
               "(loading pickles can run code): training the detector from the start")
    save_detector(train_heatmap_detector(data_cfg, cfg, folder, progress=progress, device=device), folder)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # only needed to resume


def load_or_train_detector(data_cfg, cache_dir: str | Path, cfg: HeatmapConfig | None = None,
                           progress: bool = False, device: str | torch.device = "cpu") -> HeatmapDetector:
    """The cached detector for ``data_cfg``'s look, training (or finishing training) it if needed."""
    cfg = cfg or HeatmapConfig()
    name = f"heatmap-{detector_key(data_cfg, cfg)}"
    folder = Path(cache_dir) / name
    if not (folder / "detector.safetensors").is_file():
        with folder_lock(folder, f"the detector {name} is being trained"):
            if not (folder / "detector.safetensors").is_file():  # another process may have finished it
                _train_into(folder, data_cfg, cfg, progress, device)
    detector = load_detector(folder)
    detector.name = name  # names the exact weights in eval.json and on resume
    return detector

"""The detectors' ceiling on ground-truth renders: the validation table the study report shows.

    python benchmarks/detector.py                       # both detectors, 32 and 64 px, k = 0..10
    python benchmarks/detector.py --per-count 30 --quick  # fewer scenes, clean + blur+noise only

For each detector, resolution, perturbation (clean; Gaussian blur sigma 0.5 px; noise std 0.03;
both) and requested count k: exact-count accuracy, success (exact count and every object within
the match radius), and mean location error in pixels. The heat-map detector is trained first if
no cached one exists for this data config (minutes on a CPU; cached under --cache).
Writes <out>/detector_validation.json and .md (one section per detector).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from locodiff.evaluate import (  # noqa: E402
    ColorDetector, HeatmapConfig, ValidationSpec, load_or_train_detector, validate_detector, validation_markdown,
)
from locodiff.evaluate.validation import PERTURBATIONS
from locodiff.io import write_json_atomic, write_text_atomic
from locodiff.scenes import DataConfig, Renderer, SceneSampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--per-count", type=int, default=100)
    ap.add_argument("--min-separation", type=float, default=None, help="default: the data config's (0.12)")
    ap.add_argument("--detectors", nargs="+", default=["heatmap", "color"], choices=["heatmap", "color"])
    ap.add_argument("--train-images", type=int, default=HeatmapConfig().train_images)
    ap.add_argument("--cache", type=Path, default=Path("runs/detectors"))
    ap.add_argument("--out", type=Path, default=Path("runs/detector_validation"))
    ap.add_argument("--quick", action="store_true", help="clean and blur+noise only")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = DataConfig()
    perturbations = PERTURBATIONS
    if args.quick:
        perturbations = {k: v for k, v in PERTURBATIONS.items() if k in ("clean", "blur0.5+noise0.03")}
    tables, markdown = {}, []
    for name in args.detectors:
        start = time.perf_counter()
        if name == "heatmap":
            det = load_or_train_detector(data, args.cache, HeatmapConfig(train_images=args.train_images), progress=True)
        else:
            sampler = SceneSampler(data.scene, data.camera)

            def det(res, sampler=sampler):
                return ColorDetector.calibrate(Renderer(res, data.supersample, data.camera), sampler, generator=0)
        ready = time.perf_counter() - start
        spec = ValidationSpec(tuple(args.resolutions), per_count=args.per_count, perturbations=perturbations,
                              min_separation=args.min_separation)
        table = validate_detector(det, data, spec, progress=True)
        table["seconds_to_build"] = round(ready, 1)
        table["seconds_to_validate"] = round(time.perf_counter() - start - ready, 1)
        tables[name] = table
        markdown.append(f"## {name}\n\n" + validation_markdown(table))
        print(markdown[-1])
        print(json.dumps(table["overall"], indent=1))
    write_json_atomic(args.out / "detector_validation.json", tables)
    write_text_atomic(args.out / "detector_validation.md", "\n".join(markdown))
    print(f"wrote {args.out / 'detector_validation.json'} and .md")


if __name__ == "__main__":
    main()

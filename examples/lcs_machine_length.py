"""Does a score that is local by construction length-generalize with no network at all?

Builds the analytic local conditional score machine (``intervene.LCSMachine``) over the first
``--images`` training scenes of a finished study (its data set and its cached detector), samples
it for a few object counts and scores the samples exactly like the study scores its models.

    python examples/lcs_machine_length.py --study runs/quick --counts 1,3,5 --per-count 8

The machine is slow (every output pixel searches every training patch: at 16x16 one denoiser
call on 8 images over 2000 training images takes seconds on one core), so this is an example
run beside the study, not a study stage. Results go to ``<study>/lcs_machine-<policy>/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from locodiff.evaluate.runner import EvalConfig, evaluate_model
from locodiff.analytic.lcs_machine import LCSMachine
from locodiff.layout import dataset_root
from locodiff.scenes.dataset import SceneDataset
from locodiff.stages.config import load_study_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=Path("runs/quick"), help="a finished study's out_dir")
    parser.add_argument("--policy", choices=("all", "one"), default="all", help="conditioners of the training patches")
    parser.add_argument("--images", type=int, default=2000, help="training images the machine searches")
    parser.add_argument("--counts", default="1,3,5", help="object counts k to sample")
    parser.add_argument("--per-count", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="Euler steps")
    parser.add_argument("--locality-radius", type=int, default=None,
                        help="LS variant: candidate patches within this many pixels (default: ELS, any position)")
    parser.add_argument("--out", type=Path, default=None, help="default: <study>/lcs_machine-<policy>")
    args = parser.parse_args()

    saved = args.study / "study_config.json"
    if not saved.is_file():
        parser.error(f"{saved} not found; run the study first (make quick) or pass --study")
    cfg = load_study_config(None, saved, [f"out_dir={str(args.study)!r}"])
    data = SceneDataset(dataset_root(cfg.data, cfg.out_dir), "train")
    machine = LCSMachine.from_dataset(data, args.policy, max_images=args.images,
                                      generator=torch.Generator().manual_seed(cfg.seed),
                                      locality_radius=args.locality_radius)
    ev = EvalConfig(counts=tuple(int(k) for k in args.counts.split(",")), per_count=args.per_count,
                    batch_size=args.per_count, sampler="euler", steps=args.steps,
                    min_separation=cfg.evaluate.min_separation, heatmap=cfg.evaluate.heatmap,
                    grid_per_count=min(8, args.per_count))
    out = args.out or args.study / f"lcs_machine-{args.policy}"
    result = evaluate_model(machine, cfg.data, out, ev, cfg.detector_cache(), progress=True)
    print(result.markdown())
    print(f"fallback pixels (no compatible training patch): {machine.fallback_rate:.1%}; results in {out}")


if __name__ == "__main__":
    main()

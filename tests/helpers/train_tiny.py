"""Train a tiny run, for the multi-process tests: ``torchrun --nproc_per_node N train_tiny.py RUN_DIR``.

Every process runs this; accelerate reads the launcher's environment (RANK, WORLD_SIZE, ...) and
splits each batch between them.
"""

import sys
from pathlib import Path

from accelerate import PartialState

from locodiff.models.config import ModelConfig
from locodiff.scenes.config import DataConfig
from locodiff.train.config import RunConfig, TrainConfig
from locodiff.train.data import StreamBatches
from locodiff.train.run import train_run

DATA = DataConfig(resolution=16, supersample=1, train_images=64, test_images_per_count=2)
MODEL = ModelConfig(arch="cross_attention", image_size=16, channels=(8, 16), norm_groups=4, head_dim=8, token_dim=16)


def tiny_run(total_images: int = 64) -> RunConfig:
    train = TrainConfig(total_images=total_images, batch_size=8, lr=2e-3, warmup_images=0, log_every_images=8,
                        checkpoint_every_images=16, ema_halflife_images=32, precision="fp32", threads=1)
    return RunConfig(name="tiny", seed=3, label_policy="one", data=DATA, model=MODEL, train=train)


if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    total = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    train_run(tiny_run(total), run_dir, StreamBatches(DATA, "one", 3), progress=False)
    state = PartialState()  # what accelerate saw: one file per process
    (run_dir / f"rank-{state.process_index}").write_text(f"{state.num_processes} {state.distributed_type}")

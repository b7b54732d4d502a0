"""Test-wide settings: tiny models run fastest on one thread (and don't fight over 2 cores)."""

import os

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(int(os.environ.get("LOCODIFF_TEST_THREADS", "1")))

"""Exponential moving average of weights with a half-life measured in images (EDM)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, halflife_images: int):
        self.halflife_images = halflife_images
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, batch_images: int) -> None:
        beta = 0.5 ** (batch_images / max(self.halflife_images, 1e-8)) if self.halflife_images else 0.0
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - beta)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

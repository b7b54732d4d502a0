"""EDM's Heun sampler as a diffusers scheduler, and the few lines that let diffusers' own EDM
schedulers drive a locodiff model.

``LocodiffHeunScheduler`` is the pipeline's default: EDM Algorithm 1 (an Euler step, then the
trapezoidal correction) on the Karras noise levels, taking the same arithmetic steps in the same
order as ``locodiff.diffusion.sample_heun``, so a pipeline and ``locodiff sample`` give the same
images bit for bit. Like diffusers' ``HeunDiscreteScheduler`` it is called twice per level (once
for the Euler step, once for the correction), so ``timesteps`` holds ``2 * steps - 1`` entries.

Any diffusers scheduler built on EDM's noise levels works too (``EDMEulerScheduler``,
``EDMDPMSolverMultistepScheduler``):

    pipe.scheduler = EDMDPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

The pipeline reads the level of each call from ``scheduler.sigmas[scheduler.step_index]`` and
hands the scheduler the model's ``x0`` in the form its ``prediction_type`` asks for.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from torch import Tensor

from ..diffusion.precond import SIGMA_DATA
from ..diffusion.schedule import karras_sigmas
from ..errors import InputError


class LocodiffHeunScheduler(SchedulerMixin, ConfigMixin):
    """EDM's deterministic Heun sampler; ``step`` takes the denoised image as the model's output."""

    order = 2
    takes_denoised = True  # no prediction_type in the config, so that from_config gives EDM schedulers theirs

    @register_to_config
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = SIGMA_DATA,
                 rho: float = 7.0) -> None:
        self.set_timesteps(18)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Karras levels ``sigma_0 > ... > sigma_{n-1} > 0``; the model is called at ``sigma_0``, then
        twice at each later level (the correction of the step that reached it, then the next step)."""
        cfg = self.config
        self.levels = karras_sigmas(num_inference_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        calls = [self.levels[0]] + [s for s in self.levels[1:-1] for _ in range(2)]
        self.sigmas = torch.stack([*calls, self.levels[-1]])
        self.timesteps = self.sigmas[:-1].to(device)
        self.num_inference_steps = num_inference_steps
        self._step_index: int | None = None
        self._level = 0
        self._euler: tuple[Tensor, Tensor] | None = None  # (x, d) of the step being corrected

    @property
    def init_noise_sigma(self) -> Tensor:
        return self.levels[0]

    @property
    def step_index(self) -> int | None:
        return self._step_index

    def scale_model_input(self, sample: Tensor, timestep: Tensor | float | None = None) -> Tensor:
        """Unchanged: a locodiff model scales its own input (EDM's c_in). Starts the step count."""
        if self._step_index is None:
            self._step_index = 0
        return sample

    def step(self, model_output: Tensor, timestep: Tensor | float, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """One call: the Euler step from the current level to the next, or that step's correction."""
        if self._step_index is None:
            self._step_index = 0
        sigma, sigma_next = (s.to(sample.device) for s in self.levels[self._level: self._level + 2])
        if self._euler is None:
            d = (sample - model_output) / sigma
            prev = sample + (sigma_next - sigma) * d
            if sigma_next > 0:
                self._euler = (sample, d)
            else:
                self._level += 1
        else:
            x, d = self._euler
            d_next = (sample - model_output) / sigma_next
            prev = x + (sigma_next - sigma) * (d + d_next) / 2
            self._euler = None
            self._level += 1
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def __len__(self) -> int:
        return len(self.timesteps)


def model_output_for(scheduler, x: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    """What ``scheduler.step`` expects from a network whose denoised image is ``x0``: ``x0`` itself
    for ``"sample"``, else the raw output ``F`` that EDM's preconditioning turns into ``x0``
    (``x0 = c_skip x + c_out F``, solved for ``F`` with the scheduler's own ``sigma_data``)."""
    kind = "sample" if getattr(scheduler, "takes_denoised", False) else scheduler.config.get("prediction_type")
    if kind == "sample":
        return x0
    if kind not in ("epsilon", "v_prediction"):
        raise InputError(f"scheduler {type(scheduler).__name__}: prediction_type {kind!r} is not one a "
                         "locodiff model can give (sample, epsilon or v_prediction on EDM's levels)")
    sigma_data = scheduler.config.sigma_data
    total = sigma**2 + sigma_data**2
    c_out = sigma * sigma_data / total.sqrt() * (1 if kind == "epsilon" else -1)
    return (x0 - sigma_data**2 / total * x) / c_out


def check_scheduler(scheduler) -> None:
    """One line if a scheduler cannot drive a locodiff model: it must expose EDM's noise levels."""
    config = getattr(scheduler, "config", {})
    on_edm_levels = "sigma_data" in config
    if not (hasattr(scheduler, "sigmas") and hasattr(scheduler, "step_index") and on_edm_levels):
        raise InputError(f"scheduler {type(scheduler).__name__}: a locodiff model needs one on EDM's noise "
                         "levels (LocodiffHeunScheduler, EDMEulerScheduler, EDMDPMSolverMultistepScheduler)")

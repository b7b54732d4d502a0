"""The diffusion core, after EDM (Karras et al. 2022): schedule, preconditioning, loss, samplers,
guidance and score composition, plus closed-form denoisers that serve as ground truth.

Everything here speaks the ``Denoiser`` protocol ``(x, sigma, cond) -> x0_hat``: samplers and
wrappers take any denoiser, and the wrappers are denoisers themselves.
"""

from .analytic import GaussianDenoiser, GaussianMixtureDenoiser
from .guidance import ClassifierFreeGuidance, ScoreComposition
from .loss import EDMLoss, Rows
from .precond import SIGMA_DATA, EDMPrecond, preconditioning
from .samplers import Churn, Trajectory, get_sampler, sample_euler, sample_heun, sample_stochastic
from .schedule import karras_sigmas, sample_training_sigmas

__all__ = [
    "Churn",
    "SIGMA_DATA",
    "ClassifierFreeGuidance",
    "EDMLoss",
    "Rows",
    "EDMPrecond",
    "GaussianDenoiser",
    "GaussianMixtureDenoiser",
    "ScoreComposition",
    "Trajectory",
    "get_sampler",
    "karras_sigmas",
    "preconditioning",
    "sample_euler",
    "sample_heun",
    "sample_stochastic",
    "sample_training_sigmas",
]

"""A diffusers ``UNet2DConditionModel`` (Stable Diffusion 1.x/2.x, SDXL, or locodiff's own text UNet) as a
locodiff ``Denoiser``: ``DiffusersDenoiser`` wraps an already built UNet and its scheduler (loading one from
disk is ``adapters.load_diffusers_unet``; the ``Prompt`` it reads is in ``conditioning``).

Noise levels
------------
locodiff speaks EDM: ``x = x0 + sigma * n`` with ``n ~ N(0, I)``, and a denoiser returns an
estimate of ``x0``. A DDPM-family model (DDPM, DDIM, Euler, PNDM schedulers) was trained on the
variance-preserving mix ``z_t = sqrt(a_t) x0 + sqrt(1 - a_t) n`` with ``a_t = alphas_cumprod[t]``.
Dividing ``z_t`` by ``sqrt(a_t)`` gives exactly the EDM form, with

    sigma_t = sqrt((1 - a_t) / a_t),      equivalently  a_t = 1 / (1 + sigma_t^2),

so an EDM input ``x`` at level ``sigma`` is the VP input ``z = x / sqrt(1 + sigma^2)`` at the
timestep whose ``sigma_t`` equals ``sigma``. ``sigma_t`` grows with ``t``; the adapter finds the
timestep by linear interpolation of ``t`` in ``log sigma_t`` between the two neighbouring integer
steps (the sinusoidal timestep embedding accepts fractional ``t``), or snaps to the nearest step
(``timestep="nearest"``: exactly what the network saw in training, but ``sigma`` is then only
approximately honoured). Noise levels outside ``[sigma_min, sigma_max]`` of the training table
are an error: the network never saw them.

From the network output to ``x0`` (``c = 1 / sqrt(1 + sigma^2)``, so ``sqrt(a) = c`` and
``sqrt(1 - a) = sigma c``):

- ``epsilon``: the output estimates ``n``; ``x0 = x - sigma * eps``.
- ``v_prediction``: the output estimates ``v = sqrt(a) n - sqrt(1 - a) x0``; then
  ``x0 = sqrt(a) z - sqrt(1 - a) v = c^2 x - sigma c v``.
- ``sample``: the output is ``x0`` itself.

The skip terms are computed in float32 (float64 for float64 input) even when the UNet runs in
bf16/fp16, as ``EDMPrecond`` does, so a low-precision network does not lose ``x``'s detail. The
latents and the prompt are cast to the UNet's dtype at its boundary and the result comes back in
the latents' dtype: give float32 latents (and prompt) to a bf16 UNet, so that Jacobians, scores
and sums of squares are float32 while the network itself runs in bf16.

Latents are the UNet's own inputs, i.e. VAE latents already multiplied by the VAE's
``scaling_factor`` (0.18215 for SD 1.x/2.x, 0.13025 for SDXL); the adapter does not touch the VAE.

Prompts
-------
A locodiff ``Conditioning`` holds 2-D locations and does not describe a text prompt, so a
diffusers model's conditioning is a ``Prompt``: the token embeddings ``encoder_hidden_states``
``[B, T, D]`` (what cross-attention reads) and, for SDXL (``addition_embed_type="text_time"``),
the pooled embedding ``text_embeds [B, D_pool]`` and the six size/crop numbers ``time_ids [B, 6]``.
The adapter holds a default prompt; ``adapter(x, sigma, cond)`` uses ``cond`` when it is a
``Prompt`` and the held prompt otherwise (a ``Conditioning``, e.g. ``Conditioning.empty(B)``, is
accepted and ignored), so every pixel-locality tool runs unchanged. ``token_fn`` turns the token
embeddings into the differentiated variable, and ``token_sensitivity`` measures per-token
conditional locality: for each output pixel, how much each token's embedding moves the score.
"""


from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..conditioning import Conditioning, Prompt
from ..denoiser import as_sigma_batch
from ..errors import InputError

PredictionType = Literal["epsilon", "v_prediction", "sample"]
TimestepMode = Literal["interpolate", "nearest"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SigmaRange = Literal["error", "clamp"]
SCHEDULER_FILE = "scheduler_config.json"
# Relative tolerance on the sigma range, so that the table's own end points are accepted.
_RANGE_TOL = 1e-5


# ----- the VP <-> EDM noise-level map --------------------------------------------------------


class VPSchedule:
    """The training noise levels of a DDPM-family scheduler in EDM units, and sigma -> timestep.

    ``sigmas[t] = sqrt((1 - a_t) / a_t)`` from ``alphas_cumprod``; kept in float64 on the CPU
    (a zero-terminal-SNR schedule's last ``a_t = 0`` is clamped to a tiny positive value).
    """

    def __init__(self, alphas_cumprod: Tensor) -> None:
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64, device="cpu").detach().reshape(-1)
        if a.numel() < 2 or not torch.isfinite(a).all() or (a > 1).any() or (a < 0).any():
            raise InputError(
                f"alphas_cumprod must be >= 2 values in [0, 1], got {a.numel()} values "
                f"in [{float(a.min()):.3g}, {float(a.max()):.3g}]"
            )
        a = a.clamp(min=1e-12)
        self.sigmas = ((1 - a) / a).sqrt()
        if not (self.sigmas[1:] >= self.sigmas[:-1]).all():
            raise InputError("alphas_cumprod must decrease with the timestep")
        self.log_sigmas = self.sigmas.clamp_min(1e-30).log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Tensor, mode: TimestepMode = "interpolate", clamp: bool = False) -> Tensor:
        """Fractional (or nearest integer) timesteps ``[B]`` float32 for noise levels ``[B]``;
        outside the table an error, or with ``clamp`` the table's first or last step."""
        s = sigma.detach().to("cpu", torch.float64)
        lo_ok = s >= self.sigma_min * (1 - _RANGE_TOL)
        hi_ok = s <= self.sigma_max * (1 + _RANGE_TOL)
        if not clamp and not (lo_ok & hi_ok).all():
            bad = float(s[~(lo_ok & hi_ok)][0])
            raise InputError(
                f"sigma={bad:.4g} is outside the model's training range "
                f"[{self.sigma_min:.4g}, {self.sigma_max:.4g}] (EDM units, "
                "sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]))"
            )
        log_s = s.clamp(self.sigma_min, self.sigma_max).log()
        if mode == "nearest":
            t = (log_s[:, None] - self.log_sigmas[None, :]).abs().argmin(1).to(torch.float64)
        elif mode == "interpolate":
            n = self.log_sigmas.numel()
            hi = torch.searchsorted(self.log_sigmas, log_s).clamp(1, n - 1)
            lo = hi - 1
            span = (self.log_sigmas[hi] - self.log_sigmas[lo]).clamp_min(1e-30)
            frac = ((log_s - self.log_sigmas[lo]) / span).clamp(0, 1)
            t = lo.to(torch.float64) + frac
        else:
            raise InputError(f"timestep={mode!r}: expected 'interpolate' or 'nearest'")
        return t.to(device=sigma.device, dtype=torch.float32)


# ----- the adapter ---------------------------------------------------------------------------


class DiffusersDenoiser(nn.Module):
    """``(x [B,C,H,W] latents, sigma [B], cond) -> x0_hat`` for a diffusers conditional UNet.

    ``scheduler`` is any diffusers scheduler with ``alphas_cumprod`` (DDPM, DDIM, Euler, PNDM,
    ...); its ``config.prediction_type`` says what the UNet predicts unless ``prediction_type`` is
    given. ``prompt`` is the default conditioning (see the module doc); it is plain state, not a
    buffer, and is moved to the UNet's device and dtype at each call. Put it in ``eval()``.
    ``sigma_range="clamp"`` gives noise levels outside the table the timestep of its nearest end
    (the skip terms still use the true sigma) instead of an error: for training, whose log-normal
    noise levels have tails beyond any table.
    """

    def __init__(
        self,
        unet: nn.Module,
        scheduler: Any,
        prompt: Prompt | None = None,
        *,
        prediction_type: PredictionType | None = None,
        timestep: TimestepMode = "interpolate",
        sigma_range: SigmaRange = "error",
    ) -> None:
        super().__init__()
        self.unet = unet
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise InputError(
                f"scheduler {type(scheduler).__name__} has no alphas_cumprod; expected a "
                "DDPM-family scheduler (DDPM, DDIM, Euler, PNDM, ...). Flow-matching models "
                "(SD3, FLUX) are not supported"
            )
        self.schedule = VPSchedule(alphas)
        config = getattr(scheduler, "config", {})
        pred = prediction_type or _config_get(config, "prediction_type", "epsilon")
        if pred not in PREDICTION_TYPES:
            raise InputError(f"prediction_type={pred!r}: expected one of {PREDICTION_TYPES}")
        self.prediction_type: str = pred
        if timestep not in ("interpolate", "nearest"):
            raise InputError(f"timestep={timestep!r}: expected 'interpolate' or 'nearest'")
        self.timestep_mode: str = timestep
        if sigma_range not in ("error", "clamp"):
            raise InputError(f"sigma_range={sigma_range!r}: expected 'error' or 'clamp'")
        self.clamp_sigma = sigma_range == "clamp"
        self.prompt = None if prompt is None else self.check_prompt(prompt)

    # ----- model facts ----------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    @property
    def is_sdxl(self) -> bool:
        return _config_get(self.unet.config, "addition_embed_type", None) == "text_time"

    def _unet_param(self) -> Tensor:
        return next(self.unet.parameters())

    # ----- prompts --------------------------------------------------------------------------
    def set_prompt(self, prompt: Prompt) -> "DiffusersDenoiser":
        self.prompt = self.check_prompt(prompt)
        return self

    def check_prompt(self, prompt: Prompt) -> Prompt:
        """Check a prompt's shapes against the UNet's config; errors say what was expected."""
        if not isinstance(prompt, Prompt):
            raise InputError(f"expected a Prompt, got {type(prompt).__name__}")
        cfg = self.unet.config
        ehs = prompt.encoder_hidden_states
        dim = _config_get(cfg, "cross_attention_dim", None)
        if ehs.ndim != 3 or (isinstance(dim, int) and ehs.shape[-1] != dim):
            raise InputError(
                f"encoder_hidden_states has shape {tuple(ehs.shape)}: expected [batch, tokens, "
                f"{dim}] (the UNet's cross_attention_dim)"
            )
        if self.is_sdxl:
            if prompt.text_embeds is None or prompt.time_ids is None:
                raise InputError(
                    "this UNet has addition_embed_type='text_time' (SDXL): the prompt needs "
                    "text_embeds [batch, pooled_dim] and time_ids [batch, 6] as well as "
                    "encoder_hidden_states"
                )
            want = _config_get(cfg, "projection_class_embeddings_input_dim", None)
            per_id = _config_get(cfg, "addition_time_embed_dim", None)
            if prompt.text_embeds.ndim != 2 or prompt.time_ids.ndim != 2:
                raise InputError(
                    f"text_embeds {tuple(prompt.text_embeds.shape)} and time_ids "
                    f"{tuple(prompt.time_ids.shape)}: expected [batch, pooled_dim] and [batch, 6]"
                )
            got = prompt.text_embeds.shape[-1] + prompt.time_ids.shape[-1] * (per_id or 0)
            if want is not None and per_id is not None and got != want:
                raise InputError(
                    f"text_embeds width {prompt.text_embeds.shape[-1]} + time_ids "
                    f"{prompt.time_ids.shape[-1]} x {per_id} = {got}, but the UNet expects "
                    f"projection_class_embeddings_input_dim={want}"
                )
        return prompt

    def resolve_prompt(self, cond: Any, batch: int) -> Prompt:
        if isinstance(cond, Prompt):
            prompt = self.check_prompt(cond)
        elif cond is None or isinstance(cond, Conditioning):
            if self.prompt is None:
                raise InputError(
                    "no prompt: pass a Prompt as the conditioning or set one with set_prompt() "
                    "(a locodiff Conditioning carries no text for a diffusers UNet)"
                )
            prompt = self.prompt
        else:
            raise InputError(
                f"conditioning of type {type(cond).__name__}: expected a Prompt, a "
                "Conditioning (ignored; the held prompt is used) or None"
            )
        return prompt.expand(batch)

    # ----- the denoiser ---------------------------------------------------------------------
    def forward(
        self, x: Tensor, sigma: Tensor | float, cond: Prompt | Conditioning | None = None
    ) -> Tensor:
        in_ch = _config_get(self.unet.config, "in_channels", None)
        if x.ndim != 4 or (in_ch is not None and x.shape[1] != in_ch):
            raise InputError(
                f"latents have shape {tuple(x.shape)}: expected [batch, {in_ch}, height, width]"
            )
        prompt = self.resolve_prompt(cond, x.shape[0])
        hi = torch.float64 if x.dtype == torch.float64 else torch.float32
        x_hi = x.to(hi)
        s = as_sigma_batch(sigma, x_hi)
        t = self.schedule.timestep(s, self.timestep_mode, self.clamp_sigma)  # type: ignore[arg-type]
        c = (1 + s**2).rsqrt().reshape(-1, 1, 1, 1)  # sqrt(a_t)
        param = self._unet_param()
        net_dtype = param.dtype
        prompt = prompt.to(device=param.device, dtype=net_dtype)
        added = None
        if self.is_sdxl:
            added = {"text_embeds": prompt.text_embeds, "time_ids": prompt.time_ids}
        out = self.unet(
            (c * x_hi).to(net_dtype), t, prompt.encoder_hidden_states,
            added_cond_kwargs=added, return_dict=False,
        )[0].to(hi)
        if out.shape != x.shape:
            raise InputError(
                f"UNet output shape {tuple(out.shape)} differs from its input {tuple(x.shape)}; "
                "expected out_channels == in_channels (a learned-variance UNet is not supported)"
            )
        sb = s.reshape(-1, 1, 1, 1)
        if self.prediction_type == "epsilon":
            x0 = x_hi - sb * out
        elif self.prediction_type == "v_prediction":
            x0 = c**2 * x_hi - sb * c * out
        else:
            x0 = out
        return x0.to(x.dtype)


def _config_get(config: Any, key: str, default: Any) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)

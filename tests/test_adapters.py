"""diffusers adapter and feature probes, on tiny randomly initialised SD-1.x- and SDXL-shaped
UNets built from config dicts (no download) and on locodiff's own UNet."""

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from locodiff.adapters import DiffusersDenoiser, Prompt, load_diffusers_unet  # noqa: E402
from locodiff.locality.diffusers_probe import token_fn, token_sensitivity  # noqa: E402
from locodiff.locality.feature_capture import (  # noqa: E402
    Sensitivity,
    capture_features,
    cosine_matrix,
    feature_fn,
    feature_jacobian,
    input_sensitivity,
    mean_difference_vectors,
)
from locodiff.conditioning import Conditioning  # noqa: E402
from locodiff.diffusion.precond import EDMPrecond  # noqa: E402
from locodiff.errors import LocodiffError  # noqa: E402
from locodiff.locality.jacobian import pixel_jacobian  # noqa: E402
from locodiff.locality.probe import ProbeSpec, probe_locality  # noqa: E402
from locodiff.models import ModelConfig, build_network  # noqa: E402
from locodiff.errors import CheckpointError, InputError

D64 = torch.float64
TOKENS, CROSS_DIM, POOLED = 5, 32, 16
SIZE = 8  # latent height and width

TINY_SDXL = dict(
    sample_size=SIZE, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64), norm_num_groups=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=CROSS_DIM, transformer_layers_per_block=1, attention_head_dim=8,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=POOLED + 6 * 8,  # pooled text + 6 time ids x 8
)
TINY_SD1 = dict(
    sample_size=SIZE, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64), norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=CROSS_DIM, attention_head_dim=8,
)
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def make_unet(config: dict, dtype=torch.float32):
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**config).to(dtype).eval()


def make_prompt(sdxl: bool, batch: int = 1, dtype=torch.float32, seed: int = 1) -> Prompt:
    g = torch.Generator().manual_seed(seed)
    ehs = torch.randn(batch, TOKENS, CROSS_DIM, generator=g, dtype=dtype)
    if not sdxl:
        return Prompt(ehs)
    text = torch.randn(batch, POOLED, generator=g, dtype=dtype)
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]], dtype=dtype).expand(batch, 6)
    return Prompt(ehs, text, time_ids)


def ad_sched(prediction):
    return diffusers.EulerDiscreteScheduler(prediction_type=prediction, **SCHEDULE)


def make_adapter(sdxl=True, prediction="epsilon", dtype=torch.float32, **kw):
    unet = make_unet(TINY_SDXL if sdxl else TINY_SD1, dtype)
    sched = ad_sched(prediction)
    return DiffusersDenoiser(unet, sched, make_prompt(sdxl, dtype=dtype), **kw).eval()


def latents(batch=2, dtype=torch.float32, seed=0):
    return torch.randn(batch, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(seed),
                       dtype=dtype)


def unet_out(unet, z, t, prompt):
    """The plain diffusers forward pass, as a pipeline would call it."""
    added = None
    if prompt.text_embeds is not None:
        added = {"text_embeds": prompt.text_embeds, "time_ids": prompt.time_ids}
    with torch.no_grad():
        return unet(z, t, prompt.encoder_hidden_states, added_cond_kwargs=added).sample


# ----- (a) x0 from the diffusers forward pass ------------------------------------------------


@pytest.mark.parametrize("sdxl", [True, False])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_x0_matches_hand_computation(sdxl, prediction):
    unet, sched = make_unet(TINY_SDXL if sdxl else TINY_SD1), ad_sched(prediction)
    prompt = make_prompt(sdxl)
    t = 400
    a = float(sched.alphas_cumprod[t])
    sigma = math.sqrt((1 - a) / a)  # the EDM noise level of step t
    x = latents()
    z = x * math.sqrt(a)  # the VP input at step t
    out = unet_out(unet, z, torch.full((2,), float(t)), prompt.expand(2))
    if prediction == "epsilon":  # z = sqrt(a) x0 + sqrt(1-a) eps
        want = (z - math.sqrt(1 - a) * out) / math.sqrt(a)
    else:  # v = sqrt(a) eps - sqrt(1-a) x0  =>  x0 = sqrt(a) z - sqrt(1-a) v
        want = math.sqrt(a) * z - math.sqrt(1 - a) * out
    nearest = DiffusersDenoiser(unet, sched, prompt, timestep="nearest")
    interp = DiffusersDenoiser(unet, sched, prompt)
    with torch.no_grad():
        torch.testing.assert_close(nearest(x, sigma, Conditioning.empty(2)), want,
                                   rtol=1e-5, atol=1e-5)
        # at a table sigma the interpolated timestep is (up to rounding) that step too
        torch.testing.assert_close(interp(x, sigma), want, rtol=1e-4, atol=1e-4)


class OracleUNet(torch.nn.Module):
    """Knows the clean latents: returns the exact noise (or v) for the VP input at step t."""

    def __init__(self, x0, alphas, prediction):
        super().__init__()
        self.x0, self.alphas, self.prediction = x0, alphas.double(), prediction
        self.config = {"in_channels": 4, "cross_attention_dim": CROSS_DIM}
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=D64))

    def forward(self, z, t, ehs, added_cond_kwargs=None, return_dict=False):
        a = self.alphas[t.round().long()].reshape(-1, 1, 1, 1)
        eps = (z - a.sqrt() * self.x0) / (1 - a).sqrt()
        out = eps if self.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * self.x0
        return (out,)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_perfect_noise_predictor_recovers_x0(prediction):
    """The VP <-> EDM map is right: an oracle for the VP noise gives back the clean latents."""
    sched = ad_sched(prediction)
    x0 = latents(dtype=D64)
    ad = DiffusersDenoiser(OracleUNet(x0, sched.alphas_cumprod, prediction), sched,
                           Prompt(torch.zeros(1, TOKENS, CROSS_DIM)), timestep="nearest")
    sigma = float(ad.schedule.sigmas[700])
    x = x0 + sigma * latents(dtype=D64, seed=3)  # EDM: x = x0 + sigma n
    torch.testing.assert_close(ad(x, sigma), x0, rtol=1e-9, atol=1e-9)


def test_interpolated_timestep_lies_between_neighbours():
    ad = make_adapter()
    s = ad.schedule.sigmas
    mid = torch.tensor([math.sqrt(float(s[300] * s[301]))])  # geometric midpoint
    t = ad.schedule.timestep(mid)
    assert abs(float(t) - 300.5) < 1e-6
    assert float(ad.schedule.timestep(mid, "nearest")) in (300.0, 301.0)


def test_bad_inputs_raise_clear_errors():
    ad = make_adapter(sdxl=True)
    with pytest.raises(InputError, match=r"\[batch, 4, height, width\]"):
        ad(torch.zeros(1, 3, SIZE, SIZE), 1.0)
    with pytest.raises(InputError, match="text_embeds"):
        ad(latents(1), 1.0, Prompt(torch.zeros(1, TOKENS, CROSS_DIM)))
    with pytest.raises(InputError, match="cross_attention_dim"):
        ad(latents(1), 1.0, make_prompt(True).with_tokens(torch.zeros(1, TOKENS, 7)))
    with pytest.raises(InputError, match="training range"):
        ad(latents(1), 1000.0)
    with pytest.raises(InputError, match="batch 3"):
        ad(latents(2), 1.0, make_prompt(True, batch=3))
    assert issubclass(InputError, LocodiffError)


# ----- (b) feature capture -------------------------------------------------------------------


def locodiff_unet():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="cross_attention", image_size=16, channels=(16, 32), norm_groups=4,
                      head_dim=8, token_dim=16, n_freqs=3)
    return EDMPrecond(build_network(cfg)).eval()


def test_capture_shapes_on_diffusers_and_locodiff_unets():
    ad = make_adapter(sdxl=True)
    names = ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0"]
    with capture_features(ad.unet, names) as feats, torch.no_grad():
        ad(latents(2), 1.0)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "down_blocks.0": (2, 32, 4, 4),  # after the first down-sampler
        "down_blocks.1": (2, 64, 4, 4),
        "mid_block": (2, 64, 4, 4),
        "up_blocks.0": (2, 64, 8, 8),  # after the up-sampler
    }
    assert all(not m._forward_hooks for m in ad.unet.modules())  # hooks removed on exit

    den = locodiff_unet()
    cond = Conditioning.from_lists([[(0.3, 0.4)], [(0.7, 0.2)]])
    with capture_features(den, ["net.encoder.0.0", "net.middle.1"]) as feats, torch.no_grad():
        den(torch.randn(2, 3, 16, 16), 1.0, cond)
    assert tuple(feats["net.encoder.0.0"].shape) == (2, 16, 16, 16)
    assert tuple(feats["net.middle.1"].shape) == (2, 32, 8, 8)


def test_unknown_block_name_lists_the_available_ones():
    ad = make_adapter(sdxl=True)
    with pytest.raises(InputError) as err:
        with capture_features(ad.unet, ["down_block.1"]):
            pass
    msg = str(err.value)
    assert "'down_block.1'" in msg and "down_blocks.1" in msg and "mid_block" in msg
    with pytest.raises(InputError, match="net.encoder"):
        feature_fn(locodiff_unet(), "encoder.0", lambda th: None)


def test_feature_fn_equals_captured_feature_and_stops_early():
    ad = make_adapter(sdxl=True)
    x = latents(2)
    prompt = ad.prompt.expand(2)
    f = feature_fn(ad.unet, "down_blocks.1", token_fn(ad, x, 1.0, target="x0"))
    calls = []
    hook = ad.unet.conv_out.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        early = f(prompt.encoder_hidden_states)
    hook.remove()
    with capture_features(ad.unet, "down_blocks.1") as feats, torch.no_grad():
        ad(x, 1.0)
    torch.testing.assert_close(early, feats["down_blocks.1"])
    assert not calls  # the layers after the block never ran


# ----- (c) token sensitivity -----------------------------------------------------------------


def test_token_sensitivity_matches_finite_differences():
    ad = make_adapter(sdxl=True, dtype=D64)
    x, sigma = latents(1, D64), 2.0
    prompt = ad.prompt
    fwd = token_sensitivity(ad, x, sigma, how=Sensitivity(mode="forward"))  # [1, T, H, W]
    pix = [[1, 2], [5, 6], [7, 0]]
    rev = token_sensitivity(ad, x, sigma, pixels=pix, how=Sensitivity(mode="reverse"))  # [1, T, P]
    assert fwd.shape == (1, TOKENS, SIZE, SIZE) and rev.shape == (1, TOKENS, 3)
    f = token_fn(ad, x, sigma, prompt)
    e, h = prompt.encoder_hidden_states, 1e-5
    for k in (0, 3):
        cols = []
        for d in range(CROSS_DIM):
            step = torch.zeros_like(e)
            step[0, k, d] = h
            with torch.no_grad():
                cols.append((f(e + step) - f(e - step)) / (2 * h))
        fd = torch.stack(cols).pow(2).sum((0, 2)).sqrt()[0]  # [H, W]
        torch.testing.assert_close(fwd[0, k], fd, rtol=1e-5, atol=1e-9)
        for p, (r, c) in enumerate(pix):
            torch.testing.assert_close(rev[0, k, p], fd[r, c], rtol=1e-5, atol=1e-9)


def test_token_sensitivity_modes_agree_and_batch_rows_are_independent():
    ad = make_adapter(sdxl=False)
    x = latents(2)
    fwd = token_sensitivity(ad, x, 1.5, how=Sensitivity(mode="forward"))  # every pixel, 5 x 32 JVPs
    rev = token_sensitivity(ad, x[1:], 1.5, how=Sensitivity(mode="reverse"))  # every pixel, 64 x 4 VJPs
    assert fwd.shape == (2, TOKENS, SIZE, SIZE) and rev.shape == (1, TOKENS, SIZE, SIZE)
    torch.testing.assert_close(fwd[1:], rev, rtol=1e-4, atol=1e-6)
    assert (fwd > 0).all()


# ----- (d) pixel locality runs on the adapter ------------------------------------------------


def test_pixel_jacobian_on_adapter_matches_autograd():
    ad = make_adapter(sdxl=True)
    x, sigma, (r, c) = latents(1), 1.0, (3, 5)
    rows = pixel_jacobian(ad, x, sigma, Conditioning.empty(1), [[r, c]], target="score",
                          channels="each")  # [1, 1, C_out, C_in, H, W]
    xg = x.clone().requires_grad_(True)
    score = (ad(xg, sigma) - xg) / sigma**2
    for ch in range(4):
        (g,) = torch.autograd.grad(score[0, ch, r, c], xg, retain_graph=True)
        torch.testing.assert_close(rows[0, 0, ch], g[0], rtol=1e-4, atol=1e-5)


def test_probe_locality_runs_unchanged_on_adapter():
    ad = make_adapter(sdxl=False)
    g = torch.Generator().manual_seed(0)
    res = probe_locality(ad, latents(2), Conditioning.empty(2), ProbeSpec((0.5, 3.0), 4, target="x0", radius=2.0,
                                                                        n_boot=50), g, progress=False)
    assert res.arrays["pixel_energy"].shape == (2, 2, 4, SIZE, SIZE)
    frac = res.arrays["mass_fraction"]
    assert torch.isfinite(frac).all() and (frac >= 0).all() and (frac <= 1 + 1e-6).all()


# ----- feature-space Jacobians ---------------------------------------------------------------


def test_feature_sensitivity_wrt_locations_on_locodiff_unet():
    den = locodiff_unet().double()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=D64)
    cond = Conditioning.from_lists([[(0.25, 0.3), (0.7, 0.75)]])
    loc = cond.locations.double()
    f = feature_fn(den, "net.middle.1", lambda th: den(x, 1.0, cond.with_locations(th)))
    jac_f = feature_jacobian(f, loc, mode="forward")  # [1, N, 2, C, 8, 8]
    jac_r = feature_jacobian(f, loc, mode="reverse", chunk_size=256)
    assert jac_f.shape == (1, 2, 2, 32, 8, 8)
    torch.testing.assert_close(jac_f, jac_r, rtol=1e-6, atol=1e-9)
    h = 1e-6
    step = torch.zeros_like(loc)
    step[0, 1, 0] = h
    with torch.no_grad():
        fd = (f(loc + step) - f(loc - step)) / (2 * h)
    torch.testing.assert_close(jac_f[:, 1, 0], fd, rtol=1e-5, atol=1e-7)
    sens_f = input_sensitivity(f, loc, how=Sensitivity(mode="forward"))
    sens_r = input_sensitivity(f, loc, pixels=[[2, 3], [6, 6]], how=Sensitivity(mode="reverse"))
    want = jac_f.pow(2).sum((2, 3)).sqrt()  # [1, N, 8, 8]
    torch.testing.assert_close(sens_f, want)
    torch.testing.assert_close(sens_r, want[:, :, [2, 6], [3, 6]])


def test_sampled_token_map_estimates_the_exact_one():
    ad = make_adapter(sdxl=True)
    x = latents(1)
    exact = token_sensitivity(ad, x, 1.0, how=Sensitivity(mode="forward"))  # [1, T, H, W]
    gen = torch.Generator().manual_seed(0)
    few = token_sensitivity(ad, x, 1.0, generator=gen, how=Sensitivity(mode="sampled", probes=2))
    many = token_sensitivity(ad, x, 1.0, generator=gen, how=Sensitivity(mode="sampled", probes=200))
    assert few.shape == many.shape == exact.shape
    energy = exact.pow(2).sum((2, 3))  # per token: unbiased, so close with many probes
    torch.testing.assert_close(many.pow(2).sum((2, 3)), energy, rtol=0.1, atol=0)
    err_few = (few.pow(2).sum((2, 3)) / energy - 1).abs().mean()
    err_many = (many.pow(2).sum((2, 3)) / energy - 1).abs().mean()
    assert err_many < err_few
    picked = token_sensitivity(ad, x, 1.0, pixels=[[0, 1], [3, 2]], generator=torch.Generator().manual_seed(5),
                               how=Sensitivity(mode="sampled", probes=2))
    again = token_sensitivity(ad, x, 1.0, generator=torch.Generator().manual_seed(5),
                              how=Sensitivity(mode="sampled", probes=2))
    torch.testing.assert_close(picked, again[:, :, [0, 3], [1, 2]])
    with pytest.raises(InputError, match="probes"):
        token_sensitivity(ad, x, 1.0, how=Sensitivity(mode="sampled", probes=0))
    # groups: a group's squared map is the sum of its members' (estimated jointly)
    grouped = token_sensitivity(ad, x, 1.0, generator=gen,
                                how=Sensitivity(mode="sampled", probes=200, groups=[[0], [1, 2, 3]]))
    assert grouped.shape == (1, 2, *exact.shape[2:])
    torch.testing.assert_close(grouped[:, 1].pow(2).sum(), exact[:, 1:4].pow(2).sum(), rtol=0.1, atol=0)
    with pytest.raises(InputError, match="groups"):
        token_sensitivity(ad, x, 1.0, how=Sensitivity(mode="sampled", groups=[[0], [99]]))
    with pytest.raises(InputError, match="sampled' only"):  # not silently ignored
        token_sensitivity(ad, x, 1.0, how=Sensitivity(mode="forward", groups=[[0]]))


def test_feature_sensitivity_wrt_tokens_on_diffusers_unet():
    ad = make_adapter(sdxl=True)
    x = latents(1)
    f = feature_fn(ad.unet, "mid_block", token_fn(ad, x, 1.0, target="x0"))
    e = ad.prompt.encoder_hidden_states
    sens = input_sensitivity(f, e)  # auto -> forward: 5 x 32 JVPs << 16 pixels x 64 channels
    sens_r = input_sensitivity(f, e, how=Sensitivity(mode="reverse"))
    assert sens.shape == (1, TOKENS, 4, 4)
    torch.testing.assert_close(sens, sens_r, rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match=r"\[B, C, H, W\]"):
        input_sensitivity(lambda t: t.sum(-1), e)


# ----- (e) mean differences and cosines ------------------------------------------------------


def test_orthogonal_mean_differences_give_identity_cosines():
    g = torch.Generator().manual_seed(0)
    background = torch.randn(50, 3, 4, 4, generator=g)
    dirs = torch.eye(48)[[0, 7, 20]].reshape(3, 3, 4, 4) * torch.tensor([1.0, 2.5, 0.3])[:, None,
                                                                                         None, None]
    conds = {f"c{i}": torch.randn(40, 3, 4, 4, generator=g) for i in range(3)}
    # shift every condition's sample mean onto the background mean plus its own direction
    conds = {k: v - v.mean(0) + background.mean(0) + dirs[i] for i, (k, v) in
             enumerate(conds.items())}
    d = mean_difference_vectors(conds, background)
    assert d.shape == (3, 48)
    torch.testing.assert_close(d, dirs.reshape(3, 48).double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_matrix(d), torch.eye(3, dtype=D64), atol=1e-6, rtol=0)


def test_cosine_matrix_values_and_zero_rows():
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0], [0.0, 0.0]])
    cos = cosine_matrix(v)
    assert cos[0, 1] == pytest.approx(1 / math.sqrt(2))
    assert cos[0, 2] == pytest.approx(-1.0)
    assert torch.isnan(cos[3]).all() and torch.isnan(cos[:, 3]).all()
    with pytest.raises(InputError, match="features per sample"):
        mean_difference_vectors([torch.zeros(2, 3)], torch.zeros(2, 4))


# ----- (f) loading ---------------------------------------------------------------------------


def test_missing_directory_or_files_raise_clear_errors(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(CheckpointError, match="no-such-model.*does not exist"):
        load_diffusers_unet(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"unet/config.json"):
        load_diffusers_unet(tmp_path / "empty")
    make_unet(TINY_SD1).save_config(tmp_path / "noweights" / "unet")
    ad_sched("epsilon").save_pretrained(tmp_path / "noweights" / "scheduler")
    with pytest.raises(CheckpointError, match="could not load UNet weights"):
        load_diffusers_unet(tmp_path / "noweights")
    make_unet(TINY_SD1).save_pretrained(tmp_path / "nosched" / "unet")
    with pytest.raises(CheckpointError, match="scheduler_config.json"):
        load_diffusers_unet(tmp_path / "nosched")
    assert issubclass(CheckpointError, LocodiffError)


def test_pickled_weights_are_refused_unless_allowed(tmp_path, capsys):
    """A folder with only diffusion_pytorch_model.bin (a pickle) is not unpickled by default."""
    ad = make_adapter(sdxl=False, prediction="epsilon")
    ad.unet.save_pretrained(tmp_path / "unet", safe_serialization=False)
    ad_sched("epsilon").save_pretrained(tmp_path / "scheduler")
    assert not list((tmp_path / "unet").glob("*.safetensors"))
    with pytest.raises(CheckpointError, match="only pickled weights"):
        load_diffusers_unet(tmp_path, prompt=ad.prompt)
    loaded = load_diffusers_unet(tmp_path, prompt=ad.prompt, allow_pickle=True)
    assert "--allow-pickle" in capsys.readouterr().err
    x = latents(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 0.7), ad(x, 0.7), rtol=0, atol=0)


def test_save_and_load_round_trip(tmp_path):
    ad = make_adapter(sdxl=True, prediction="v_prediction")
    ad.unet.save_pretrained(tmp_path / "unet")
    ad_sched("v_prediction").save_pretrained(tmp_path / "scheduler")
    loaded = load_diffusers_unet(tmp_path, torch.float32, "cpu", prompt=ad.prompt)
    assert loaded.prediction_type == "v_prediction" and loaded.is_sdxl
    x = latents(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 0.7), ad(x, 0.7), rtol=0, atol=0)
    unet_only = load_diffusers_unet(tmp_path / "unet", prompt=ad.prompt)  # ../scheduler
    with torch.no_grad():
        torch.testing.assert_close(unet_only(x, 0.7), ad(x, 0.7), rtol=0, atol=0)


# ----- probe-diffusers -------------------------------------------------------------------------


def test_token_concentration_tells_spread_from_confined_influence():
    from locodiff.locality.diffusers_probe import token_concentration

    spread = torch.ones(1, 2, 40)
    confined = torch.zeros(1, 2, 40)
    confined[:, :, :4] = 1.0
    assert torch.allclose(token_concentration(spread, 0.1), torch.full((2,), 0.1, dtype=torch.float64))
    assert torch.allclose(token_concentration(confined, 0.1), torch.ones(2, dtype=torch.float64))
    assert torch.isnan(token_concentration(torch.zeros(1, 1, 10))).all()


def test_probe_diffusers_cli_on_a_saved_tiny_sdxl(tmp_path):
    import json

    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from locodiff.cli import app

    ad = make_adapter(sdxl=True)
    ad.unet.save_pretrained(tmp_path / "model" / "unet")
    ad_sched("epsilon").save_pretrained(tmp_path / "model" / "scheduler")
    p = ad.prompt
    save_file({"encoder_hidden_states": p.encoder_hidden_states.contiguous(), "text_embeds": p.text_embeds.contiguous(),
               "time_ids": p.time_ids.contiguous()}, str(tmp_path / "prompt.safetensors"))
    args = ["probe-diffusers", "--model", str(tmp_path / "model"), "--embeddings", str(tmp_path / "prompt.safetensors"),
            "--latent-size", str(SIZE), "--sigmas", "0.5,3", "--pixels", "4", "--out", str(tmp_path / "out"),
            "--words", "2", "--probes", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert [r["sigma"] for r in result["per_sigma"]] == [0.5, 3.0]
    for r in result["per_sigma"]:
        assert len(r["token_concentration"]) == TOKENS
        assert 0 <= r["mass_within_radius"] <= 1 and 0.1 <= r["token_concentration_mean"] <= 1.0 + 1e-9
    assert (tmp_path / "out" / "token_concentration.png").stat().st_size > 1000
    from safetensors.torch import load_file

    maps = load_file(str(tmp_path / "out" / "token_maps.safetensors"))["maps"]
    assert maps.shape == (2, 3, SIZE, SIZE) and (maps >= 0).all() and maps.sum() > 0  # 2 words + padding
    assert result["map_words"] == 2 and len(result["per_sigma"][0]["map_concentration"]) == 3
    assert (tmp_path / "out" / "token_maps.png").is_file()
    bad = CliRunner().invoke(app, ["probe-diffusers", "--model", str(tmp_path / "nope"), "--embeddings",
                                   str(tmp_path / "prompt.safetensors")])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_block_pixel_sensitivity_against_autograd_and_locality():
    from locodiff.locality.feature_capture import block_pixel_sensitivity, replaced_block_fn

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 5, 3, padding=1), torch.nn.Tanh())
    x = torch.randn(2, 3, 6, 6)
    fn = replaced_block_fn(net, "0", "1", lambda: net(x))
    theta = net[0](x).detach()
    torch.testing.assert_close(fn(theta), net[1](theta))  # the replaced block feeds the target
    pix = [[2, 3], [0, 0]]
    sens = block_pixel_sensitivity(fn, theta, pix, probes=400, generator=torch.Generator().manual_seed(1))
    assert sens.shape == (2, 2, 6, 6)
    exact = torch.zeros(2, 2, 6, 6)
    for b in range(2):
        for p, (r, c) in enumerate(pix):
            for ch in range(5):
                t = theta.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(net[1](t)[b, ch, r, c], t)
                exact[b, p] += g[b].pow(2).sum(0)
    exact = exact.sqrt()
    torch.testing.assert_close(sens.pow(2).sum((2, 3)), exact.pow(2).sum((2, 3)), rtol=0.15, atol=0)
    assert (sens[:, 0, :1, :] == 0).all() and (sens[:, 0, 1:4, 2:5] > 0).all()  # a 3x3 conv: 3x3 support
    with pytest.raises(InputError, match="probes"):
        block_pixel_sensitivity(fn, theta, pix, probes=0)


def test_the_fastest_dtype_follows_native_bf16(monkeypatch):
    from locodiff import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))  # AMD Zen 3
    assert hardware.fastest_dtype("cpu") == torch.float32 and not hardware.native_bf16("cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert hardware.fastest_dtype("cpu") == torch.bfloat16
    assert "(avx2)" in hardware.machine()  # amx_bf16 alone is not the amx_tile unit named

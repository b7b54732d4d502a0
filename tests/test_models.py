"""The denoiser family: shapes, the padded-set contract, torch.func transforms, configs."""

import pytest
import torch
from torch.func import jacfwd, jacrev, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from locodiff.conditioning import Conditioning
from locodiff.config import from_dict, to_dict
from locodiff.errors import ConfigError
from locodiff.models import ModelConfig, available_architectures, build_network, describe
from locodiff.models.config import CrossAttentionOptions, LocalOptions

torch.set_num_threads(2)

# the raw networks under EDM preconditioning; diffusers_text is a Denoiser (tests/test_text_model.py)
ARCHS = tuple(a for a in available_architectures() if a != "diffusers_text")
SIZE = 16


def tiny(arch: str, **overrides) -> ModelConfig:
    """A model small enough for fast tests, with every mechanism switched on."""
    base = dict(arch=arch, image_size=SIZE, channels=(8, 16), norm_groups=4, head_dim=8, token_dim=16)
    if arch == "local":
        base.update(local=LocalOptions(radius=3, width=16))
    base.update(overrides)
    return ModelConfig(**base)


def make(arch: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(tiny(arch, **overrides)).eval()


def random_cond(counts: list[int], slots: int, seed: int = 1, attributes: bool = False) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    loc = torch.rand(len(counts), slots, 2, generator=g)
    mask = torch.arange(slots)[None, :] < torch.tensor(counts)[:, None]
    attrs = None
    if attributes:
        highs = torch.tensor([8, 3, 2, 2])
        attrs = (torch.rand(len(counts), slots, 4, generator=g) * highs).long()
    return Conditioning(loc, mask, attrs)


def inputs(batch: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, SIZE, SIZE, generator=g), torch.randn(batch, generator=g)


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_counts_in_one_batch_match_each_image_alone(arch):
    net = make(arch)
    cond = random_cond([0, 1, 10], slots=10)
    x, c = inputs(3)
    with torch.no_grad():
        out = net(x, c, cond)
        assert out.shape == x.shape and torch.isfinite(out).all()
        for b in range(3):
            alone = net(x[b : b + 1], c[b : b + 1], cond[b])
            torch.testing.assert_close(out[b : b + 1], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_slots_are_ignored_even_when_nan(arch):
    net = make(arch, use_attributes=True)
    cond = random_cond([0, 2, 3], slots=3, attributes=True)
    garbage = Conditioning(
        torch.where(cond.mask[..., None], cond.locations, torch.nan),
        cond.mask,
        torch.where(cond.mask[..., None], cond.attributes, 99),
    )
    wider = cond.pad_to(7)  # more padded slots
    x, c = inputs(3)
    with torch.no_grad():
        ref = net(x, c, cond)
        torch.testing.assert_close(net(x, c, garbage), ref, atol=0, rtol=0)
        torch.testing.assert_close(net(x, c, wider), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_conditioners_is_the_null_however_it_is_padded(arch):
    net = make(arch)
    x, c = inputs(2)
    no_slots = Conditioning(torch.zeros(2, 0, 2), torch.zeros(2, 0, dtype=torch.bool))
    with torch.no_grad():
        null = net(x, c, Conditioning.empty(2))
        torch.testing.assert_close(net(x, c, no_slots), null, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(net(x, c, random_cond([0, 0], slots=5)), null, atol=1e-6, rtol=1e-6)
        one = net(x, c, Conditioning.from_lists([[(0.5, 0.5)], [(0.3, 0.6)]]))
    assert (one - null).abs().max() > 1e-4, "a conditioner must change the output"


def test_cross_attention_with_zero_tokens_attends_only_to_the_null_token():
    net = make("cross_attention")
    context = net.mechanism.encode(Conditioning.empty(2, slots=3), SIZE, SIZE)
    assert context.mask.tolist() == [[True, False, False, False]] * 2
    torch.testing.assert_close(context.tokens[:, 0], net.mechanism.null.expand(2, -1))


# PyTorch loads its forward-mode decompositions through the deprecated torch.jit.script.
JIT_WARNING = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(JIT_WARNING)
@pytest.mark.parametrize("arch", ARCHS)
def test_reverse_and_forward_mode_agree(arch):
    """<u, J v> from jvp equals <J^T u, v> from vjp, for pixels and for locations."""
    net = make(arch).double()
    x, c = (t.double() for t in inputs(2))
    cond = random_cond([1, 3], slots=3)
    loc = cond.locations.double()
    g = torch.Generator().manual_seed(5)
    u = torch.randn(x.shape, generator=g, dtype=torch.float64)

    def f(x, loc):
        return net(x, c, cond.with_locations(loc))

    v_x = torch.randn(x.shape, generator=g, dtype=torch.float64)
    v_loc = torch.randn(loc.shape, generator=g, dtype=torch.float64)
    with sdpa_kernel(SDPBackend.MATH):
        _, jv = jvp(f, (x, loc), (v_x, v_loc))
    _, pullback = vjp(f, x, loc)
    jtu_x, jtu_loc = pullback(u)
    forward = (u * jv).sum()
    reverse = (jtu_x * v_x).sum() + (jtu_loc * v_loc).sum()
    torch.testing.assert_close(forward, reverse, rtol=1e-8, atol=1e-10)
    assert jtu_loc[0, 1:].abs().max() == 0, "padded slots must get no gradient"
    assert jtu_loc[1].abs().min() > 0


@pytest.mark.filterwarnings(JIT_WARNING)
@pytest.mark.parametrize("arch", ARCHS)
def test_jacobians_and_vmap_over_vjp(arch):
    net = make(arch)
    x, c = inputs(1)
    cond = Conditioning.from_lists([[(0.1, 0.1), (0.25, 0.15)]])  # near the cropped corner

    def of_locations(loc):  # a corner crop of the output keeps the Jacobian small
        return net(x, c, cond.with_locations(loc))[..., :4, :4]

    # The math attention kernel: forward mode needs it, and the fused kernel's backward has no
    # vmap batching rule (vmap over vjp would fall back to a slow per-sample loop).
    with sdpa_kernel(SDPBackend.MATH):
        jac = jacrev(of_locations)(cond.locations)
        assert jac.shape == (1, 3, 4, 4, 1, 2, 2) and jac.abs().max() > 0
        torch.testing.assert_close(jacfwd(of_locations)(cond.locations), jac, atol=1e-5, rtol=1e-4)
        # Probe a few output pixels at once: vmap over one-hot cotangents (pixel-Jacobian rows).
        _, pullback = vjp(lambda x: net(x, c, cond), x)
        probes = torch.zeros(3, *x.shape)
        for k, (i, j) in enumerate([(0, 0), (5, 9), (15, 15)]):
            probes[k, 0, 0, i, j] = 1.0
        rows = vmap(pullback)(probes)[0]
    for k in range(3):
        torch.testing.assert_close(rows[k], pullback(probes[k])[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_runs(arch):
    net = make(arch)
    x, c = inputs(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, c, random_cond([1, 3], slots=3))
    assert out.shape == x.shape and torch.isfinite(out.float()).all()


@pytest.mark.parametrize(
    "arch, overrides, shape",
    [
        (
            "spatial",
            dict(channels=(8, 16, 16), res_blocks=2, image_channels=1, bump_cutoff=2.0),
            (2, 1, 16, 32),
        ),
        (
            "cross_attention",
            dict(channels=(8, 16, 16), attention_resolutions=(), cross_attention=CrossAttentionOptions(query_position=False)),
            (2, 3, 8, 12),
        ),
        ("global", dict(channels=(8,), use_attributes=True), (2, 3, 5, 7)),
        ("spatial", dict(patch_size=2), (2, 3, 16, 16)),
        ("cross_attention", dict(patch_size=2, cross_attention=CrossAttentionOptions(shared_position=True, position_bias_px=2.0)),
         (2, 3, 16, 20)),
        ("local", dict(local=LocalOptions(radius=1), image_channels=2), (2, 2, 7, 9)),
    ],
)
def test_other_shapes_and_options(arch, overrides, shape):
    net = make(arch, **overrides)
    x = torch.randn(shape)
    with torch.no_grad():
        out = net(x, torch.zeros(shape[0]), random_cond([1, 3], slots=3))
    assert out.shape == x.shape


def test_unet_rejects_sizes_it_cannot_halve():
    with pytest.raises(ValueError, match="multiple of 2"):
        make("spatial")(torch.randn(1, 3, 9, 10), torch.zeros(1), Conditioning.empty(1))


def test_plain_attention_for_cpu_bf16_matches_the_fused_kernel():
    from locodiff.models.layers import attention

    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=g) for _ in range(3))
    mask = torch.tensor([[True] * 9, [True] + [False] * 8])[:, None, None, :]
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    plain = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert plain.dtype == torch.bfloat16
    torch.testing.assert_close(plain.float(), fused, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(attention(q, k, v, mask), fused)


# ----- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"arch": "unet"}, "unknown architecture"),
        ({"channels": ()}, "model.channels is empty"),
        ({"channels": (32, 0)}, "widths must be >= 1"),
        ({"channels": (30, 64)}, "norm_groups=8 must divide"),
        ({"image_size": 30}, "cannot be halved 2 times"),
        ({"attention_resolutions": (12,)}, "not a level of this UNet"),
        ({"arch": "cross_attention", "cross_attention": {"resolutions": [64]}}, "levels are [32, 16, 8]"),
        ({"arch": "spatial", "cross_attention": {"query_position": True}}, "model.cross_attention has no effect"),
        ({"arch": "spatial", "query_position": True}, "model.cross_attention has no effect"),  # its old name
        ({"arch": "global", "cross_attention_resolutions": [8]}, "applies to 'cross_attention' only"),
        ({"arch": "spatial", "local": {"radius": 4}}, "applies to 'local' only"),
        ({"arch": "cross_attention", "bump_cutoff": 3.0}, "applies to ['local', 'spatial']"),
        ({"arch": "local", "attention_resolutions": [8]}, "local architecture has no self-attention"),
        ({"arch": "local", "local": {"radius": 0}}, "radius=0"),
        ({"n_freqs": 12}, "n_freqs=12"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"bump_sigma_px": 0.0}, "bump_sigma_px=0.0"),
        ({"arch": "local", "bump_cutoff": -1.0}, "bump_cutoff: expected a number >= 0"),
        ({"arch": "local", "bump_cutoff": 0.0}, "bump_cutoff=0.0: expected > 0"),
        ({"channels": (56, 64), "head_dim": 16}, "does not split into 3 heads"),
        ({"arch": "local", "patch_size": 2}, "patch_size=2 has no effect"),
        ({"image_size": 30, "patch_size": 4}, "positive divisor"),
        ({"image_size": 16, "patch_size": 4}, "on 4-px patches"),
        ({"arch": "spatial", "shared_position": True}, "applies to 'cross_attention' only"),
        ({"arch": "cross_attention", "cross_attention": {"shared_position": True, "query_position": False}},
         "needs query_position=true"),
        ({"arch": "cross_attention", "cross_attention": {"position_bias_px": -1.0}}, "position_bias_px: expected a number >= 0"),
        ({"arch": "diffusers_text", "channels": (32,)}, "needs >= 2 levels"),
        ({"arch": "diffusers_text", "attention_resolutions": (8,)}, "self- and cross-attention in every block"),
        ({"arch": "cross_attention", "caption": {"text_layers": 2}}, "applies to 'diffusers_text' only"),
        ({"arch": "diffusers_text", "caption": {"objects": 0}}, "objects=0"),
    ],
)
def test_config_errors_name_the_option(options, fragment):
    with pytest.raises(ConfigError) as e:
        from_dict(ModelConfig, options, "model")
    assert fragment in str(e.value)


def test_config_from_toml_style_dict_and_resolution():
    cfg = from_dict(ModelConfig, {"arch": "cross_attention", "channels": [32, 64, 64]})
    assert cfg.channels == (32, 64, 64)
    r = cfg.resolved()
    assert r.attention_resolutions == (8,)
    assert r.cross_attention.resolutions == (16, 8)
    assert r.cross_attention.query_position is True and r.local is None and r.caption is None
    local = ModelConfig(arch="local").resolved()
    assert (local.local.radius, local.local.width, local.bump_cutoff) == (8, 64, 3.0)
    assert local.attention_resolutions == ()
    assert r.resolved() == r
    assert from_dict(ModelConfig, to_dict(r)) == r  # the saved form loads back


def test_describe_reports_quick_sizes_and_locality():
    infos = {a: describe(ModelConfig(arch=a)) for a in ARCHS}
    for info in infos.values():
        assert 300_000 < info.param_count < 1_500_000
    assert infos["local"].receptive_field == 8
    assert infos["local"].conditioner_window == pytest.approx(8 + 3 * 1.5)
    for a in ("cross_attention", "spatial", "global"):
        assert infos[a].receptive_field is None and infos[a].conditioner_window is None
        assert infos[a].conv_radius > 32  # the conv path alone already spans a 32x32 image


def test_query_position_term_changes_the_network():
    on = make("cross_attention")
    off = make("cross_attention", cross_attention=CrossAttentionOptions(query_position=False))
    assert sum(p.numel() for p in on.parameters()) > sum(p.numel() for p in off.parameters())
    blocks = [m for m in on.modules() if m.__class__.__name__ == "CrossAttention"]
    # Pixel frequencies stop at the level's Nyquist limit: 16 px -> 4, 8 px -> 3.
    assert sorted({b.position_freqs for b in blocks}) == [3, 4]


def test_patch_stem_runs_the_unet_on_a_coarser_grid():
    cfg = tiny("cross_attention", patch_size=2)
    assert cfg.level_resolutions() == (8, 4)
    assert cfg.resolved().cross_attention.resolutions == (8, 4)
    net = make("cross_attention", patch_size=2)
    # the first conv sees 2x2 blocks of the 3 colour channels; the head gives them back
    assert net.conv_in.in_channels == 12 and net.conv_out.out_channels == 12
    x, c = inputs(2)
    with torch.no_grad():
        assert net(x, c, random_cond([1, 2], slots=2)).shape == x.shape
    plain = describe(tiny("spatial")).conv_radius
    assert describe(tiny("spatial", patch_size=2)).conv_radius == 2 * plain + 1


def _position_only_attention(image_size: int = 1, **options):
    """A cross-attention block whose content terms are zero, so only position terms remain, and
    whose values are one-hot token indices, so its output reads off the attention weights."""
    from locodiff.models.layers import CrossAttention, Norm

    torch.manual_seed(0)
    block = CrossAttention(64, 16, 1, Norm(), 4, CrossAttentionOptions(**options), image_size)
    with torch.no_grad():
        for layer in (block.q, block.kv, block.proj):
            layer.weight.zero_()
            layer.bias.zero_()
        block.kv.weight[64:80] = torch.eye(16)  # value of token j = e_j
        block.proj.weight.copy_(torch.eye(64))
    return block


def _attention_weights(block, locations, located, height=16):
    """[H, W, L]: every pixel's softmax weights over the L tokens."""
    n = len(located)
    tokens = torch.eye(16)[:n][None]
    x = torch.zeros(1, 64, height, height)
    with torch.no_grad():
        out = block(x, tokens, torch.ones(1, n, dtype=torch.bool), torch.tensor([locations]), torch.tensor([located]))
    return out[0, :n].permute(1, 2, 0)


def test_shared_position_makes_pixels_prefer_the_token_on_them_from_the_start():
    # tokens: null (no location), one at pixel (row 3, col 3), one at (row 12, col 12) of 16 x 16
    locations = [[0.5, 0.5], [3.5 / 16, 3.5 / 16], [12.5 / 16, 12.5 / 16]]
    w = _attention_weights(_position_only_attention(shared_position=True), locations, [False, True, True])
    torch.testing.assert_close(w.sum(-1), torch.ones(16, 16))
    assert w[3, 3, 1] > 2 * w[3, 3, 2] and w[12, 12, 2] > 2 * w[12, 12, 1]
    off = _attention_weights(_position_only_attention(), locations, [False, True, True])
    torch.testing.assert_close(off, torch.full_like(off, 1 / 3))  # without it: no preference at all


def test_position_bias_sends_far_pixels_to_the_null_token_and_learns_its_width():
    locations = [[0.5, 0.5], [3.5 / 16, 3.5 / 16], [12.5 / 16, 12.5 / 16]]
    block = _position_only_attention(16, position_bias_px=1.0)
    w = _attention_weights(block, locations, [False, True, True])
    assert w[3, 3, 1] > 0.49 and w[3, 3, 2] < 1e-6  # on token 1: split with the null, token 2 is far
    assert w[8, 0, 0] > 0.99  # far from both tokens: the null token only
    from locodiff.models.layers import CrossAttention, Norm

    torch.manual_seed(1)
    block = CrossAttention(64, 16, 2, Norm(), 4, CrossAttentionOptions(position_bias_px=1.0), image_size=16)  # content terms on again
    x = torch.randn(1, 64, 16, 16)
    out = block(x, torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool), torch.tensor([locations]),
                torch.tensor([[False, True, True]]))
    out.square().sum().backward()
    assert block.log_width.grad is not None and block.log_width.grad.abs().sum() > 0


def test_an_attention_radius_masks_every_token_farther_than_it():
    """Hard locality: a pixel gives zero weight to located tokens beyond the radius, keeps the
    null token, and within the radius attends as without a mask."""
    locations = [[0.5, 0.5], [3.5 / 16, 3.5 / 16], [12.5 / 16, 12.5 / 16]]
    w = _attention_weights(_position_only_attention(16, attention_radius_px=2.0), locations, [False, True, True])
    torch.testing.assert_close(w.sum(-1), torch.ones(16, 16))
    assert w[3, 3, 2] == 0 and w[12, 12, 1] == 0  # each token is out of the other's reach
    assert w[3, 3, 1] == pytest.approx(0.5) and w[12, 12, 2] == pytest.approx(0.5)  # null + the near token
    assert w[8, 0, 0] == 1 and w[3, 6, 1] == 0 and w[3, 5, 1] > 0  # 3 px away: masked; 2 px: seen
    with pytest.raises(ConfigError, match="attention_radius_px"):
        CrossAttentionOptions(attention_radius_px=0.0)
    with pytest.raises(ConfigError, match="model.cross_attention has no effect"):
        ModelConfig(arch="spatial", cross_attention=CrossAttentionOptions(attention_radius_px=3.0))

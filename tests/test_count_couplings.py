"""The two count couplings and the options that remove them (``model.norm``,
``model.cross_attention.weights``): exact statements at the layer level, each checked against the
coupled default so that the test could fail."""

import pytest
import torch

from locodiff.conditioning import Conditioning
from locodiff.config import config_hash, from_dict, identity_dict
from locodiff.errors import ConfigError
from locodiff.models import ModelConfig, build_network, describe
from locodiff.models.config import CrossAttentionOptions
from locodiff.models.layers import CrossAttention, Norm, ResBlock, attention
from locodiff.models.unet import UNetBlock

torch.set_num_threads(2)
SIGMOID = CrossAttentionOptions(shared_position=True, weights="sigmoid")


def tokens_and_locations(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, n, 16, generator=g)
    locations = torch.rand(1, n, 2, generator=g)
    located = torch.ones(1, n, dtype=torch.bool)
    located[0, 0] = False  # slot 0 plays the null token: always there, no location
    return tokens, locations, located


def attend(block: CrossAttention, x: torch.Tensor, keep: list[int], n: int = 4) -> torch.Tensor:
    """The block's output with only the tokens in ``keep`` present (the rest masked out)."""
    tokens, locations, located = tokens_and_locations(n)
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, keep] = True
    with torch.no_grad():
        return block(x, tokens, mask, locations, located)


@pytest.mark.parametrize("norm", [Norm("group", 8), Norm("pixel")])
def test_with_sigmoid_weights_a_tokens_contribution_ignores_the_other_tokens(norm):
    torch.manual_seed(0)
    block = CrossAttention(32, 16, 2, norm, 3, SIGMOID, image_size=8)
    x = torch.randn(1, 32, 8, 8)
    null = attend(block, x, [0])
    alone = attend(block, x, [0, 2]) - null  # token 2 among none but the null token
    for others in ([1], [3], [1, 3]):
        among = attend(block, x, [0, *others, 2]) - attend(block, x, [0, *others])
        torch.testing.assert_close(among, alone, rtol=0, atol=2e-6)
    softmax = CrossAttention(32, 16, 2, norm, 3, CrossAttentionOptions(shared_position=True), image_size=8)
    softmax.load_state_dict(block.state_dict())
    coupled = (attend(softmax, x, [0, 1, 3, 2]) - attend(softmax, x, [0, 1, 3])) - (
        attend(softmax, x, [0, 2]) - attend(softmax, x, [0]))
    assert coupled.abs().max() > 1e-2  # the softmax shares a pixel's attention among the tokens


def test_sigmoid_weights_are_the_formula_and_masked_keys_get_none():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g) for _ in range(3))
    mask = torch.tensor([[True, True, False, True, False], [True] * 5])[:, None, None, :]
    weights = torch.sigmoid(q @ k.transpose(-1, -2) / 2.0 - 1.4) * mask
    torch.testing.assert_close(attention(q, k, v, mask, sigmoid_bias=-1.4), weights @ v)
    half = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, sigmoid_bias=-1.4)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), weights @ v, atol=5e-2, rtol=5e-2)


def reach_test(block, x: torch.Tensor, reach: int, *args) -> float:
    """Largest change of the block's output at the centre pixel when every input pixel farther
    than ``reach`` (Chebyshev) from it is replaced by noise."""
    c = x.shape[-1] // 2
    far = torch.ones_like(x, dtype=torch.bool)
    far[..., c - reach:c + reach + 1, c - reach:c + reach + 1] = False
    other = torch.where(far, torch.randn_like(x) * 3 + 1, x)
    with torch.no_grad():
        return (block(x, *args) - block(other, *args))[..., c, c].abs().max().item()


def test_with_the_pixel_norm_a_block_sees_only_what_its_convolutions_reach():
    torch.manual_seed(0)
    x, emb = torch.randn(2, 16, 12, 12), torch.randn(2, 32)
    pixel = ResBlock(16, 16, 32, Norm("pixel"), 0.0)
    assert reach_test(pixel, x, 2, emb) == 0.0  # two 3x3 convolutions: 2 px
    assert reach_test(pixel, x, 1, emb) > 1e-3  # and they do reach that far
    group = ResBlock(16, 16, 32, Norm("group", 4), 0.0)
    group.load_state_dict(pixel.state_dict(), strict=False)
    assert reach_test(group, x, 2, emb) > 1e-3  # GroupNorm's statistics pool the whole image


@pytest.mark.parametrize("norm, local", [("pixel", True), ("none", True), ("group", False)])
def test_a_unet_block_with_cross_attention_is_as_local_as_its_norm(norm, local):
    cfg = ModelConfig(arch="cross_attention", image_size=16, channels=(16, 32), norm_groups=4, head_dim=8,
                      token_dim=16, norm=norm, attention_resolutions=(), cross_attention=SIGMOID)
    net = build_network(cfg)
    torch.manual_seed(0)
    block = net.encoder[0][0]
    assert isinstance(block, UNetBlock) and block.inject is not None
    context = net.mechanism.encode(Conditioning.from_lists([[(0.2, 0.3), (0.7, 0.6)]]), 16, 16)
    x, emb = torch.randn(1, 16, 12, 12), torch.randn(1, net.noise_embedding.mlp[-1].out_features)
    change = reach_test(lambda h, *a: block(h, emb, context), x, 2)
    assert (change == 0.0) == local


def test_pixel_norm_and_sigmoid_networks_train_run_in_bf16_and_differentiate():
    cfg = ModelConfig(arch="cross_attention", image_size=16, channels=(8, 16), head_dim=8, token_dim=16,
                      norm="pixel", cross_attention=SIGMOID, patch_size=2)
    torch.manual_seed(0)
    net = build_network(cfg)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    x, c = torch.randn(2, 3, 16, 16), torch.zeros(2)
    cond = Conditioning.from_lists([[(0.3, 0.4)], [(0.5, 0.5), (0.2, 0.8), (0.7, 0.2)]])
    net(x, c, cond).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = net(x, c, cond)
    with torch.no_grad():
        full = net(x, c, cond)
        torch.testing.assert_close(net(x[1:], c[1:], cond[1:]), full[1:], atol=1e-5, rtol=1e-5)  # rows independent
    assert torch.isfinite(half.float()).all() and (half.float() - full).abs().max() < 0.1 * full.abs().max()


def test_defaults_keep_folder_names_and_new_values_change_them():
    old = ModelConfig(arch="cross_attention", cross_attention=CrossAttentionOptions(shared_position=True))
    identity = identity_dict(old)
    assert "norm" not in identity and "weights" not in identity and "sigmoid_bias" not in identity
    new = ModelConfig(arch="cross_attention", norm="pixel", cross_attention=SIGMOID, attention_resolutions=())
    assert identity_dict(new)["norm"] == "pixel" and identity_dict(new)["weights"] == "sigmoid"
    assert "sigmoid_bias" not in identity_dict(new)  # the default bias
    hashes = {config_hash(identity_dict(c)) for c in (old, new, ModelConfig(arch="cross_attention", norm="pixel"))}
    assert len(hashes) == 3
    assert describe(new).note.startswith("global: per-pixel norms")
    assert "a softmax over all tokens" in describe(old).note


@pytest.mark.parametrize("options, fragment", [
    ({"arch": "local", "norm": "pixel"}, "model.norm='pixel' has no effect with model.arch='local'"),
    ({"arch": "diffusers_text", "norm": "pixel"}, "keeps SDXL's layout"),
    ({"norm": "layer"}, "model.norm: 'layer' is not one of"),
    ({"arch": "cross_attention", "cross_attention": {"weights": "relu"}}, "is not one of ['softmax', 'sigmoid']"),
    ({"arch": "cross_attention", "cross_attention": {"sigmoid_bias": -2.0}}, "has no effect with weights='softmax'"),
])
def test_bad_options_are_named(options, fragment):
    with pytest.raises(ConfigError) as e:
        from_dict(ModelConfig, options, "model")
    assert fragment in str(e.value)


def test_pixel_norm_needs_no_group_divisor():
    cfg = from_dict(ModelConfig, {"arch": "spatial", "channels": [12, 20], "norm": "pixel", "image_size": 16})
    assert cfg.norm == "pixel"
    cfg = from_dict(ModelConfig, {"arch": "cross_attention", "cross_attention": {"weights": "sigmoid",
                                                                               "sigmoid_bias": 0.5}})
    assert cfg.cross_attention.sigmoid_bias == 0.5

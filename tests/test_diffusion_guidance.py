"""Classifier-free guidance and score composition, checked against hand-computed combinations
and against the exact score of a projective (factorized) composition."""

import pytest
import torch

from locodiff.conditioning import Conditioning
from locodiff.denoiser import score
from locodiff.diffusion import (
    ClassifierFreeGuidance,
    GaussianDenoiser,
    ScoreComposition,
)
from locodiff.errors import InputError

P = torch.linspace(-1, 1, 4).reshape(1, 1, 4)  # a fixed pattern, images are [1, 1, 4]


class Counting:
    """Wraps a denoiser; records the batch size of every call."""

    def __init__(self, denoiser):
        self.denoiser, self.batches = denoiser, []

    def __call__(self, x, sigma, cond):
        assert x.shape[0] == sigma.shape[0] == cond.batch_size
        self.batches.append(x.shape[0])
        return self.denoiser(x, sigma, cond)


def toy(x, sigma, cond):
    """A denoiser that is nonlinear in the conditioning set (count^2), so compositions differ
    from the full conditional, and uses locations and attributes."""
    m = cond.mask.float()
    s = sigma.reshape(-1, 1, 1, 1)
    loc = (m[..., None] * cond.locations).sum(1)  # [B, 2]
    colour = (m * cond._attributes_or_unknown()[..., 0].float()).sum(1)
    count = m.sum(1)
    per_image = loc[:, 0] - loc[:, 1] ** 2 + 0.1 * colour + 0.3 * count**2
    return torch.tanh(x) / (1 + s) + per_image.reshape(-1, 1, 1, 1) * P


def mixed_batch() -> Conditioning:
    """Three images with 2, 0 and 3 conditioners, with attributes."""
    cond = Conditioning.from_lists(
        [[(0.1, 0.2), (0.7, 0.9)], [], [(0.3, 0.3), (0.5, 0.1), (0.9, 0.6)]]
    )
    attrs = torch.arange(9).reshape(3, 3, 1).expand(3, 3, 4).clone()
    return Conditioning(cond.locations, cond.mask, attrs)


def inputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 1, 4, generator=g), torch.tensor([0.1, 1.0, 5.0][:b] + [2.0] * (b - 3))


# ----- classifier-free guidance ---------------------------------------------------------------

MC, MN = torch.full((1, 1, 4), 0.5), torch.full((1, 1, 4), -0.3)
# Stands in for a model trained with conditioning dropout: mean MC given anything, MN given nothing.
cfg_model = GaussianDenoiser(lambda c: torch.where(c.mask.any(1).reshape(-1, 1, 1, 1), MC, MN), 0.2)


def test_guidance_matches_formula_in_one_batched_call():
    x, sigma = inputs()
    cond = mixed_batch()
    model = Counting(cfg_model)
    out = ClassifierFreeGuidance(model, 3.0)(x, sigma, cond)
    assert model.batches == [6]
    d_cond = cfg_model(x, sigma, cond)
    d_null = cfg_model(x, sigma, Conditioning.empty(3))
    torch.testing.assert_close(out, d_null + 3.0 * (d_cond - d_null))
    # In score space the same combination holds.
    s_null = score(cfg_model, x, sigma, Conditioning.empty(3))
    s_cond = score(cfg_model, x, sigma, cond)
    s_guided = score(ClassifierFreeGuidance(cfg_model, 3.0), x, sigma, cond)
    torch.testing.assert_close(s_guided, s_null + 3.0 * (s_cond - s_null))
    # The image without conditioners is unaffected by guidance.
    torch.testing.assert_close(out[1], d_null[1])


def test_guidance_scale_one_is_the_conditional_model_in_one_pass():
    x, sigma = inputs()
    cond = mixed_batch()
    model = Counting(cfg_model)
    out = ClassifierFreeGuidance(model, 1.0)(x, sigma, cond)
    assert torch.equal(out, cfg_model(x, sigma, cond))
    assert model.batches == [3]
    unguided = ClassifierFreeGuidance(cfg_model, 0.0)(x, sigma, cond)
    torch.testing.assert_close(unguided, cfg_model(x, sigma, Conditioning.empty(3)))


def test_guidance_chunks_give_the_same_result():
    x, sigma = inputs()
    cond = mixed_batch()
    model = Counting(cfg_model)
    out = ClassifierFreeGuidance(model, 2.5, chunk_size=4)(x, sigma, cond)
    assert model.batches == [4, 2]
    torch.testing.assert_close(out, ClassifierFreeGuidance(cfg_model, 2.5)(x, sigma, cond))


# ----- score composition: the formula ---------------------------------------------------------


def hand_composition(x, sigma, cond, background, weights):
    """s_b + sum_i w_i (s_i - s_b), one image and one conditioner at a time."""
    rows = []
    for b in range(cond.batch_size):
        xb, sb, cb = x[b : b + 1], sigma[b : b + 1], cond[b]
        null = cb.drop(torch.zeros(1, dtype=torch.bool))
        if background == "null":
            back = toy(xb, sb, null)
        elif isinstance(background, Conditioning):
            back = toy(xb, sb, background)
        else:
            back = background(xb, sb, null)
        out = back
        for i in range(cond.slots):
            if cb.mask[0, i]:
                out = out + weights[b, i] * (toy(xb, sb, cb.single(i)) - back)
        rows.append(out)
    return torch.cat(rows)


def empty_scene_model(x, sigma, cond):
    return 0.5 * x - 0.2 * P


@pytest.mark.parametrize(
    "background",
    ["null", Conditioning.from_lists([[(0.5, 0.5)]]), empty_scene_model],
    ids=["null", "conditioning", "denoiser"],
)
def test_composition_equals_hand_computed_sum(background):
    x, sigma = inputs()
    cond = mixed_batch()
    weights = torch.tensor([[1.0, 2.0, 0.5], [1.0, 1.0, 1.0], [0.5, -1.0, 3.0]])
    model = Counting(toy)
    out = ScoreComposition(model, background, weights)(x, sigma, cond)
    assert len(model.batches) == 1  # all passes in one batch
    expected = hand_composition(x, sigma, cond, background, weights)
    torch.testing.assert_close(out, expected)
    # Sanity: composing is not the same as conditioning on the whole set (toy is nonlinear).
    assert not torch.allclose(out[2], toy(x, sigma, cond)[2])


def test_composition_weights_forms_and_defaults():
    x, sigma = inputs()
    cond = mixed_batch()
    ones = torch.ones(3, 3)
    default = ScoreComposition(toy, "null")(x, sigma, cond)
    torch.testing.assert_close(default, hand_composition(x, sigma, cond, "null", ones))
    w = torch.tensor([2.0, 0.0, 1.0])
    per_slot = ScoreComposition(toy, "null", w)(x, sigma, cond)
    torch.testing.assert_close(per_slot, hand_composition(x, sigma, cond, "null", w.expand(3, 3)))
    zero = ScoreComposition(toy, "null", 0.0)(x, sigma, cond)
    torch.testing.assert_close(zero, toy(x, sigma, Conditioning.empty(3)))


def test_padding_slots_and_slot_order_do_not_matter():
    x, sigma = inputs()
    cond = mixed_batch()
    comp = ScoreComposition(toy, "null")
    ref = comp(x, sigma, cond)
    # Two extra slots holding junk that the mask switches off.
    junk = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(9))
    padded = Conditioning(
        torch.cat([cond.locations, junk], 1),
        torch.cat([cond.mask, torch.zeros(3, 2, dtype=torch.bool)], 1),
        torch.cat([cond.attributes, torch.full((3, 2, 4), 7)], 1),
    )
    torch.testing.assert_close(comp(x, sigma, padded), ref)
    perm = torch.tensor([4, 2, 0, 3, 1])
    shuffled = Conditioning(
        padded.locations[:, perm], padded.mask[:, perm], padded.attributes[:, perm]
    )
    torch.testing.assert_close(comp(x, sigma, shuffled), ref)
    # Each image on its own gives the same as in the mixed batch.
    for b in range(3):
        torch.testing.assert_close(comp(x[b : b + 1], sigma[b : b + 1], cond[b]), ref[b : b + 1])


def test_composition_chunks_give_the_same_result():
    x, sigma = inputs()
    cond = mixed_batch()
    model = Counting(toy)
    out = ScoreComposition(model, "null", chunk_size=3)(x, sigma, cond)
    assert model.batches == [3, 3, 2]  # 5 single-conditioner passes + 3 background passes
    torch.testing.assert_close(out, ScoreComposition(toy, "null")(x, sigma, cond))


# ----- score composition: exact for factorized conditionals -----------------------------------

# Four-pixel images; a conditioner at x in [0, 1] occupies pixel column floor(4x). An occupied
# pixel is "object" N(0.8, 0.01); a free one is "floor" N(BG_M[k], 0.05). Pixels are independent,
# so p(x | c_J) is a conditional projective composition: each conditioner owns its own pixel.
OBJ_M, OBJ_V, BG_V = 0.8, 0.01, 0.05
BG_M = torch.tensor([-0.5, -0.4, -0.6, -0.5]).reshape(1, 1, 4)


def occupied(cond):
    col = (cond.locations[..., 0] * 4).long().clamp(0, 3)
    cells = torch.nn.functional.one_hot(col, 4).bool() & cond.mask[..., None]  # [B, N, 4]
    return cells.any(1).reshape(-1, 1, 1, 4)


scene_model = GaussianDenoiser(
    lambda c: torch.where(occupied(c), OBJ_M, BG_M), lambda c: torch.where(occupied(c), OBJ_V, BG_V)
)
floor_model = GaussianDenoiser(BG_M, BG_V)  # a model trained on empty scenes only


def test_composition_of_factorized_gaussians_is_the_exact_product_score():
    cond = Conditioning.from_lists(
        [[(0.1, 0.5), (0.6, 0.5)], [(0.3, 0.5)], [(0.0, 0.1), (0.4, 0.2), (0.9, 0.3)], []]
    )
    occ = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    m = torch.where(occ, OBJ_M, BG_M.reshape(1, 4)).reshape(4, 1, 1, 4)
    v = torch.where(occ, OBJ_V, BG_V).reshape(4, 1, 1, 4)
    x = torch.randn(4, 1, 1, 4, generator=torch.Generator().manual_seed(0))
    for s in [0.05, 0.3, 2.0]:
        sigma = torch.full((4,), s)
        exact_score = -(x - m) / (v + s**2)  # score of prod_k N(m_k, v_k + sigma^2)
        for background in ["null", floor_model]:
            comp = ScoreComposition(scene_model, background)
            composed = score(comp, x, sigma, cond)
            torch.testing.assert_close(composed, exact_score, atol=1e-4, rtol=1e-4)


def test_composition_with_the_wrong_background_is_not_exact():
    # A background that has an object at column 3 is not "everything outside the objects".
    cond = Conditioning.from_lists([[(0.1, 0.5), (0.6, 0.5)]])
    x, sigma = torch.zeros(1, 1, 1, 4), torch.tensor([0.3])
    wrong = ScoreComposition(scene_model, Conditioning.from_lists([[(0.9, 0.5)]]))
    assert not torch.allclose(wrong(x, sigma, cond), scene_model(x, sigma, cond), atol=1e-3)


# ----- bad inputs -----------------------------------------------------------------------------


def test_wrappers_reject_bad_inputs():
    x, sigma = inputs()
    cond = mixed_batch()
    with pytest.raises(InputError, match="background must be 'null'"):
        ScoreComposition(toy, "empty")
    with pytest.raises(InputError, match="background must be 'null'"):
        ScoreComposition(toy, 3)
    with pytest.raises(InputError, match=r"weights of shape \(2,\) do not fit 3 images x 3"):
        ScoreComposition(toy, "null", torch.ones(2))(x, sigma, cond)
    with pytest.raises(InputError, match="background conditioning has batch size 2"):
        ScoreComposition(toy, Conditioning.empty(2))(x, sigma, cond)
    for wrapper in [ScoreComposition(toy, "null"), ClassifierFreeGuidance(toy, 2.0)]:
        with pytest.raises(InputError, match="conditioning has batch size 3 but x has 2"):
            wrapper(x[:2], sigma[:2], cond)
    with pytest.raises(InputError, match="chunk_size"):
        ClassifierFreeGuidance(toy, 2.0, chunk_size=0)

"""Masked composition: conditioners act only inside their windows, and nothing else changes."""

from __future__ import annotations

import pytest
import torch

from locodiff.conditioning import Conditioning
from locodiff.errors import ConfigError
from locodiff.intervene import location_windows, masked_composition
from locodiff.stages.config import load_study_config


class GlobalToy:
    """A deliberately non-local denoiser: every conditioner shifts every pixel (and the
    background is the input scaled), so any locality of the composition comes from the masks."""

    def __call__(self, x, sigma, cond: Conditioning):
        shift = (cond.locations * cond.mask[..., None]).sum((1, 2))  # [B]
        return 0.5 * x + shift[:, None, None, None] + 1.0 * cond.mask.any(1)[:, None, None, None]


def test_windows_are_discs_around_each_present_location():
    cond = Conditioning.from_lists([[(0.25, 0.25), (0.75, 0.5)], [(0.5, 0.5)]])
    w = location_windows(cond, 16, 16, radius_px=3.0, softness_px=0.0)
    assert w.shape == (2, 2, 16, 16)
    assert w[0, 0, 4, 4] == 1 and w[0, 0, 12, 12] == 0  # (row, col) = (y, x)
    assert w[0, 1, 8, 12] == 1 and w[0, 1, 8, 4] == 0
    assert w[1, 1].sum() == 0  # empty slot
    area = w[1, 0].sum().item()
    assert abs(area - torch.pi * 9) < 6  # a disc of radius 3 px on the grid


def test_soft_windows_approach_hard_ones():
    cond = Conditioning.from_lists([[(0.5, 0.5)]])
    hard = location_windows(cond, 32, 32, 5.0, 0.0)
    soft = location_windows(cond, 32, 32, 5.0, 0.05)
    assert (hard - soft).abs().max() < 0.5 and (hard - soft).abs().mean() < 0.01


@pytest.mark.parametrize("bad", [{"radius_px": 0.0}, {"radius_px": 2.0, "softness_px": -1.0}])
def test_bad_window_options_are_rejected_up_front(bad):
    with pytest.raises(ConfigError):
        masked_composition(GlobalToy(), **bad)


def test_composition_is_the_background_outside_every_window_and_the_single_prediction_inside():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    sigma = torch.tensor([1.0])
    cond = Conditioning.from_lists([[(0.25, 0.25), (0.75, 0.75)]])
    toy = GlobalToy()
    out = masked_composition(toy, radius_px=2.0, softness_px=0.0)(x, sigma, cond)
    background = toy(x, sigma, Conditioning.empty(1, 2))
    windows = location_windows(cond, 16, 16, 2.0, 0.0).sum(1)[0]
    outside = windows == 0
    assert torch.allclose(out[0][:, outside], background[0][:, outside])
    first_only = Conditioning.from_lists([[(0.25, 0.25)]])
    single = toy(x, sigma, first_only)
    assert torch.allclose(out[0, :, 4, 4], single[0, :, 4, 4])
    # The raw toy is non-local: its output at a far pixel moves with the first location; the
    # composition's does not.
    moved = Conditioning.from_lists([[(0.3, 0.25), (0.75, 0.75)]])
    assert not torch.allclose(toy(x, sigma, moved)[0, :, 0, 15], toy(x, sigma, cond)[0, :, 0, 15])
    out_moved = masked_composition(toy, radius_px=2.0, softness_px=0.0)(x, sigma, moved)
    assert torch.allclose(out_moved[0, :, 0, 15], out[0, :, 0, 15])


def test_no_conditioners_gives_the_background():
    x = torch.randn(2, 3, 8, 8)
    toy = GlobalToy()
    empty = Conditioning.empty(2, 3)
    out = masked_composition(toy, radius_px=2.0)(x, torch.ones(2), empty)
    assert torch.allclose(out, toy(x, torch.ones(2), empty))


def test_study_interventions_must_name_an_enabled_model(tmp_path):
    with pytest.raises(ConfigError, match="not an enabled model"):
        load_study_config("micro", sets=[f"out_dir={tmp_path}", "interventions.exp3_masked.base=nope"])
    with pytest.raises(ConfigError, match="taken by a model"):
        load_study_config("micro", sets=[f"out_dir={tmp_path}", "interventions.exp1.base=exp2"])
    with pytest.raises(ConfigError, match="radius_px"):
        load_study_config("micro", sets=[f"out_dir={tmp_path}", "interventions.exp3_masked.radius_px=0"])


# ----- locality enforced during training ---------------------------------------------------------

from locodiff.diffusion import EDMLoss  # noqa: E402
from locodiff.diffusion.loss import Rows  # noqa: E402
from locodiff.train.penalty import LocalityPenaltyLoss  # noqa: E402


class BumpToy:
    """Local in its conditioners: a bump of radius <= 2 px at each location, nothing elsewhere."""

    def __call__(self, x, sigma, cond: Conditioning):
        w = location_windows(cond, x.shape[-2], x.shape[-1], radius_px=1.5, softness_px=0.0).sum(1)
        return 0.5 * x + w[:, None]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    cond = Conditioning.from_lists([[(0.3, 0.3), (0.7, 0.6)], [(0.5, 0.5)], [], [(0.99, 0.2)]])
    return x0, cond


def test_without_weight_the_penalised_loss_is_the_edm_loss():
    x0, cond = _batch()
    plain = EDMLoss()(GlobalToy(), x0, cond, torch.Generator().manual_seed(1))
    penalised = LocalityPenaltyLoss(weight=0.0)(GlobalToy(), x0, cond, torch.Generator().manual_seed(1))
    assert torch.allclose(plain, penalised)


def test_penalty_is_zero_for_a_local_score_and_positive_for_a_global_one():
    x0, cond = _batch()
    for toy, local in ((BumpToy(), True), (GlobalToy(), False)):
        base = LocalityPenaltyLoss(weight=0.0, window_px=3.0)(toy, x0, cond, torch.Generator().manual_seed(2))
        pen = LocalityPenaltyLoss(weight=1.0, window_px=3.0)(toy, x0, cond, torch.Generator().manual_seed(2))
        extra = pen - base
        assert extra[2] == 0  # no conditioner, no penalty
        if local:
            assert torch.allclose(extra, torch.zeros(4), atol=1e-6)
        else:
            assert (extra[[0, 1, 3]] > 1e-3).all()


def test_penalty_gradients_reach_the_network():
    net = torch.nn.Conv2d(3, 3, 3, padding=1)

    class Net:
        def __call__(self, x, sigma, cond):
            shift = (cond.locations * cond.mask[..., None]).sum((1, 2))
            return net(x) * (1 + shift[:, None, None, None])

    x0, cond = _batch()
    loss = LocalityPenaltyLoss(weight=10.0)(Net(), x0, cond, torch.Generator().manual_seed(3)).mean()
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_penalty_on_a_fraction_of_the_batch_is_rescaled_and_skips_the_rest():
    x0, cond = _batch()
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    base = LocalityPenaltyLoss(weight=0.0)(GlobalToy(), x0, cond, g())
    full = LocalityPenaltyLoss(weight=1.0)(GlobalToy(), x0, cond, g()) - base
    half = LocalityPenaltyLoss(weight=1.0, fraction=0.5)(GlobalToy(), x0, cond, g()) - base
    assert torch.allclose(half[:2], 2 * full[:2], rtol=1e-5) and (half[2:] == 0).all()
    with pytest.raises(ConfigError, match="fraction"):
        LocalityPenaltyLoss(fraction=0.0)


class CountToy:
    """Local under shifts, global under removal: each conditioner draws its own bump, and the
    number of conditioners brightens the whole image (a token acting through how many there are)."""

    def __call__(self, x, sigma, cond: Conditioning):
        return BumpToy()(x, sigma, cond) + 0.1 * cond.mask.sum(1)[:, None, None, None]


class ScaledToy:
    """A local bump plus a global offset, both scaled by ``gain``: the conditioner's whole effect."""

    def __init__(self, gain: float):
        self.gain = gain

    def __call__(self, x, sigma, cond: Conditioning):
        w = location_windows(cond, x.shape[-2], x.shape[-1], radius_px=1.5, softness_px=0.0).sum(1)
        shift = (cond.locations * cond.mask[..., None]).sum((1, 2))[:, None, None, None]
        return 0.5 * x + self.gain * (w[:, None] + 0.2 * shift + 0.2 * cond.mask.any(1)[:, None, None, None])


def _extra(toy, **options):
    """The penalty part of the loss on ``_batch``, same noise for every call."""
    x0, cond = _batch()
    base = LocalityPenaltyLoss(weight=0.0)(toy, x0, cond, torch.Generator().manual_seed(2))
    return LocalityPenaltyLoss(weight=1.0, window_px=3.0, **options)(toy, x0, cond, torch.Generator().manual_seed(2)) - base


@pytest.mark.parametrize("form", ["shift", "presence"])
@pytest.mark.parametrize("relative", [False, True])
def test_every_form_is_zero_for_a_local_score_and_positive_for_a_global_one(form, relative):
    local, global_ = _extra(BumpToy(), form=form, relative=relative), _extra(GlobalToy(), form=form, relative=relative)
    assert torch.allclose(local, torch.zeros(4), atol=1e-6)
    assert (global_[[0, 1, 3]] > 1e-3).all() and global_[2] == 0
    if relative:
        assert (global_ <= 1 + 1e-6).all()  # a share


def test_presence_sees_a_count_effect_that_shifts_cannot():
    assert torch.allclose(_extra(CountToy(), form="shift"), torch.zeros(4), atol=1e-6)
    assert (_extra(CountToy(), form="presence")[[0, 1, 3]] > 1e-3).all()


def test_the_relative_penalty_does_not_reward_a_weaker_conditioner():
    for form in ("shift", "presence"):
        weak, strong = _extra(ScaledToy(0.1), form=form), _extra(ScaledToy(1.0), form=form)
        assert torch.allclose(strong[[0, 1, 3]], 100 * weak[[0, 1, 3]], rtol=1e-3)  # ignoring it pays
        weak, strong = (_extra(ScaledToy(g), form=form, relative=True) for g in (0.1, 1.0))
        assert torch.allclose(strong, weak, rtol=1e-2, atol=1e-7) and (strong[[0, 1, 3]] > 0).all()


def test_the_penalty_starts_after_its_warm_up():
    x0, cond = _batch()
    loss = LocalityPenaltyLoss(weight=1.0, form="presence", start_images=1000)
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    plain = EDMLoss()(GlobalToy(), x0, cond, g())
    assert torch.allclose(loss(GlobalToy(), x0, cond, g(), images_seen=999), plain)
    assert (loss(GlobalToy(), x0, cond, g(), images_seen=1000)[[0, 1, 3]] > plain[[0, 1, 3]] + 1e-3).all()
    with pytest.raises(ConfigError, match="form"):
        LocalityPenaltyLoss(form="everywhere")


def test_keep_slots_drops_single_conditioners():
    cond = Conditioning.from_lists([[(0.3, 0.3), (0.7, 0.6)], [(0.5, 0.5)]])
    kept = cond.keep_slots(torch.tensor([[True, False], [False, True]]))
    assert kept.mask.tolist() == [[True, False], [False, False]]


from locodiff.train.penalty import CompositionLoss  # noqa: E402


def _composition_extra(toy, **options):
    x0, cond = _batch()
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    base = EDMLoss()(toy, x0, cond, g())
    return CompositionLoss(weight=1.0, window_px=4.0, fraction=1.0, **options)(toy, x0, cond, g()) - base


def test_the_composition_loss_is_zero_for_a_composing_network_and_positive_otherwise():
    composing, global_ = _composition_extra(BumpToy()), _composition_extra(GlobalToy())
    assert (global_ > 1e-2).all()  # the empty scene gets phantoms too
    # only the windows' soft edges (a logistic ramp of 0.5 px) separate a local network from its composition
    assert (composing < 1e-2 * global_).all()
    assert (_composition_extra(CountToy()) > 10 * composing).all()


def test_phantom_labels_keep_their_distance_and_the_real_ones():
    x0, cond = _batch()
    loss = CompositionLoss(extra=3, min_separation=0.2)
    more = loss._with_phantoms(cond, x0, torch.Generator().manual_seed(0), Rows(), torch.arange(4))
    assert torch.equal(more.mask[:, :cond.slots], cond.mask) and torch.equal(more.locations[:, :cond.slots], cond.locations)
    added = more.mask[:, cond.slots:].sum(1)
    assert ((added >= 1) & (added <= 3)).all()
    for i in range(4):
        where = more.locations[i][more.mask[i]]
        gaps = torch.cdist(where, where) + torch.eye(len(where)) * 9
        assert (gaps >= 0.2 - 1e-6).all()


def test_composition_loss_gradients_reach_the_network_and_bad_options_are_refused():
    net = torch.nn.Conv2d(3, 3, 3, padding=1)

    class Net:
        def __call__(self, x, sigma, cond):
            return net(x) * (1 + cond.mask.sum(1)[:, None, None, None])

    x0, cond = _batch()
    CompositionLoss(weight=1.0)(Net(), x0, cond, torch.Generator().manual_seed(3)).mean().backward()
    assert net.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="extra"):
        CompositionLoss(extra=0)

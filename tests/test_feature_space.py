"""Feature-space concept directions of the study's own models (locality.feature_space)."""

from __future__ import annotations

import pytest
import torch
from helpers.evaluations import evaluation

from locodiff.diffusion import EDMPrecond
from locodiff.locality.feature_space import concept_cosines
from locodiff.models import ModelConfig
from locodiff.models.registry import build_network


def tiny(arch: str, **kw) -> EDMPrecond:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, image_size=16, channels=(8, 16), **kw)
    return EDMPrecond(build_network(cfg)).eval()


def test_location_and_colour_concepts_of_an_attribute_model():
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    out = concept_cosines(tiny("cross_attention", use_attributes=True), images, 1.0, grid=2,
                          generator=torch.Generator().manual_seed(0), colors=[0, 3, 5])
    assert len(out["cosine"]) == 4 and len(out["locations"]) == 4
    colors = out["colors"]
    assert colors["palette"] == [0, 3, 5]
    cos = torch.tensor(colors["cosine"])
    assert cos.shape == (3, 3)
    assert torch.allclose(cos.diagonal(), torch.ones(3), atol=1e-5)
    assert torch.allclose(cos, cos.T, atol=1e-6)
    # colours change the token, so their directions differ (not all identical)
    assert cos[~torch.eye(3, dtype=torch.bool)].max() < 1 - 1e-4
    assert 0 <= colors["offdiag_abs_mean"] <= 1


def test_without_colours_only_locations_are_measured():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    out = concept_cosines(tiny("cross_attention"), images, 0.5, grid=2)
    assert "colors" not in out and len(out["cosine"]) == 4


def test_a_block_that_does_not_run_is_a_clear_error():
    with pytest.raises((ValueError, KeyError), match="block"):
        concept_cosines(tiny("cross_attention"), torch.zeros(1, 3, 16, 16), 1.0, block="no.such.block")


def test_colour_concepts_follow_the_data_palette_for_attribute_models_only():
    from dataclasses import replace

    from locodiff.stages.probe import colour_concepts
    from locodiff.scenes import vocab
    from locodiff.stages.config import load_study_config

    cfg = load_study_config("full")
    plain = cfg.run_config("exp1")
    assert colour_concepts(plain) == []
    coloured = cfg.run_config("exp1_color")
    assert colour_concepts(coloured) == list(range(len(vocab.COLOR_NAMES)))
    two = replace(coloured, data=replace(coloured.data, scene=replace(coloured.data.scene, colors=("red", "blue"))))
    assert colour_concepts(two) == [vocab.color_index("red"), vocab.color_index("blue")]


def test_report_shows_colour_cosines_and_accuracy(tmp_path):
    from locodiff.report.build import colour_blocks
    from locodiff.report.facts import ModelFacts
    from locodiff.report.document import Figure, Table
    from locodiff.stages.config import load_study_config

    cfg = load_study_config("full")
    eye = torch.eye(3).tolist()
    feats = {"exp1_color": {"colors": {"palette": [0, 1, 2], "cosine": eye, "offdiag_abs_mean": 0.0}},
             "exp1": {"cosine": eye}}
    fact = ModelFacts("exp1_color", "exp1", "cross_attention", "all", "", 1, tmp_path,
                      evaluation=evaluation({k: {"color_accuracy": 0.5} for k in cfg.evaluate.counts}))
    blocks = colour_blocks(cfg, [fact], feats, tmp_path)
    tables = [b for b in blocks if isinstance(b, Table)]
    assert [r[0] for r in tables[0].rows] == ["exp1_color"]
    assert tables[1].rows[0][1:] == [0.5] * len(cfg.evaluate.counts)
    assert all(b.path.is_file() for b in blocks if isinstance(b, Figure))
    assert colour_blocks(cfg, [fact], {"exp1": {"cosine": eye}}, tmp_path) == []


class ToyAttributes(torch.nn.Module):
    """Block features = colour vector + shape vector (+ ``interact`` x their product)."""

    def __init__(self, interact: float) -> None:
        super().__init__()
        self.net = torch.nn.Module()
        self.net.middle = torch.nn.Sequential(torch.nn.Identity())
        g = torch.Generator().manual_seed(0)
        self.colour, self.shape, self.interact = torch.randn(8, 6, generator=g), torch.randn(3, 6, generator=g), interact

    def forward(self, x, sigma, cond):
        c, s = cond.attributes[:, 0, 0], cond.attributes[:, 0, 1]
        f = self.colour[c] + self.shape[s] + self.interact * self.colour[c] * self.shape[s]
        return self.net.middle(f[:, :, None, None] + 0 * x[:, :1, :1, :1])


def test_attribute_decomposition_is_exact_on_additive_features():
    from locodiff.locality.feature_space import attribute_concepts

    images = torch.zeros(2, 3, 16, 16)
    held = [(1, 2)]  # (shape 1, colour 2)
    add = attribute_concepts(ToyAttributes(0.0), images, 1.0, colors=[0, 2, 5], shapes=[0, 1, 2], heldout=held)
    assert add["block"] == "middle.0"
    assert add["additive_share"] == pytest.approx(1.0)
    assert add["interaction_seen_mean"] < 1e-6 and add["interaction_heldout_mean"] < 1e-6
    assert torch.tensor(add["color_cosine"]).shape == (3, 3) and torch.tensor(add["interaction"]).shape == (3, 3)
    mixed = attribute_concepts(ToyAttributes(1.0), images, 1.0, colors=[0, 2, 5], shapes=[0, 1, 2], heldout=held)
    assert mixed["additive_share"] < 0.99 and mixed["interaction_heldout_mean"] > 0.01
    assert 0 <= mixed["color_shape_abs_cos_mean"] <= 1
    nohold = attribute_concepts(ToyAttributes(1.0), images, 1.0, colors=[0, 2], shapes=[0, 1])
    assert nohold["interaction_heldout_mean"] is None


class ToyLocal(torch.nn.Module):
    """Block features: a narrow bump at each conditioner's location (local) or a global shift."""

    def __init__(self, local: bool) -> None:
        super().__init__()
        self.net = torch.nn.Module()
        self.net.middle = torch.nn.Sequential(torch.nn.Identity())
        self.local = local

    def forward(self, x, sigma, cond):
        n = x.shape[-1]
        c = (torch.arange(n, dtype=x.dtype) + 0.5) / n
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        loc = cond.locations
        if self.local:
            d2 = (gx - loc[..., 0, None, None]) ** 2 + (gy - loc[..., 1, None, None]) ** 2
            f = (torch.exp(-d2 / 0.002) * cond.mask[..., None, None]).sum(1, keepdim=True)
        else:
            f = (loc.sum((1, 2)) ** 2)[:, None, None, None] * torch.ones(1, 1, n, n)
        return self.net.middle(f + 0 * x[:, :1])


def test_feature_conditional_locality_tells_local_from_global():
    from locodiff.conditioning import Conditioning
    from locodiff.locality.feature_space import feature_conditional_locality

    images = torch.zeros(2, 3, 16, 16)
    cond = Conditioning.from_lists([[(0.3, 0.3), (0.7, 0.6)], [(0.5, 0.5)]])
    local = feature_conditional_locality(ToyLocal(True), images, cond, 1.0, radius_px=3.0)
    far = feature_conditional_locality(ToyLocal(False), images, cond, 1.0, radius_px=3.0)
    assert local["conditioners"] == far["conditioners"] == 3 and local["feature_map"] == [16, 16]
    assert local["mass_within"] > 0.95
    assert far["mass_within"] == pytest.approx(far["chance"], rel=0.05) and far["chance"] < 0.2


def test_feature_run_on_a_real_attribute_model(tmp_path):
    import json

    from locodiff.conditioning import Conditioning
    from locodiff.locality.feature_space import FeatureSpec, feature_run

    images = torch.rand(2, 3, 16, 16) * 2 - 1
    cond = Conditioning.from_lists([[(0.3, 0.3), (0.7, 0.6)], [(0.5, 0.5)]])
    cond.attributes = torch.tensor([[[1, 0, 0, 0], [2, 1, 0, 0]], [[3, 2, 1, 1], [-1, -1, -1, -1]]])
    spec = FeatureSpec(1.0, 2, 0, colors=(0, 1, 2), shapes=(0, 1, 2), heldout=((1, 2),), radius_px=4.0)
    path = feature_run(tmp_path, tiny("cross_attention", use_attributes=True), images, spec, cond=cond)
    out = json.loads(path.read_text())
    assert 0 <= out["attributes"]["additive_share"] <= 1
    assert out["attributes"]["interaction_heldout_mean"] is not None
    loc = out["conditional_locality"]
    assert loc["conditioners"] == 3 and 0 < loc["chance"] < 1 and 0 <= loc["mass_within"] <= 1
    # the colour claim's numbers at every block; at the probe's own block they are its numbers
    rows = {r["block"]: r for r in out["per_block"]}
    assert {b: r["source"] for b, r in rows.items()} == {  # each block read against the module called before it
        "encoder.0.0": "conv_in", "encoder.1.0": "downsample.0", "middle.0": "encoder.1.0", "middle.1": "middle.0",
        "decoder.0.0": "middle.1", "decoder.1.0": "upsample.0"}
    assert all(0 <= r["mass_within"] <= 1 and 0 < r["chance"] < 1 for r in rows.values())
    at = rows[out["block"]]
    assert at["concept_abs_cos"] == out["colors"]["offdiag_abs_mean"]
    assert at["effect_abs_cos"] == out["attributes"]["color_offdiag_abs_mean"]
    assert (at["mass_within"], at["chance"]) == (out["block_locality"]["mass_within"], out["block_locality"]["chance"])
    assert len({r["effect_abs_cos"] for r in rows.values()}) > 1  # measured at each block, not copied


def test_report_shows_a_diffusers_probe_when_one_was_run(tmp_path):
    from locodiff.locality.diffusers_probe import write_probe
    from locodiff.report.build import diffusers_section
    from locodiff.report.document import Figure, Table
    from locodiff.stages.config import load_study_config

    cfg = load_study_config("micro", sets=[f"out_dir={str(tmp_path)!r}"])
    figures = tmp_path / "figures"
    figures.mkdir()
    assert diffusers_section(cfg, figures) is None  # nothing measured: no section
    result = {"latent_shape": [1, 4, 8, 8], "sigmas": [0.5, 2.0], "n_pixels": 4, "radius_px": 2.0,
              "top_share": 0.1, "chance_concentration": 0.1,
              "per_sigma": [{"sigma": s, "mass_within_radius": 0.8, "effective_radius_90": 1.5,
                             "token_concentration": [0.2, None, 0.3], "token_concentration_mean": 0.25}
                            for s in (0.5, 2.0)]}
    write_probe(result, tmp_path / "probe-diffusers")
    sec = diffusers_section(cfg, figures)
    (table,) = [b for b in sec.blocks if isinstance(b, Table)]
    assert [r[0] for r in table.rows] == [0.5, 2.0] and table.rows[0][3] == 0.25
    (fig,) = [b for b in sec.blocks if isinstance(b, Figure)]
    assert fig.path.is_file() and fig.path.parent == figures
    result["_token_maps"] = torch.rand(2, 3, 8, 8)  # --words 2: two tokens and the padding group
    write_probe(result, tmp_path / "probe-diffusers")
    figs = [b for b in diffusers_section(cfg, figures).blocks if isinstance(b, Figure)]
    assert [f.path.name for f in figs] == ["diffusers_token_concentration.png", "diffusers_token_maps.png"]


class ToyBlocks(torch.nn.Module):
    """middle.0 = 1x1 conv of the image; middle.1 = a 3x3 conv (local) or a global mixing."""

    class GlobalMix(torch.nn.Module):
        def forward(self, f):
            return 0.1 * f + f.mean((2, 3), keepdim=True) * 3.0  # mostly the whole map

    def __init__(self, local: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Module()
        second = torch.nn.Conv2d(4, 4, 3, padding=1) if local else ToyBlocks.GlobalMix()
        self.net.middle = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), second)

    def forward(self, x, sigma, cond):
        return self.net.middle(x)


def test_block_locality_tells_a_convolution_from_global_mixing():
    from locodiff.conditioning import Conditioning
    from locodiff.locality.feature_space import FeatureSpec, block_locality, previous_block

    assert previous_block("middle.1") == "middle.0" and previous_block("middle.0") is None
    images = torch.rand(2, 3, 16, 16)
    cond = Conditioning.from_lists([[(0.3, 0.3)], [(0.5, 0.5)]])
    spec = FeatureSpec(sigma=1.0, grid=2, seed=0, radius_px=1.5)
    conv = block_locality(ToyBlocks(True), images, cond, spec)
    mix = block_locality(ToyBlocks(False), images, cond, spec)
    assert conv["source"] == "middle.0" and conv["block"] == "middle.1" and conv["feature_map"] == [16, 16]
    assert conv["mass_within"] > 0.99  # a 3x3 kernel lies within 1.5 px
    assert mix["mass_within"] < 0.5 and mix["chance"] == pytest.approx(conv["chance"]) and mix["chance"] < 0.05
    assert conv["measured"] == mix["measured"] == "output"  # neither block says it is residual


def test_a_residual_blocks_update_is_measured_without_its_skip_path():
    from locodiff.locality.feature_capture import block_pixel_sensitivity, replaced_block_fn

    net = torch.nn.Sequential(torch.nn.Identity(), ToyBlocks.GlobalMix())
    x = torch.rand(1, 4, 8, 8)
    pix = [[3, 3]]
    plain = block_pixel_sensitivity(replaced_block_fn(net, "0", "1", lambda: net(x)), x, pix, probes=64)
    update = block_pixel_sensitivity(replaced_block_fn(net, "0", "1", lambda: net(x), update=True), x, pix,
                                     probes=64)
    # output = 0.1 f + 3 mean(f): the update (output - input) has -0.9 at the pixel itself
    assert plain[0, 0, 3, 3] < update[0, 0, 3, 3]
    with pytest.raises(Exception, match="update=True"):
        shrink = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Conv2d(4, 2, 1))
        replaced_block_fn(shrink, "0", "1", lambda: shrink(x), update=True)(x)


def test_pair_accuracy_splits_matched_objects_by_pair():
    from locodiff.evaluate.metrics import pair_accuracy
    from locodiff.locality.feature_space import pair_means

    rec = {"requested_shapes": [0, 1, 2], "requested_colors": [1, 2, 3], "pairs": [[0, 1], [1, 0]],
           "detections": {"color_index": [2, 1], "shape_index": [0, 0]}}
    legacy = {"requested_shapes": None, "requested_colors": None, "pairs": [[0, 0]],
              "detections": {"color_index": [0]}}
    acc = pair_accuracy([rec, legacy], {(1, 2)})  # requested object 1 = (shape 1, colour 2): held out
    # object 0 -> detection 1: colour 1 right, shape 0 right; object 1 -> detection 0: colour 2 right, shape wrong
    assert acc["out_color"] == (1.0, 1) and acc["out_both"] == (1.0, 1)
    assert acc["in_color"] == (1.0, 1) and acc["in_both"] == (0.0, 1)
    means = pair_means([[0.1, 0.2], [0.3, 0.4]], colors=[5, 6], shapes=[0, 1], pairs={(1, 5)})
    assert means["in"] == pytest.approx(0.2) and means["out"] == pytest.approx((0.1 + 0.3 + 0.4) / 3)

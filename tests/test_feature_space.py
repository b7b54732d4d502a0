"""Feature-space concept directions of the study's own models (locality.feature_space)."""

from __future__ import annotations

import pytest
import torch

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

    from locodiff.locality.run import colour_concepts
    from locodiff.scenes import vocab
    from locodiff.study import run_config
    from locodiff.study_config import load_study_config

    cfg = load_study_config("quick")
    plain = run_config(cfg, "exp1", cfg.models["exp1"])
    assert colour_concepts(plain) == []
    coloured = run_config(cfg, "exp1_color", cfg.models["exp1_color"])
    assert colour_concepts(coloured) == list(range(len(vocab.COLOR_NAMES)))
    two = replace(coloured, data=replace(coloured.data, scene=replace(coloured.data.scene, colors=("red", "blue"))))
    assert colour_concepts(two) == [vocab.color_index("red"), vocab.color_index("blue")]


def test_report_shows_colour_cosines_and_accuracy(tmp_path):
    from locodiff.report.build import ModelFacts, colour_blocks
    from locodiff.report.document import Figure, Table
    from locodiff.study_config import load_study_config

    cfg = load_study_config("quick")
    eye = torch.eye(3).tolist()
    feats = {"exp1_color": {"colors": {"palette": [0, 1, 2], "cosine": eye, "offdiag_abs_mean": 0.0}},
             "exp1": {"cosine": eye}}
    fact = ModelFacts("exp1_color", "exp1", "cross_attention", "all", "", 1, tmp_path,
                      evaluation={"per_k": [{"k": k, "color_accuracy": 0.5} for k in cfg.evaluate.counts]})
    blocks = colour_blocks(cfg, [fact], feats, tmp_path)
    tables = [b for b in blocks if isinstance(b, Table)]
    assert [r[0] for r in tables[0].rows] == ["exp1_color"]
    assert tables[1].rows[0][1:] == [0.5] * len(cfg.evaluate.counts)
    assert all(b.path.is_file() for b in blocks if isinstance(b, Figure))
    assert colour_blocks(cfg, [fact], {"exp1": {"cosine": eye}}, tmp_path) == []

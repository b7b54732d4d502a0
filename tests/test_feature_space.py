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

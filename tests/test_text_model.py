"""The diffusers_text model: captions, tokenizer, caption encoder, the diffusers folder it saves."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from locodiff.adapters import DiffusersDenoiser, Prompt, load_diffusers_unet  # noqa: E402
from locodiff.conditioning import Conditioning  # noqa: E402
from locodiff.config import config_hash, identity_dict  # noqa: E402
from locodiff.errors import InputError  # noqa: E402
from locodiff.adapters import SavedTextModel  # noqa: E402
from locodiff.models import ModelConfig, as_denoiser, build_network, save_text_model  # noqa: E402
from locodiff.models.config import CaptionOptions  # noqa: E402
from locodiff.models.text import CaptionEncoder, text_scheduler  # noqa: E402
from locodiff.report.config import ReportConfig  # noqa: E402
from locodiff.scenes.captions import (  # noqa: E402
    VOCABULARY, WordTokenizer, caption_ids, captions, phrase_index_of, word_id,
)
from locodiff.scenes.vocab import color_index, material_index, shape_index, size_index  # noqa: E402

TINY = ModelConfig(arch="diffusers_text", image_size=8, channels=(8, 16), token_dim=16, head_dim=8, norm_groups=4)


def _attrs(color, shape, size, material):
    return [color_index(color), shape_index(shape), size_index(size), material_index(material)]


def scenes() -> Conditioning:
    """Two images: two objects (the second in slot 2, slot 1 empty), and the empty caption."""
    loc = torch.tensor([[[0.1, 0.1], [0.5, 0.5], [0.9, 0.5]], [[0.5, 0.5]] * 3])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    attrs = torch.tensor([[_attrs("red", "cube", "large", "metal"), [-1] * 4, _attrs("blue", "sphere", "small", "rubber")],
                          [[-1] * 4] * 3])
    return Conditioning(loc, mask, attrs)


def test_captions_say_what_the_conditioning_holds():
    assert captions(scenes(), 4) == ["large red metal cube top left and small blue rubber sphere middle right", ""]
    assert captions(scenes(), 4, count_word=True)[0].startswith("two objects large red")


def test_the_tokenizer_round_trips_and_refuses_what_it_cannot_read():
    tok = WordTokenizer(30)
    text = ["three objects small cyan rubber cylinder bottom centre and large gray metal cube top right", ""]
    assert tok.decode(tok.encode(text)) == text
    ids, _ = caption_ids(scenes(), 4)
    assert WordTokenizer(ids.shape[1]).decode(ids) == captions(scenes(), 4)
    with pytest.raises(InputError, match="unknown caption word 'pink'"):
        tok.encode(["large pink cube"])
    with pytest.raises(InputError, match="at most 2"):
        WordTokenizer(2).encode(["large red cube"])
    with pytest.raises(InputError, match="at most 1 objects"):
        caption_ids(scenes(), 1)


def test_packed_text_and_the_slot_layout_group_words_into_the_same_phrases():
    ids, phrase = caption_ids(scenes(), 4, count_word=True)
    packed = WordTokenizer(ids.shape[1]).encode(captions(scenes(), 4, count_word=True))
    grouped = lambda i, p: sorted(tuple(i[p == g].tolist()) for g in p.unique() if g >= 0)
    assert grouped(ids[0], phrase[0]) == grouped(packed[0], phrase_index_of(packed)[0])
    assert len(grouped(ids[0], phrase[0])) == 3  # the count phrase and two objects


def test_the_first_encoder_layer_binds_words_within_their_phrase_only():
    torch.manual_seed(0)
    enc = CaptionEncoder(16, layers=1, heads=2).eval()
    ids, phrase = caption_ids(scenes(), 4)
    other = ids.clone()
    other[0, 15] = word_id("yellow")  # the second phrase's colour
    with torch.no_grad():
        a, b = enc(ids, phrase), enc(other, phrase)
    first = phrase[0] == phrase[0][phrase[0] >= 0].min()
    assert torch.equal(a[0, first], b[0, first])
    assert not torch.allclose(a[0, 15], b[0, 15])
    deep = CaptionEncoder(16, layers=2, heads=2).eval()  # the second layer reads the whole caption
    with torch.no_grad():
        assert not torch.allclose(deep(ids, phrase)[0, first], deep(other, phrase)[0, first])


def test_the_saved_folder_reloads_bit_identically_and_captions_give_the_same_prompt(tmp_path):
    torch.manual_seed(0)
    net = build_network(TINY).eval()
    cond, x, sigma = scenes(), torch.randn(2, 3, 8, 8), torch.tensor([0.3, 4.0])
    with torch.no_grad():
        prompt = net.prompt(cond)
        before = net(x, sigma, prompt)
    folder = save_text_model(net, tmp_path / "model")
    adapter = load_diffusers_unet(folder)  # exactly as SDXL would be loaded
    with torch.no_grad():
        assert torch.equal(adapter(x, sigma, prompt), before)
    model = SavedTextModel(folder)
    text_prompt = model.prompt(captions(cond, TINY.resolved().caption.objects))
    # the same words in another order: equal up to float summation order
    torch.testing.assert_close(text_prompt.encoder_hidden_states.sort(1).values,
                               prompt.encoder_hidden_states.sort(1).values, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model.adapter(x, sigma, text_prompt), before, atol=1e-4, rtol=1e-4)


def test_a_word_absent_from_the_caption_has_zero_jacobian():
    torch.manual_seed(0)
    net = build_network(TINY)
    cond = scenes()[0]
    out = net(torch.randn(1, 3, 8, 8), torch.tensor([1.0]), cond)
    (grad,) = torch.autograd.grad(out.square().sum(), net.text.embed.weight)
    used = set(caption_ids(cond, 10)[0].flatten().tolist())
    per_word = grad.norm(dim=1)
    for i, word in enumerate(VOCABULARY):
        assert (per_word[i] > 0) == (i in used), word


def test_noise_levels_beyond_the_table_are_clamped_only_where_asked():
    torch.manual_seed(0)
    net = build_network(TINY).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.isfinite(net(x, torch.tensor([1e-4, 500.0]), scenes())).all()
    assert as_denoiser(net) is net
    adapter = DiffusersDenoiser(net.unet, text_scheduler(), prompt=Prompt(torch.zeros(1, 70, 16)))
    with pytest.raises(InputError, match="outside the model's training range"):
        adapter(x, torch.tensor([1e-4, 1.0]))


def test_the_padded_set_contract_holds_for_captions():
    """Mixed counts in one batch match each image alone; padded slots are ignored even when NaN;
    no conditioner is the empty caption however it is padded."""
    torch.manual_seed(0)
    net = build_network(TINY).eval()
    cond, x, sigma = scenes(), torch.randn(2, 3, 8, 8), torch.tensor([0.7, 0.7])
    with torch.no_grad():
        both = net(x, sigma, cond)
        alone = torch.cat([net(x[i:i + 1], sigma[i:i + 1], cond[i]) for i in range(2)])
        torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)
        poisoned = Conditioning(cond.locations.clone(), cond.mask, cond.attributes.clone())
        poisoned.locations[~cond.mask] = float("nan")
        assert torch.equal(net(x, sigma, poisoned), both)
        empty = net(x[1:], sigma[1:], Conditioning.empty(1, slots=5))
        torch.testing.assert_close(empty, both[1:], atol=1e-5, rtol=1e-5)


# ----- the probe of the three SDXL findings, and its report ---------------------------------


def test_phrase_share_is_one_for_a_confined_influence_and_zero_for_a_spread_one():
    from locodiff.locality.text_probe import phrase_share

    cond = Conditioning(torch.tensor([[[0.25, 0.25], [0.75, 0.75]]]), torch.tensor([[True, True]]))
    ys, xs = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    near = lambda cx, cy: (((xs - cx * 16) ** 2 + (ys - cy * 16) ** 2).sqrt() <= 2).float()  # noqa: E731
    confined = torch.stack([near(0.25, 0.25), near(0.75, 0.75)])[None]
    assert phrase_share(confined, cond, 16, 2.0)["normalised"] == pytest.approx(1.0)
    spread = phrase_share(torch.ones(1, 2, 16, 16), cond, 16, 2.0)
    assert spread["normalised"] == pytest.approx(0.0, abs=1e-9) and spread["phrases"] == 2
    swapped = phrase_share(confined.flip(1), cond, 16, 2.0)  # each phrase acting on the other's object
    assert swapped["normalised"] < 0


def test_text_scores_count_colours_and_cells_without_locations():
    from locodiff.report.text_model import text_scores

    rec = lambda k, req, colours, det, det_colours, det_shapes: {  # noqa: E731
        "k": k, "requested": req, "requested_colors": colours, "requested_shapes": [0, 1], "n_detected": len(det),
        "detections": {"centers": det, "color_index": det_colours, "shape_index": det_shapes}}
    rows = text_scores([
        rec(2, [[0.1, 0.1], [0.9, 0.9]], [1, 2], [[0.2, 0.2], [0.5, 0.5]], [2, 1], [1, 1]),  # colours right, one cell
        rec(2, [[0.1, 0.1], [0.9, 0.9]], [1, 2], [[0.15, 0.1]], [1], [0]),  # one object, right colour and cell
        rec(2, [[0.1, 0.1], [0.9, 0.9]], [1, 2], [], [], [])] + [  # nothing found
        {**rec(2, [[0.1, 0.1], [0.9, 0.9]], [1, 2], [], [], []), "detections": {"centers": [], "color_index": []}}])
    assert rows == [{"k": 2, "images": 4, "count": 0.25, "mean_detected": 0.75, "colour": 0.375, "cell": 0.25,
                     "colour_cell": 0.125, "shape": 0.25}]


def test_the_statements_follow_their_criteria():
    from locodiff.report.text_model import statements

    def result(spatial, pixel, cos):
        return {"radius_px": 4.0, "summary": {"spatial_mass_within": spatial, "pixel_phrase_share": pixel,
                                              "colour_offdiag": {"mid_block": cos}}}

    rows = statements(result(0.8, 0.1, 0.3), result(0.8, 0.1, 0.9), ReportConfig())
    assert [r[-1] for r in rows] == ["supported", "supported", "supported"]
    rows = statements(result(0.2, 0.45, 0.7), result(0.8, 0.1, 0.9), ReportConfig())
    assert [r[-1] for r in rows] == ["not supported", "partly", "partly"]
    rows = statements(result(0.2, 0.9, 0.95), result(0.8, 0.1, 0.9), ReportConfig())
    assert [r[-1] for r in rows] == ["not supported", "not supported", "not supported"]


def test_a_caption_model_runs_through_the_study_and_its_report(tmp_path):
    from rich.console import Console

    from locodiff.stages.study import run_study
    from locodiff.stages.config import load_study_config

    off = [f"models.{m}.enabled=false" for m in ("exp1", "exp2", "exp3_local", "exp1_combo")]
    model = ('models.text={role="exp1", label_policy="all", model={arch="diffusers_text", channels=[8, 16], '
             'norm_groups=4, head_dim=8, token_dim=16}}')
    # 10 probed scenes: more than the location probe's batch of 8 (the prompt has one row per scene)
    cfg = load_study_config("micro", sets=[f"out_dir={tmp_path}", "jobs=1", "interventions.exp3_masked.enabled=false",
                                           "locality.scenes=10",
                                           *off, model])
    run_study(cfg, console=Console(quiet=True))
    probes = list(cfg.run_dir("text").glob("locality-*/text_probe.json"))
    assert len(probes) == 1
    result = json.loads(probes[0].read_text())
    assert set(result) == {"trained", "random"}
    summary = json.loads((probes[0].parent / "summary.json").read_text())  # moves are not probed; removals are
    assert all(s["index"]["normalised"]["mean"] is None for s in summary["summaries"])
    assert all(s["presence_index"]["normalised"]["mean"] is not None for s in summary["summaries"])
    assert result["trained"]["summary"]["spatial_mass_within"] > 0
    saved = probes[0].parent / "diffusers"
    assert load_diffusers_unet(saved).prediction_type == "v_prediction"
    report = (tmp_path / "report" / "report.md").read_text()
    assert "A text-conditioned diffusers UNet trained here" in report
    assert "(2) conditionally non-local in pixel space" in report
    assert "was trained and probed in this study" in report and "No diffusers model has been probed" not in report
    before = probes[0].stat().st_mtime_ns
    run_study(cfg, only=["locality"], console=Console(quiet=True))  # cached: nothing redone
    assert probes[0].stat().st_mtime_ns == before
    # the saved folder through the command line, with the prompt given as words
    from typer.testing import CliRunner

    from locodiff.cli import app

    out = tmp_path / "probe"
    args = ["probe-diffusers", "--model", str(saved), "--latent-size", "16", "--sigmas", "1", "--pixels", "4",
            "--out", str(out)]
    done = CliRunner().invoke(app, args + ["--caption", "large red metal cube top left"])
    assert done.exit_code == 0, done.output
    assert json.loads((out / "probe.json").read_text())["latent_shape"] == [1, 3, 16, 16]
    bad = CliRunner().invoke(app, args + ["--caption", "a pink cube"])
    assert bad.exit_code == 2 and "unknown caption word 'a'" in bad.output
    neither = CliRunner().invoke(app, args)
    assert neither.exit_code == 2 and "--caption TEXT" in neither.output


def test_captions_without_positions_name_objects_only_and_ignore_where_they_are():
    assert captions(scenes(), 4, positions=False) == ["large red metal cube and small blue rubber sphere", ""]
    free = ModelConfig(**{**TINY.__dict__, "caption": CaptionOptions(positions=False)})
    assert run_identity_of(free) != run_identity_of(TINY)  # another model, another folder
    net = build_network(free).eval()
    moved = scenes()
    moved.locations = moved.locations.flip(-1)  # every object elsewhere
    with torch.no_grad():
        assert torch.equal(net.prompt(scenes()).encoder_hidden_states, net.prompt(moved).encoder_hidden_states)
        positional = build_network(TINY).eval()
        assert not torch.equal(positional.prompt(scenes()).encoder_hidden_states,
                               positional.prompt(moved).encoder_hidden_states)


def run_identity_of(model: ModelConfig) -> str:
    return config_hash(identity_dict(model))

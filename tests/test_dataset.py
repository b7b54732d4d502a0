"""Data sets: config validation, cache keys, resumable and self-repairing shards, readers,
conditioning policies, the on-the-fly stream, the contact sheet and the ``render`` command."""

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from locodiff.cli import app
from locodiff.conditioning import ATTRIBUTE_NAMES
from locodiff.config import ConfigError, from_dict
from locodiff.errors import DataError
from locodiff.scenes import (
    DataConfig,
    Renderer,
    SceneBatch,
    SceneDataset,
    SceneSampler,
    SceneStream,
    batch_conditioning,
    build_dataset,
    contact_sheet,
    data_contact_sheet,
    make_conditioning,
)
from locodiff.scenes.encodings import fourier_features, gaussian_bumps
from locodiff.stages.config import load_study_config


def tiny(**kw) -> DataConfig:
    base = dict(resolution=16, supersample=1, train_images=10, test_images_per_count=2,
                test_counts=(0, 1, 2), shard_size=4)
    base.update(kw)
    return DataConfig(**base)


# ----- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(resolution=8), "resolution 8: expected an integer from 16 to 256"),
        (dict(resolution=300), "resolution 300"),
        (dict(train_counts=(1, 11)), "data.train_counts=[1, 11]"),
        (dict(test_counts=()), "data.test_counts=[]"),
        (dict(shard_size=0), "data.shard_size=0"),
        (dict(train_images=-5), "data.train_images=-5"),
    ],
)
def test_data_config_validation(kwargs, fragment):
    with pytest.raises(ConfigError) as e:
        DataConfig(**kwargs)
    assert fragment in str(e.value)


def test_data_section_loads_from_presets_and_overrides():
    cfg = load_study_config("micro", sets=["data.resolution=24", "data.scene.colors=['red','blue']"])
    assert cfg.data.resolution == 24 and cfg.data.scene.colors == ("red", "blue")
    assert load_study_config("quick").data.resolution == 32
    assert load_study_config("paper").data.resolution == 64
    with pytest.raises(ConfigError, match="unknown color 'pink'"):
        from_dict(DataConfig, {"scene": {"colors": ["pink"]}})


def test_cache_key_follows_the_config():
    assert replace(tiny(), seed=0).cache_key() == tiny(seed=0).cache_key()  # built two ways, one key
    assert tiny().cache_key() != tiny(resolution=32).cache_key()
    assert tiny().cache_key() != tiny(seed=1).cache_key()
    assert tiny().cache_key() != replace(tiny(), scene=replace(tiny().scene, min_distance=0.5)).cache_key()


# ----- building, resuming, repairing ------------------------------------------------------------
def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("shard-*")}


def test_build_writes_shards_manifest_and_scene_json(tmp_path):
    cfg = tiny()
    root = build_dataset(cfg, tmp_path)
    assert root == tmp_path / "data" / cfg.cache_key()
    manifest = json.loads((root / "manifest.json").read_text())
    assert sorted(manifest["splits"]["train"]) == ["shard-00000", "shard-00001", "shard-00002"]
    assert sorted(manifest["splits"]["test"]) == ["shard-00000", "shard-00001"]
    scenes = json.loads((root / "train" / "shard-00002.json").read_text())["scenes"]
    assert len(scenes) == 2  # 10 images in shards of 4
    test = SceneDataset(root, "test")
    assert len(test) == 6 and test.tensors["counts"].tolist() == [0, 0, 1, 1, 2, 2]
    train = SceneDataset(root, "train")
    assert len(train) == 10 and set(train.tensors["counts"].tolist()) <= {1, 2, 3}
    item = train[0]
    assert item["images"].shape == (3, 16, 16) and -1 <= item["images"].min() <= item["images"].max() <= 1
    only_two = SceneDataset(root, "test", counts=(2,))
    assert len(only_two) == 2 and all(only_two[i]["counts"] == 2 for i in range(2))


def test_partial_run_resumes_and_keeps_finished_shards(tmp_path):
    cfg = tiny()
    root = build_dataset(cfg, tmp_path, splits=("train",))
    done = {p: p.stat().st_mtime_ns for p in (root / "train").glob("shard-*")}
    # simulate a crash in the middle of the last shard: its files never got a manifest entry
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["splits"]["train"]["shard-00002"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "train" / "shard-00002.safetensors").write_bytes(b"half a file")
    build_dataset(cfg, tmp_path)
    for p, mtime in done.items():
        if "00002" not in p.name:
            assert p.stat().st_mtime_ns == mtime, f"{p.name} was rebuilt although it was finished"
    assert len(SceneDataset(root, "train")) == 10 and len(SceneDataset(root, "test")) == 6


def test_corrupted_shard_is_detected_and_rebuilt_identically(tmp_path):
    cfg = tiny()
    root = build_dataset(cfg, tmp_path)
    before = _files(root)
    path = root / "train" / "shard-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits in the image data, same size
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-00001.safetensors.*corrupted"):
        SceneDataset(root, "train")
    build_dataset(cfg, tmp_path)
    assert _files(root) == before, "rebuilt shards must be byte-identical"
    (root / "test" / "shard-00000.json").unlink()  # a missing side file also forces a rebuild
    build_dataset(cfg, tmp_path)
    assert _files(root) == before


def test_shard_contents_match_a_direct_render(tmp_path):
    cfg = tiny(save_masks=True)
    root = build_dataset(cfg, tmp_path, splits=("test",))
    data = SceneDataset(root, "test")
    scenes = SceneBatch.from_tensors(data.tensors)
    out = Renderer(16, 1)(scenes)
    assert torch.equal((out.images * 255).round().to(torch.uint8), data.tensors["images"])
    assert torch.equal(out.masks, data.tensors["masks"])
    assert torch.allclose(out.centers, data.tensors["centers"])


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="cannot write to"):
        build_dataset(tiny(), blocker / "out")


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="build it with `locodiff render`"):
        SceneDataset(tmp_path / "nothing", "train")


# ----- conditioning -----------------------------------------------------------------------------
def _rendered(counts, seed=0):
    scenes = SceneSampler().sample(counts, seed)
    return scenes, Renderer(32, 2)(scenes)


def test_all_policy_lists_every_object_with_attributes():
    scenes, out = _rendered([0, 1, 3])
    cond = make_conditioning(scenes, out.centers, "all")
    assert cond.counts().tolist() == [0, 1, 3]
    assert torch.equal(cond.locations[cond.mask], out.centers[scenes.mask])
    assert ATTRIBUTE_NAMES == ("color", "shape", "size", "material")
    attrs = cond.attributes[2, :3]
    assert torch.equal(attrs[:, 0], scenes.color[2, :3]) and torch.equal(attrs[:, 1], scenes.shape[2, :3])
    assert torch.equal(attrs[:, 2], scenes.size[2, :3]) and torch.equal(attrs[:, 3], scenes.material[2, :3])
    assert (cond.attributes[0] == -1).all()


def test_one_policy_labels_one_random_present_object():
    scenes, out = _rendered([0, 1, 3, 3, 3, 3, 3, 3])
    a = make_conditioning(scenes, out.centers, "one", torch.Generator().manual_seed(0))
    b = make_conditioning(scenes, out.centers, "one", torch.Generator().manual_seed(0))
    assert a.slots == 1 and a.counts().tolist() == [0, 1, 1, 1, 1, 1, 1, 1]
    assert torch.equal(a.locations, b.locations)
    for i in range(1, 8):  # the label is one of the image's own objects
        d = (out.centers[i][scenes.mask[i]] - a.locations[i, 0]).norm(dim=-1)
        assert d.min() < 1e-6
    picks = set()
    for seed in range(20):
        c = make_conditioning(scenes, out.centers, "one", torch.Generator().manual_seed(seed))
        picks.add(tuple(c.locations[2, 0].tolist()))
    assert len(picks) == 3, "every object of a 3-object image gets picked sometimes"
    with pytest.raises(ConfigError, match="label policy 'some'"):
        make_conditioning(scenes, out.centers, "some")


def test_encodings_of_rendered_conditioning_point_at_the_objects():
    scenes, out = _rendered([4, 4])
    cond = make_conditioning(scenes, out.centers, "all")
    bumps = gaussian_bumps(cond, 32, 32, sigma_px=1.0)  # [B, N, H, W]
    peak = bumps.flatten(2).argmax(-1)
    on_object = out.masks.flatten(2).gather(2, peak[..., None])[..., 0]
    assert on_object[scenes.mask].all(), "each conditioner's map peaks on its own object"
    tokens = fourier_features(cond.locations)
    assert tokens.shape == (2, 4, 24) and torch.isfinite(tokens).all()


def test_stream_and_dataset_batches_share_one_format(tmp_path):
    cfg = tiny()
    stream = SceneStream(cfg, batch_size=5, seed=3)
    batch = next(iter(stream))
    assert batch["images"].shape == (5, 3, 16, 16) and batch["images"].dtype == torch.float32
    assert set(batch["counts"].tolist()) <= {1, 2, 3}
    again = SceneStream(cfg, batch_size=5, seed=3).next_batch()
    assert torch.equal(batch["images"], again["images"]), "the stream is seeded"
    cond = batch_conditioning(batch, "all")
    assert torch.equal(cond.counts(), batch["counts"])
    loader = torch.utils.data.DataLoader(SceneDataset.from_config(cfg, tmp_path, "train"), batch_size=4)
    first = next(iter(loader))
    assert set(first) >= set(batch) - {"masks"}
    assert batch_conditioning(first, "one", torch.Generator().manual_seed(0)).slots == 1


def test_contact_sheet_has_a_row_per_count():
    cfg = tiny()
    sheet = data_contact_sheet(cfg, counts=[0, 1, 2], per_row=3)
    side = 64  # 16-pixel images are enlarged 4x
    assert sheet.size[1] == 3 * (side + 2)
    assert sheet.size[0] > 3 * side
    grid = contact_sheet([torch.rand(2, 3, 32, 32)], ["k = 1"])
    assert grid.size[1] == 64 + 2


# ----- the command ------------------------------------------------------------------------------
def test_render_command_writes_shards_and_the_contact_sheet(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["render", "--preset", "micro", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    cfg = load_study_config("micro").data
    root = tmp_path / "data" / cfg.cache_key()
    assert (root / "contact_sheet.png").stat().st_size > 1000
    assert len(list((root / "train").glob("shard-*.safetensors"))) == cfg.num_shards("train")
    assert len(list((root / "test").glob("shard-*.safetensors"))) == cfg.num_shards("test")
    again = runner.invoke(app, ["render", "--preset", "micro", "--out", str(tmp_path)])
    assert again.exit_code == 0 and "data set ready" in again.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "data.resolution=8"], "resolution 8"),
        (["--set", "data.scene.colors=['pink']"], "unknown color 'pink'"),
        (["--set", "data.train_counts=[1, 40]"], "data.train_counts"),
    ],
)
def test_render_command_rejects_bad_input_with_exit_code_2(tmp_path, args, fragment):
    result = CliRunner().invoke(app, ["render", "--preset", "micro", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert fragment in result.output


def test_render_command_reports_an_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["render", "--preset", "micro", "--out", str(blocker / "sub")])
    assert result.exit_code == 2 and "cannot write to" in result.output


def test_render_dry_run_prints_the_data_section():
    result = CliRunner().invoke(app, ["render", "--preset", "micro", "--dry-run"])
    assert result.exit_code == 0
    assert json.loads(result.output)["data"]["resolution"] == 16


def test_processes_sharing_a_data_folder_never_race_on_the_write_probe(tmp_path):
    """Two ``locodiff train`` of one study start together on one data folder: each proves the
    folder writable with a probe file of its own name (a shared name made one of them fail)."""
    from concurrent.futures import ThreadPoolExecutor

    from locodiff.scenes.dataset import ensure_writable

    def prove(_):
        for _ in range(200):
            ensure_writable(tmp_path / "data")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(prove, range(8)))  # raises the first DataError, if any
    assert list((tmp_path / "data").iterdir()) == []  # and leaves nothing behind

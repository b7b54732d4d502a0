"""The CLEVR generator's scene format both ways: export -> import gives the same scenes, a folder
of another size is cropped and resized, and a malformed folder is one error with nothing cached."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from locodiff.cli import app
from locodiff.errors import ConfigError, DataError
from locodiff.scenes.clevr_format import read_scene
from locodiff.scenes.config import DataConfig
from locodiff.scenes.dataset import SceneDataset, build_dataset
from locodiff.scenes.figures import stored_contact_sheet
from locodiff.stages.config import load_study_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The micro preset's 1-3-object test scenes written as a CLEVR folder by the command line."""
    root = tmp_path_factory.mktemp("clevr")
    args = ["export-scenes", str(root / "clevr"), "-p", "micro", "-s", f"out_dir={root / 'run'}", "--counts", "1-3"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cfg = load_study_config("micro", sets=[f"out_dir={root / 'run'}"]).data
    return root, cfg


def imported(cfg: DataConfig, folder, **kw) -> DataConfig:
    return replace(cfg, source="clevr_folder", clevr_folder=str(folder), train_images=1000, **kw)


def test_export_then_import_gives_the_same_scenes(exported):
    root, cfg = exported
    original = SceneDataset(build_dataset(cfg, root / "run", ("test",)), "test", counts=(1, 2, 3))
    again = SceneDataset(build_dataset(imported(cfg, root / "clevr"), root / "back", ("train",)), "train")
    assert len(again) == len(original) > 0
    want = {k: v[original.index] for k, v in original.tensors.items()}
    got = again.tensors
    for name in ("shape", "color", "material", "size", "mask", "counts", "images"):
        assert torch.equal(got[name][:, :3], want[name][:, :3]) if got[name].ndim > 1 else torch.equal(got[name], want[name])
    assert torch.equal(got["centers"], want["centers"][:, :3])  # pixel units x resolution (a power of 2): exact
    assert torch.equal(got["positions"], want["positions"][:, :3])
    scenes = json.loads((root / "clevr" / "scenes.json").read_text())["scenes"]
    assert {"3d_coords", "pixel_coords", "rotation", "shape", "color", "material", "size"} <= set(scenes[0]["objects"][0])


def test_a_wider_image_is_cropped_to_its_centre_square_and_resized(tmp_path):
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, 10:70] = 200  # the centre square (columns 10..69) is bright, the sides dark
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    scene = {"image_filename": "a.png", "objects": [{"pixel_coords": [40.0, 15.0, 5.0]}]}
    pixels, _, locations = read_scene(tmp_path, scene, 16)
    assert pixels.shape == (3, 16, 16) and (pixels == 200).all()
    assert locations == [(0.5, 0.25)]


def test_a_malformed_or_partial_folder_is_one_error_and_nothing_is_cached(exported, tmp_path):
    root, cfg = exported
    folder = tmp_path / "clevr"
    shutil.copytree(root / "clevr", folder)
    missing = sorted((folder / "images").iterdir())[2]
    missing.unlink()
    with pytest.raises(DataError, match=missing.name):
        build_dataset(imported(cfg, folder), tmp_path / "run", ("train",))
    (data_root,) = (tmp_path / "run" / "data").iterdir()
    manifest = json.loads((data_root / "manifest.json").read_text()) if (data_root / "manifest.json").exists() else {}
    assert not manifest.get("splits", {}).get("train")  # no shard of the failed split is named
    (folder / "scenes.json").write_text("{not json")
    with pytest.raises(DataError, match="scenes.json is not readable JSON"):
        build_dataset(imported(cfg, folder), tmp_path / "run", ("train",))
    shutil.rmtree(folder / "images")
    with pytest.raises(DataError, match="images is missing"):
        build_dataset(imported(cfg, folder), tmp_path / "run", ("train",))


def test_an_unknown_word_names_its_scene(exported, tmp_path):
    root, cfg = exported
    folder = tmp_path / "clevr"
    shutil.copytree(root / "clevr", folder)
    data = json.loads((folder / "scenes.json").read_text())
    data["scenes"][1]["objects"][0]["color"] = "pink"
    (folder / "scenes.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="CLEVR_test_000001.png: unknown color 'pink'"):
        build_dataset(imported(cfg, folder), tmp_path / "run", ("train",))


def test_the_source_and_its_folder_go_together():
    with pytest.raises(ConfigError, match="clevr_folder"):
        DataConfig(source="clevr_folder")
    with pytest.raises(ConfigError, match="clevr_folder"):
        DataConfig(clevr_folder="somewhere")


def test_the_contact_sheet_of_an_imported_folder_shows_its_images(exported, tmp_path):
    root, cfg = exported
    res = CliRunner().invoke(app, ["render", "-p", "micro", "-s", f"out_dir={tmp_path}", "-s", "data.source=clevr_folder",
                                   "-s", f"data.clevr_folder={root / 'clevr'}", "-s", "data.train_images=6",
                                   "-s", "data.test_counts=[1, 2, 3]"])
    assert res.exit_code == 0, res.output
    (data_root,) = (tmp_path / "data").iterdir()
    sheet = np.asarray(Image.open(data_root / "contact_sheet.png"))
    # the stored images' sheet (the command would otherwise have drawn fresh renders)
    assert np.array_equal(sheet, np.asarray(stored_contact_sheet(data_root, range(11), 8)))

"""Scene types and the scene sampler: validation, round trips, constraints, determinism."""

import math

import pytest
import torch

from locodiff.errors import ConfigError, InputError
from locodiff.scenes import Renderer, Scene, SceneBatch, SceneConfig, SceneObject, SceneSampler
from locodiff.scenes import vocab


def _scene():
    return Scene(
        [
            SceneObject("cube", "red", "rubber", "large", 0.5, -1.0, 0.3),
            SceneObject("sphere", "cyan", "metal", "small", -1.5, 1.0),
        ]
    )


# ----- typed scenes -----------------------------------------------------------------------------
def test_scene_json_round_trip():
    scene = _scene()
    again = Scene.from_json(scene.to_json())
    assert again == scene


def test_scene_batch_round_trip_pads_and_keeps_order():
    scenes = [_scene(), Scene(), Scene([SceneObject("cylinder", "yellow", "metal", "large", 2, 2)])]
    batch = SceneBatch.from_scenes(scenes, slots=4)
    assert batch.shape.shape == (3, 4) and batch.positions.shape == (3, 4, 2)
    assert batch.counts().tolist() == [2, 0, 1]
    assert batch.color[0, 0] == vocab.COLOR_NAMES.index("red")
    back = batch.to_scenes()
    assert [len(s) for s in back] == [2, 0, 1]
    assert back[0].objects[0].shape == "cube"
    assert math.isclose(back[0].objects[0].rotation, 0.3, rel_tol=1e-6)
    assert back[2] == Scene([SceneObject("cylinder", "yellow", "metal", "large", 2.0, 2.0)])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(color="pink"), "unknown color 'pink'"),
        (dict(shape="cone"), "unknown shape 'cone'"),
        (dict(size=-1), "size -1 is not a size name"),
        (dict(size="huge"), "unknown size 'huge'"),
        (dict(material="wood"), "unknown material 'wood'"),
        (dict(x=float("nan")), "expected a finite number"),
    ],
)
def test_bad_scene_objects_name_the_value_and_the_options(kwargs, fragment):
    args = dict(shape="cube", color="red", material="rubber", size="large", x=0.0, y=0.0)
    args.update(kwargs)
    with pytest.raises(InputError) as e:
        SceneObject(**args)
    assert fragment in str(e.value)
    if "unknown" in fragment:
        assert "expected one of" in str(e.value)


def test_scene_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(InputError, match="unknown scene-object key"):
        Scene.from_dict({"objects": [{**_scene().objects[0].to_dict(), "colour": "red"}]})
    with pytest.raises(InputError, match="lacks"):
        Scene.from_dict({"objects": [{"shape": "cube"}]})


def test_scene_batch_rejects_out_of_range_indices():
    batch = SceneBatch.from_scenes([_scene()])
    size = batch.size.clone()
    size[0, 0] = -1
    with pytest.raises(InputError, match="size index -1 is out of range"):
        SceneBatch(batch.shape, batch.color, batch.material, size, batch.positions, batch.rotations, batch.mask)


# ----- sampler ----------------------------------------------------------------------------------
def _check_constraints(scenes: SceneBatch, cfg: SceneConfig):
    renderer = Renderer(cfg.visibility_resolution)
    out = renderer(scenes)
    res = cfg.visibility_resolution
    for b in range(scenes.batch_size):
        idx = scenes.mask[b].nonzero()[:, 0].tolist()
        pos, size = scenes.positions[b], scenes.size_values()[b]
        for i in idx:
            assert out.visible_pixels[b, i] >= cfg.min_visible_pixels
            u, v = out.centers[b, i].tolist()
            assert 0 <= u <= 1 and 0 <= v <= 1
            assert out.masks[b, i, int(v * res), int(u * res)], "centre pixel not on the object"
            for j in idx:
                if j <= i:
                    continue
                gap = (pos[i] - pos[j]).norm() - size[i] - size[j]
                assert gap >= cfg.min_distance - 1e-5
                assert (out.centers[b, i] - out.centers[b, j]).norm() >= cfg.min_separation - 1e-5


@pytest.mark.parametrize("k", [0, 10])
def test_sampler_gives_exactly_k_objects_that_satisfy_the_constraints(k):
    cfg = SceneConfig()
    scenes = SceneSampler(cfg).sample(k, torch.Generator().manual_seed(1), batch_size=6)
    assert scenes.counts().tolist() == [k] * 6
    assert (scenes.positions[scenes.mask].abs() <= cfg.floor_extent).all()
    _check_constraints(scenes, cfg)


def test_sampler_mixed_counts_and_slots():
    scenes = SceneSampler().sample([0, 3, 1, 2], 0, slots=5)
    assert scenes.slots == 5 and scenes.counts().tolist() == [0, 3, 1, 2]
    assert (scenes.positions[~scenes.mask] == 0).all()


def test_sampler_is_deterministic_by_seed():
    sampler = SceneSampler()
    a = sampler.sample([1, 2, 3, 4], torch.Generator().manual_seed(7))
    b = sampler.sample([1, 2, 3, 4], 7)
    c = sampler.sample([1, 2, 3, 4], 8)
    for name, value in a.tensors().items():
        assert torch.equal(value, b.tensors()[name]), name
    assert not torch.equal(a.positions, c.positions)


def test_sampler_respects_attribute_subsets():
    cfg = SceneConfig(shapes=("sphere",), colors=("red", "blue"), materials=("metal",), sizes=("small",))
    scenes = SceneSampler(cfg).sample(3, 0, batch_size=4)
    m = scenes.mask
    assert (scenes.shape[m] == vocab.SHAPES.index("sphere")).all()
    assert set(scenes.color[m].tolist()) <= {vocab.COLOR_NAMES.index("red"), vocab.COLOR_NAMES.index("blue")}
    assert (scenes.material[m] == vocab.MATERIALS.index("metal")).all()
    assert (scenes.size[m] == vocab.SIZE_NAMES.index("small")).all()


def test_sampler_excludes_combinations_and_keeps_the_rest():
    held = (("cube", "red"), ("sphere", "blue"))
    cfg = SceneConfig(colors=("red", "blue"), exclude_combos=held)
    scenes = SceneSampler(cfg).sample(3, 0, batch_size=64)
    idx = vocab.combo_indices(held)
    assert not vocab.has_combo(scenes.shape, scenes.color, scenes.mask, idx).any()
    m = scenes.mask
    drawn = set(zip(scenes.shape[m].tolist(), scenes.color[m].tolist()))
    assert drawn == set(cfg.allowed_combos()) and len(drawn) == 4  # 3 shapes x 2 colours - 2
    unrestricted = SceneSampler(SceneConfig(colors=("red", "blue"))).sample(3, 0, batch_size=64)
    assert vocab.has_combo(unrestricted.shape, unrestricted.color, unrestricted.mask, idx).any()
    with pytest.raises(ConfigError, match="leaves no"):
        SceneConfig(shapes=("cube",), colors=("red",), exclude_combos=(("cube", "red"),))
    with pytest.raises(InputError, match="unknown color 'pink'"):
        SceneConfig(exclude_combos=(("cube", "pink"),))


def test_count_above_max_is_rejected():
    with pytest.raises(InputError, match="above max_objects=10"):
        SceneSampler().sample(11, 0, batch_size=1)


def test_impossible_placement_fails_fast_with_a_clear_error():
    cfg = SceneConfig(max_objects=40, sizes=("large",), floor_extent=1.5)
    with pytest.raises(InputError, match="40 objects cannot fit"):
        SceneSampler(cfg).sample(40, 0, batch_size=1)


def test_unsatisfiable_constraints_fail_after_bounded_retries():
    cfg = SceneConfig(min_visible_pixels=2000, max_retries=2)  # more pixels than a 32x32 image has
    with pytest.raises(InputError, match="in 2 rounds: objects were too hidden"):
        SceneSampler(cfg).sample(1, 0, batch_size=2)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(colors=("pink",)), "unknown color 'pink'"),
        (dict(shapes=()), "allowed shapes are empty"),
        (dict(min_distance=-1.0), "scene.min_distance=-1.0"),
        (dict(visibility_resolution=8), "scene.visibility_resolution=8"),
    ],
)
def test_scene_config_validation(kwargs, fragment):
    with pytest.raises((ConfigError, InputError), match=fragment.replace("(", r"\(")):
        SceneSampler(SceneConfig(**kwargs))

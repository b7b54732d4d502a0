"""Render CLEVR-like scenes with Blender's Cycles on the CPU: ``python blender_worker.py --serve``
(job file paths on stdin, one answer line each) or ``python blender_worker.py JOB.json``.

The Blender backend (``scenes/blender.py``) runs this file with a Python that has ``bpy`` (which
may be another environment than locodiff's: bpy pins numpy < 2), so it uses the standard library
and ``bpy`` only. The job names the camera, the lights, the resolution, the samples per pixel and
the scenes (objects with shape, colour as linear RGB, material, half-extent, floor position and
rotation); for scene ``i`` it writes ``rgb-i.png`` (the shaded image, sRGB) and ``index-i.png``
(red channel: 1 + the slot of the object seen at each pixel centre, 0 for the floor), then
``done.json`` last. Everything is built from primitives: no ``.blend`` file, nothing downloaded.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

CUBE_SCALE = 1.0 / math.sqrt(2.0)  # as scenes.scene: a cube's half-side relative to its size


def setup_render(bpy, scene, job: dict) -> None:
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.use_denoising = False
    scene.cycles.seed = 0
    scene.render.threads_mode = "FIXED"
    scene.render.threads = 1  # processes give the parallelism; one thread keeps a render repeatable
    scene.render.resolution_x = scene.render.resolution_y = job["resolution"]
    scene.render.resolution_percentage = 100
    scene.render.dither_intensity = 0.0
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.image_settings.color_depth = "8"


def setup_camera(bpy, scene, camera: dict) -> None:
    from mathutils import Vector

    data = bpy.data.cameras.new("camera")
    data.lens_unit = "FOV"
    data.angle = math.radians(camera["fov_deg"])
    data.sensor_fit = "AUTO"
    cam = bpy.data.objects.new("camera", data)
    scene.collection.objects.link(cam)
    cam.location = camera["eye"]
    direction = Vector(camera["target"]) - Vector(camera["eye"])
    cam.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam


def setup_lights(bpy, scene, lights: dict) -> None:
    """Three suns (key, fill, back) and a uniform sky for the ambient light; a Lambertian surface
    of albedo a under a sun of strength pi * k reflects a * k * cos, as the torch renderer's
    lighting model says (measured: the floor 0.51 here against 0.49 from the formula)."""
    from mathutils import Vector

    for name in ("key", "fill", "back"):
        data = bpy.data.lights.new(name, type="SUN")
        data.energy = math.pi * lights[name]
        data.angle = math.radians(lights.get("sun_angle_deg", 3.0))
        data.use_shadow = name == "key"  # as the torch renderer: only the key light casts shadows
        sun = bpy.data.objects.new(name, data)
        sun.rotation_euler = Vector(lights[f"{name}_dir"]).to_track_quat("Z", "Y").to_euler()
        scene.collection.objects.link(sun)
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (*[lights["ambient"]] * 3, 1.0)
    scene.world = world


def principled(bpy, name: str, rgb, metal: bool):
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*rgb, 1.0)
    bsdf.inputs["Metallic"].default_value = 1.0 if metal else 0.0
    bsdf.inputs["Roughness"].default_value = 0.25 if metal else 0.8
    return mat


def emission(bpy, name: str, value: float):
    """A flat colour, for the index render (no lights, no anti-aliasing, raw view)."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    nodes.remove(nodes["Principled BSDF"])
    light = nodes.new("ShaderNodeEmission")
    light.inputs["Color"].default_value = (value, 0.0, 0.0, 1.0)
    light.inputs["Strength"].default_value = 1.0
    mat.node_tree.links.new(light.outputs["Emission"], nodes["Material Output"].inputs["Surface"])
    return mat


def add_object(bpy, o: dict):
    s, x, y = o["size"], o["x"], o["y"]
    if o["shape"] == "sphere":
        bpy.ops.mesh.primitive_uv_sphere_add(radius=s, location=(x, y, s), segments=48, ring_count=24)
    elif o["shape"] == "cylinder":
        bpy.ops.mesh.primitive_cylinder_add(radius=s, depth=2 * s, location=(x, y, s), vertices=48)
    else:
        half = s * CUBE_SCALE
        bpy.ops.mesh.primitive_cube_add(size=2 * half, location=(x, y, half))
    obj = bpy.context.active_object
    obj.rotation_euler = (0.0, 0.0, o["rotation"])
    if o["shape"] != "cube":
        bpy.ops.object.shade_smooth()
    return obj


def render(bpy, scene, path: Path, samples: int, index: bool) -> None:
    scene.cycles.samples = samples
    scene.cycles.filter_width = 0.01 if index else 1.5  # the index pass: one point per pixel, its centre
    scene.cycles.pixel_filter_type = "BOX" if index else "BLACKMAN_HARRIS"
    scene.view_settings.view_transform = "Raw" if index else "Standard"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)


class Stage:
    """The fixed part of a job (render settings, camera, lights, floor) built once, and the
    materials it reuses, so that a worker can render job after job without starting again."""

    SETTINGS = ("resolution", "samples", "camera", "lights")

    def __init__(self, bpy, job: dict) -> None:
        self.bpy, self.settings = bpy, {k: job[k] for k in self.SETTINGS}
        bpy.ops.wm.read_factory_settings(use_empty=True)
        self.scene = bpy.context.scene
        setup_render(bpy, self.scene, job)
        setup_camera(bpy, self.scene, job["camera"])
        setup_lights(bpy, self.scene, job["lights"])
        bpy.ops.mesh.primitive_plane_add(size=200.0, location=(0.0, 0.0, 0.0))
        self.floor = bpy.context.active_object
        grey = job["lights"]["floor_albedo"]
        self.floor_look, self.black = principled(bpy, "floor", (grey, grey, grey), False), emission(bpy, "black", 0.0)
        self.looks: dict[tuple, object] = {}
        self.index_looks: dict[int, object] = {}

    def fits(self, job: dict) -> bool:
        return all(job[k] == self.settings[k] for k in self.SETTINGS)

    def look(self, o: dict):
        key = (tuple(o["color"]), o["material"])
        if key not in self.looks:
            self.looks[key] = principled(self.bpy, f"look-{len(self.looks)}", o["color"], o["material"] == "metal")
        return self.looks[key]

    def index_look(self, slot: int):
        if slot not in self.index_looks:
            self.index_looks[slot] = emission(self.bpy, f"index-{slot}", (slot + 1) / 255.0)
        return self.index_looks[slot]

    def render_scene(self, objects: list[dict], out: Path, i: int, samples: int) -> None:
        """``rgb-i.png`` and ``index-i.png`` of one scene; its objects are removed afterwards."""
        bpy, scene, background = self.bpy, self.scene, self.scene.world.node_tree.nodes["Background"]
        made = [add_object(bpy, o) for o in objects]
        for o, obj in zip(objects, made):
            obj.data.materials.append(self.look(o))
        self.floor.data.materials.clear()
        self.floor.data.materials.append(self.floor_look)
        background.inputs["Strength"].default_value = 1.0
        render(bpy, scene, out / f"rgb-{i}.png", samples, index=False)
        for o, obj in zip(objects, made):
            obj.data.materials[0] = self.index_look(o["slot"])
        self.floor.data.materials[0] = self.black
        background.inputs["Strength"].default_value = 0.0
        render(bpy, scene, out / f"index-{i}.png", 1, index=True)
        for obj in made:  # the object and its mesh: nothing accumulates over many jobs
            mesh = obj.data
            bpy.data.objects.remove(obj, do_unlink=True)
            bpy.data.meshes.remove(mesh)


def run_job(bpy, stage: Stage | None, job_path: str) -> Stage:
    job = json.loads(Path(job_path).read_text())
    if stage is None or not stage.fits(job):
        stage = Stage(bpy, job)
    out = Path(job["out"])
    for i, objects in enumerate(job["scenes"]):
        stage.render_scene(objects, out, i, job["samples"])
    (out / "done.json").write_text(json.dumps({"scenes": len(job["scenes"])}))
    return stage


def serve() -> None:
    """Render the job whose path each line of stdin names; answer "ok" (or "error: ...") on the
    original stdout, one line per job. Blender's own messages go to stderr."""
    import bpy  # optional heavy dependency: only in the Python this file runs under

    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # Cycles prints to stdout; keep the answer channel clean
    stage = None
    for line in sys.stdin:
        try:
            stage = run_job(bpy, stage, line.strip())
            answers.write("ok\n")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
            answers.write(f"error: {type(e).__name__}: {e}\n".replace("\n", " ").rstrip() + "\n")
        answers.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:  # one job: python blender_worker.py JOB.json
        import bpy

        run_job(bpy, None, sys.argv[1])

"""The method seam: the registry drives ``recon fit``/``recon eval`` and their help, and a
method that is not a Gaussian scene is evaluated through the scene-model protocol.

A throw-away method ("flat": the scene is one colour, the mean of the training photos, at a
constant depth) is registered for the test only; nothing of the engine or the CLI is touched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.cameras import Cameras
from reconstruction.method import Method
from reconstruction.scene_model import OUTPUTS, RenderOutput, SceneModel, camera_size

FLAT_DEPTH = 2.0


@dataclass
class FlatOptions:
    """Options of the throw-away method."""

    gain: float = 1.0
    """Multiplies the mean colour."""


class FlatScene(SceneModel):
    """One colour everywhere, at depth :data:`FLAT_DEPTH`; not differentiable w.r.t. cameras."""

    def __init__(self, colour: Sequence[float], cameras: Cameras) -> None:
        self.colour = torch.tensor(colour, dtype=torch.float32)
        self.cameras = cameras

    def render(self, cameras: Cameras, outputs: Sequence[str] = OUTPUTS) -> RenderOutput:
        width, height = camera_size(cameras)
        shape = (len(cameras), height, width)
        return RenderOutput(
            rgb=self.colour.expand(*shape, 3).clone() if "rgb" in outputs else None,
            depth=torch.full(shape, FLAT_DEPTH) if "depth" in outputs else None,
            alpha=torch.ones(shape) if "alpha" in outputs else None)

    def save(self, folder: Path) -> None:
        from geometry.io.transforms_json import write_transforms_json

        write_transforms_json(folder / "transforms.json", self.cameras,
                              file_paths=list(self.cameras.names))
        (folder / "flat.json").write_text(json.dumps({"colour": self.colour.tolist()}))

    @classmethod
    def load(cls, folder: Path, device="cpu") -> FlatScene:
        from geometry.io.transforms_json import read_transforms_json

        cameras = read_transforms_json(folder / "transforms.json", dtype=torch.float64,
                                       require_images=False).cameras
        return cls(json.loads((folder / "flat.json").read_text())["colour"], cameras)


def _fit_flat(config, cameras, callbacks) -> dict:
    from geometry.io.atomic import atomic_directory
    from reconstruction.images import load_images

    images = load_images(config.images, config.max_size)
    colour = torch.stack([im.rgb.reshape(-1, 3).mean(0) for im in images]).mean(0)
    colour = (colour * config.options.gain).clamp(0, 1)
    if cameras is None:  # a pose-free "estimate": cameras on a circle
        T_world_cam = torch.eye(4)[None].repeat(len(images), 1, 1)
        angles = torch.arange(len(images)) * 2.0
        T_world_cam[:, 0, 3], T_world_cam[:, 1, 3] = angles.cos(), angles.sin()
        cameras = Cameras(K=torch.eye(3)[None].repeat(len(images), 1, 1),
                          T_world_cam=T_world_cam,
                          width=torch.tensor([im.width for im in images]),
                          height=torch.tensor([im.height for im in images]))
    cameras = Cameras(K=cameras.K, T_world_cam=cameras.T_world_cam, width=cameras.width,
                      height=cameras.height, names=[im.path.name for im in images])
    metrics = {"method": "flat", "flat_colour": colour.tolist(), "timings_s": {"total": 0.0}}
    with atomic_directory(config.out) as tmp:
        FlatScene(colour.tolist(), cameras).save(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics))
    return metrics


FLAT = Method(name="flat", summary="Throw-away test method: one colour everywhere.",
              fit=_fit_flat, load=FlatScene.load, options=FlatOptions)


@pytest.fixture
def flat_registered():
    from reconstruction.methods import register, unregister

    register(FLAT)
    yield FLAT
    unregister("flat")


def test_the_builtin_methods_are_registered_with_their_options():
    from reconstruction.methods import get_method, method_names
    from reconstruction.rdggs.config import RDGGSConfig

    assert method_names()[0] == "instantsplat"
    assert {"instantsplat", "rdggs"} <= set(method_names())
    assert get_method("instantsplat").options is None
    assert get_method("rdggs").options is RDGGSConfig
    from geometry.errors import UserError

    with pytest.raises(UserError, match="no reconstruction method 'nerf'.*instantsplat"):
        get_method("nerf")


def test_help_lists_methods_and_shows_only_the_chosen_methods_options(run_recon_output,
                                                                     flat_registered):
    code, out = run_recon_output("fit", "--help")
    assert code == 0
    assert "flat" in out and "Throw-away test method" in out and "rdggs" in out
    assert "--rdggs." not in out and "--flat." not in out
    code, out = run_recon_output("fit", "--method", "rdggs", "--help")
    assert code == 0 and "--rdggs.depth-prior" in out and "--flat." not in out
    code, out = run_recon_output("fit", "--method", "flat", "--help")
    assert code == 0 and "--flat.gain" in out and "--rdggs." not in out
    code, out = run_recon_output("eval", "--method=flat", "--help")
    assert code == 0 and "--flat.gain" in out and "--rdggs." not in out
    # Another method's options are refused, not silently ignored.
    code, out = run_recon_output("fit", "--images", "x", "--out", "y",
                              "--rdggs.depth-prior", "init")
    assert code == 2 and "--rdggs.depth-prior" in out


def _photos(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
            folder / f"p{k}.png")
    return folder


def test_recon_fit_runs_a_registered_method_with_its_options(run_recon, tmp_path,
                                                             flat_registered):
    photos = _photos(tmp_path)
    out = tmp_path / "out"
    code, err = run_recon("fit", "--method", "flat", "--images", str(photos), "--out", str(out),
                          "--flat.gain", "0.5", "--quiet")
    assert code == 0, err
    model = FlatScene.load(out)
    from reconstruction.images import load_images

    mean = torch.stack([im.rgb.reshape(-1, 3).mean(0)
                        for im in load_images(photos, None)]).mean(0)
    assert torch.allclose(model.colour, mean * 0.5, atol=1e-6)
    assert model.cameras.names == ["p0.png", "p1.png", "p2.png"]


def test_recon_eval_measures_a_method_through_the_scene_model(run_recon, tmp_path,
                                                               flat_registered):
    from reconstruction.eval.data import load_dataset
    from reconstruction.eval.metrics import psnr
    from reconstruction.procedural import SceneConfig, generate

    dataset = tmp_path / "scene"
    generate(SceneConfig(kind="orbit", num_views=6, width=48, height=36, seed=2,
                         num_objects=3), dataset)
    out = tmp_path / "eval"
    code, err = run_recon("eval", "--dataset", str(dataset), "--out", str(out), "--method",
                          "flat", "--views", "0,2,4", "--test-views", "1,3", "--known-poses",
                          "--quiet")
    assert code == 0, err
    results = json.loads((out / "eval.json").read_text())
    assert results["method"] == "flat" and results["test_pose_optimised"] is False
    # The render is the mean colour of the training views: PSNR against each test view.
    data = load_dataset(dataset)
    mean = torch.stack([data.load_image(i).reshape(-1, 3).mean(0) for i in (0, 2, 4)]).mean(0)
    expected = [psnr(mean.expand(36, 48, 3), data.load_image(i)) for i in (1, 3)]
    assert [v["psnr"] for v in results["per_view"]] == pytest.approx(expected, abs=1e-4)
    # Depth comes from the model too: a constant 2 against the generator's depth.
    depth = data.load_depth(1)
    valid = depth > 0
    absrel = float(((FLAT_DEPTH - depth[valid]).abs() / depth[valid]).mean())
    assert results["per_view"][0]["depth_absrel"] == pytest.approx(absrel, rel=1e-4)
    # Pose-free, a method without camera gradients is measured at the aligned poses.
    code, err = run_recon("eval", "--dataset", str(dataset), "--out", str(tmp_path / "e2"),
                          "--method", "flat", "--views", "0,2,4", "--test-views", "1",
                          "--quiet", "--test-pose", "on")
    assert code == 2 and "differentiable" in err and "--test-pose off" in err


def test_recon_view_shows_any_method_through_the_scene_model(run_recon, tmp_path,
                                                             flat_registered):
    """A method's output without splats is shown as its cameras and points sampled from its
    renders: the flat scene's points lie at depth 2 in front of each camera, in its colour."""
    from viewer.data import load_scene

    out = tmp_path / "out"
    code, err = run_recon("fit", "--method", "flat", "--images", str(_photos(tmp_path)),
                          "--out", str(out), "--quiet")
    assert code == 0, err
    scene = load_scene(out)
    assert scene.splats is None and len(scene.cameras) == 3
    model = FlatScene.load(out)
    n = len(scene.points_world) // 3
    assert len(scene.points_world) == 3 * 24 * 32  # every pixel of the 32x24 photos
    for k in range(3):
        pts = torch.from_numpy(scene.points_world[k * n:(k + 1) * n]).double()
        T = model.cameras.T_world_cam[k].double()
        z = ((pts - T[:3, 3]) @ T[:3, :3])[:, 2]
        assert torch.allclose(z, torch.full_like(z, FLAT_DEPTH), atol=1e-5)
    expected = (model.colour.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    assert (scene.point_colors == expected).all()


def test_gaussian_scene_model_save_and_load_round_trip(tmp_path):
    """What GaussianSceneModel.save writes, load reads back: same splats, same cameras (in
    name order), same background, hence the same renders."""
    from reconstruction.gaussians import GaussianScene
    from reconstruction.scene_model import GaussianSceneModel

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(200, 3, generator=g) - 0.5
    pts[:, 2] += 3.0
    scene = GaussianScene.from_points(pts, torch.rand(200, 3, generator=g), sh_degree=1)
    T = torch.eye(4, dtype=torch.float64)[None].repeat(2, 1, 1)
    T[1, 0, 3] = 0.2
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]], dtype=torch.float64)
    cameras = Cameras(K=K[None].repeat(2, 1, 1), T_world_cam=T, width=32, height=24,
                      names=["a.png", "b.png"])
    model = GaussianSceneModel(scene, cameras, background=(0.25, 0.5, 0.75))
    model.save(tmp_path)
    loaded = GaussianSceneModel.load(tmp_path)
    assert loaded.background == (0.25, 0.5, 0.75)
    assert loaded.cameras.names == ["a.png", "b.png"]
    assert torch.allclose(loaded.cameras.T_world_cam, T, atol=1e-9)
    with torch.no_grad():
        before, after = model.render(cameras), loaded.render(loaded.cameras)
    for name in ("rgb", "depth", "alpha"):
        assert torch.allclose(getattr(before, name), getattr(after, name), atol=1e-5), name

"""A camera-pose estimator as a ``recon fit`` initialiser: an oracle estimator (the true
cameras of a procedural scene) run through the SfM initialiser on its photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reconstruction.init.registry as registry
from geometry.cameras import Cameras
from geometry.errors import UserError
from pose.camera import CameraPoseResult
from pose.camera.initialiser import register_camera_estimator
from reconstruction.images import load_images
from reconstruction.init.config import InitConfig
from reconstruction.procedural import SceneConfig, render, write_photos


class Oracle:
    """Returns the scene's true cameras; remembers what it was given."""

    def __init__(self, cameras: Cameras) -> None:
        self.cameras = cameras
        self.calls: list[tuple[int, Cameras | None]] = []

    def estimate(self, images: list[torch.Tensor], masks=None,
                 initial: Cameras | None = None) -> CameraPoseResult:
        self.calls.append((len(images), initial))
        return CameraPoseResult(self.cameras, torch.full((len(images),), 0.75))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    scene = render(SceneConfig(kind="arc", num_views=3, width=192, height=144, seed=1))
    folder = tmp_path_factory.mktemp("photos")
    write_photos(scene, folder)
    return scene, load_images(folder)


def test_oracle_estimator_seeds_the_sfm_initialiser(photos, tmp_path, monkeypatch):
    scene, images = photos
    # Registered into a copy, so that other tests see the built-in registry only.
    monkeypatch.setattr(registry, "INITIALISERS", dict(registry.INITIALISERS))
    oracle = Oracle(scene.cameras)
    built = []
    register_camera_estimator("oracle", lambda: built.append(1) or oracle, base="sfm-sparse")
    assert not built  # the factory runs on first use only
    result = registry.INITIALISERS["oracle"](images, tmp_path, InitConfig(), 0)
    assert built == [1] and oracle.calls == [(3, None)]
    # The model carries the estimated cameras, and its points are triangulated with them.
    np.testing.assert_array_equal(result.model.Ks, scene.cameras.K.double().numpy())
    np.testing.assert_allclose(result.model.T_cam_world,
                               scene.cameras.T_cam_world.double().numpy(), atol=1e-12)
    assert result.model.registered.all()
    assert result.stats["camera_estimator"] == "Oracle"
    assert result.stats["camera_confidence_mean"] == pytest.approx(0.75)
    # Every point lies on the scene's surfaces: its depth in view 0 agrees with the true
    # depth map there (measured: median 0.2 % over 146 points; 1 % leaves room for other
    # feature extractors' sub-pixel noise).
    cam = scene.cameras[0]
    uv, z = cam.project(torch.from_numpy(result.model.points_world))
    col, row = uv[:, 0].long(), uv[:, 1].long()
    inside = (z > 0) & (col >= 0) & (col < 192) & (row >= 0) & (row < 144)
    depth_gt = torch.from_numpy(scene.depth[0]).double()[row[inside], col[inside]]
    rel = ((z[inside] - depth_gt) / depth_gt).abs()
    assert int(inside.sum()) >= 20
    assert float(rel.median()) < 0.01, float(rel.median())
    assert result.model.reprojection_errors().max() <= 4.0


def test_known_cameras_reach_the_estimator_as_initial(photos, tmp_path, monkeypatch):
    scene, images = photos
    monkeypatch.setattr(registry, "INITIALISERS", dict(registry.INITIALISERS))
    oracle = Oracle(scene.cameras)
    register_camera_estimator("oracle", lambda: oracle, base="sfm-sparse")
    given = (scene.cameras.K.double().numpy(), scene.cameras.T_cam_world.double().numpy())
    registry.INITIALISERS["oracle"](images, tmp_path, InitConfig(), 0, cameras=given)
    (count, initial), = oracle.calls
    assert count == 3
    torch.testing.assert_close(initial.T_world_cam, scene.cameras.T_world_cam.double())
    assert initial.width.tolist() == [192] * 3 and initial.height.tolist() == [144] * 3


def test_registering_refuses_builtin_names_and_unknown_bases(monkeypatch):
    monkeypatch.setattr(registry, "INITIALISERS", dict(registry.INITIALISERS))
    with pytest.raises(ValueError, match="built-in"):
        register_camera_estimator("sfm", lambda: None)
    with pytest.raises(ValueError, match="unknown base"):
        register_camera_estimator("mine", lambda: None, base="nope")


def _turned(cameras: Cameras, degrees: float) -> Cameras:
    """``cameras`` with every view but the first turned by ``degrees`` about its own y axis
    (a learned estimator's typical error; far too coarse for the matches)."""
    from geometry.so3 import axis_angle_to_matrix

    T = cameras.T_world_cam.double().clone()
    turn = axis_angle_to_matrix(torch.tensor([0.0, np.radians(degrees), 0.0],
                                             dtype=torch.float64))
    T[1:, :3, :3] = T[1:, :3, :3] @ turn
    return Cameras(K=cameras.K.double(), T_world_cam=T, width=cameras.width,
                   height=cameras.height)


def test_cameras_the_matches_do_not_fit_are_dropped_for_sfm_own(photos, tmp_path, monkeypatch,
                                                                capsys):
    """An estimate 20 degrees off: the initialiser warns and lets SfM register the photos
    itself (the same cameras as SfM alone) instead of failing on a message about pose
    conventions; the stats say how many matched points the estimate fit."""
    scene, images = photos
    monkeypatch.setattr(registry, "INITIALISERS", dict(registry.INITIALISERS))
    register_camera_estimator("coarse", lambda: Oracle(_turned(scene.cameras, 20.0)),
                              base="sfm-sparse")
    result = registry.INITIALISERS["coarse"](images, tmp_path / "a", InitConfig(), 0)
    err = capsys.readouterr().err
    assert "Oracle's cameras do not fit the photos (" in err
    assert "sfm-sparse registers the photos without them" in err
    rejected = result.stats["camera_estimator_rejected"]
    kept, tracks = (int(w) for w in rejected.split()[:3:2])
    assert kept < 0.5 * tracks and rejected.endswith("matched points reproject within 4.0 px")
    alone = registry.INITIALISERS["sfm-sparse"](images, tmp_path / "b", InitConfig(), 0)
    assert result.model.registered.all()
    np.testing.assert_array_equal(result.model.T_cam_world, alone.model.T_cam_world)
    # known cameras that do not fit either: one sentence naming both failures
    given = (scene.cameras.K.double().numpy(),
             _turned(scene.cameras, 30.0).T_cam_world.double().numpy())
    with pytest.raises(UserError, match=r"^Oracle's cameras do not fit the photos \(\d+ of "
                                        r"\d+ .*\) and without them the given cameras do not "
                                        r"fit the photos"):
        registry.INITIALISERS["coarse"](images, tmp_path / "c", InitConfig(), 0, cameras=given)

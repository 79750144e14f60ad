"""Camera paths: interpolate hits the input poses exactly; orbit passes through a ring of
cameras; spiral stays around the average camera and looks at the focus."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from viewer.framing import SceneSphere, framing_distance, scene_sphere
from viewer.trajectories import (
    DEFAULT_FOV_Y,
    interpolate,
    keyframe_indices,
    orbit,
    spiral,
)


def _arrays(cams):
    return (cams.T_world_cam.double().numpy(), cams.K.double().numpy(),
            cams.width.numpy(), cams.height.numpy())


def _assert_rotations(T: np.ndarray) -> None:
    R = T[:, :3, :3]
    np.testing.assert_allclose(np.einsum("fji,fjk->fik", R, R), np.broadcast_to(np.eye(3),
                               R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)


@pytest.mark.parametrize("frames", [5, 17, 60])
def test_interpolate_hits_every_input_pose_exactly_at_its_keyframe(frames, helpers):
    cams = helpers.ring_cameras(5, centre=(0.3, -1.0, 2.0), arc_deg=120.0, width=80, height_px=60)
    # give each camera its own intrinsics and a roll, so nothing matches by accident
    K = cams.K.clone()
    K[:, 0, 0] *= torch.linspace(0.8, 1.3, 5, dtype=K.dtype)
    K[:, 1, 1] *= torch.linspace(0.8, 1.3, 5, dtype=K.dtype)
    K[:, 0, 2] += torch.linspace(-3, 3, 5, dtype=K.dtype)
    cams.K = K
    T, K, w, h = _arrays(cams)
    path = interpolate(frames, T, K, w, h)
    assert len(path) == frames
    keys = keyframe_indices(5, frames)
    assert keys[0] == 0 and keys[-1] == frames - 1 and np.all(np.diff(keys) >= 1)
    np.testing.assert_array_equal(path.keyframes, keys)
    np.testing.assert_allclose(path.T_world_cam[keys], T, atol=1e-12)
    np.testing.assert_allclose(path.Ks(80, 60)[keys], K, atol=1e-9)
    _assert_rotations(path.T_world_cam)


def test_interpolate_moves_smoothly_between_keyframes(helpers):
    cams = helpers.ring_cameras(4, arc_deg=90.0, radius=2.0)
    T, K, w, h = _arrays(cams)
    path = interpolate(61, T, K, w, h)
    steps = np.linalg.norm(np.diff(path.T_world_cam[:, :3, 3], axis=0), axis=1)
    # 90 degrees of a radius-2 circle in 60 steps: about 0.052 each; Catmull-Rom through
    # points on a circle stays close to uniform speed
    arc = math.pi  # 90 degrees on radius 2
    assert steps.max() < 1.5 * arc / 60 and steps.min() > 0.5 * arc / 60
    # in-between centres follow the circle much better than straight chords would: a
    # 30-degree chord on radius 2 sags 2 (1 - cos 15deg) = 0.068 at its middle
    centres = path.T_world_cam[:, :3, 3] - np.array([0.0, -0.5, 0.0])
    radial = np.linalg.norm(centres[:, [0, 2]], axis=1)
    sagitta = 2.0 * (1.0 - math.cos(math.radians(15.0)))
    assert radial.min() > 2.0 - 0.7 * sagitta and radial.max() < 2.0 + 0.01


def test_interpolate_needs_two_cameras_and_enough_frames(helpers):
    cams = helpers.ring_cameras(4)
    T, K, w, h = _arrays(cams)
    with pytest.raises(UserError, match="frames"):
        interpolate(3, T, K, w, h)
    with pytest.raises(UserError, match="two cameras"):
        interpolate(10, T[:1], K[:1], w[:1], h[:1])


def test_orbit_passes_through_a_ring_of_cameras(helpers):
    centre = np.array([2.0, 0.5, -1.0])
    cams = helpers.ring_cameras(8, centre=centre, radius=3.0, height=1.0, arc_deg=360.0)
    T, K, w, h = _arrays(cams)
    sphere = SceneSphere(centre, 1.0)
    up = np.array([0.0, -1.0, 0.0])
    path = orbit(sphere, up, 32, T, K, w, h)
    _assert_rotations(path.T_world_cam)
    # every 4th frame is one of the 8 cameras (same azimuth spacing, same start)
    np.testing.assert_allclose(path.T_world_cam[::4], T, atol=1e-9)
    # constant distance, always looking at the centre
    eye = path.T_world_cam[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(eye - centre, axis=1), math.sqrt(10), rtol=1e-9)
    forward = path.T_world_cam[:, :3, 2]
    to_centre = (centre - eye) / np.linalg.norm(centre - eye, axis=1, keepdims=True)
    np.testing.assert_allclose(forward, to_centre, atol=1e-12)
    np.testing.assert_allclose(path.Ks(64, 48)[::4], K, atol=1e-9)


def test_orbit_without_cameras_frames_the_scene():
    sphere = SceneSphere(np.array([10.0, 0.0, 0.0]), 2.0)
    up = np.array([0.0, 0.0, 1.0])
    path = orbit(sphere, up, 12)
    d = np.linalg.norm(path.T_world_cam[:, :3, 3] - sphere.centre, axis=1)
    np.testing.assert_allclose(d, framing_distance(2.0, DEFAULT_FOV_Y), rtol=1e-9)
    elevation = np.degrees(np.arcsin((path.T_world_cam[:, :3, 3] - sphere.centre) @ up / d))
    np.testing.assert_allclose(elevation, 25.0, atol=1e-9)
    fy = path.Ks(100, 100)[:, 1, 1]
    np.testing.assert_allclose(2 * np.arctan(50 / fy), DEFAULT_FOV_Y)


def test_spiral_circles_the_average_camera_and_looks_at_the_focus(helpers):
    cams = helpers.ring_cameras(5, radius=4.0, arc_deg=40.0, start_deg=-20.0)
    T, K, w, h = _arrays(cams)
    # the content's sphere (the focus is on the content, not between it and the cameras)
    sphere = scene_sphere(np.array([[0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]]))
    frames = 40
    path = spiral(sphere, frames, T, K, w, h)
    _assert_rotations(path.T_world_cam)
    eye = path.T_world_cam[:, :3, 3]
    # two full turns: the mean of the path is the average camera centre
    np.testing.assert_allclose(eye.mean(0), T[:, :3, 3].mean(0), atol=1e-9)
    # every frame looks at one common focus point: all optical axes meet there
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for e, d in zip(eye, path.T_world_cam[:, :3, 2], strict=True):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ e
    meet = np.linalg.solve(A, b)
    residual = [np.linalg.norm((np.eye(3) - np.outer(d, d)) @ (meet - e))
                for e, d in zip(eye, path.T_world_cam[:, :3, 2], strict=True)]
    assert max(residual) < 1e-9
    # the content centre's depth along the average camera: the cameras look at the origin
    np.testing.assert_allclose(meet, sphere.centre, atol=1e-9)
    with pytest.raises(UserError, match="needs cameras"):
        spiral(sphere, 10, None, None, None, None)


# ------------------------------------------------- auto: the path from the cameras' spread

def _procedural(kind: str, views: int):
    from reconstruction.procedural import SceneConfig
    from reconstruction.procedural.scene import make_cameras

    cams = make_cameras(SceneConfig(kind=kind, num_views=views))
    T = cams.T_world_cam.double().numpy()
    # the content: the objects around (0, 0.5, 0.4) (forward) / (0, 0, 0.35) (orbit, arc)
    centre = np.array([0.0, 0.5, 0.4]) if kind == "forward" else np.array([0.0, 0.0, 0.35])
    return T, cams, SceneSphere(centre=centre, radius=1.5)


def _azimuths_deg(sphere, up, T, reference) -> np.ndarray:
    """Azimuths (degrees) of the centres of ``T`` around ``up`` through the centre, zero at
    the first camera of ``reference``."""
    from viewer.trajectories import _ring

    offsets = T[:, :3, 3] - sphere.centre
    horizontal = offsets - (offsets @ up)[:, None] * up
    _, e1, _, _, _ = _ring(sphere, up, reference)
    e2 = np.cross(up, e1)
    return np.degrees(np.arctan2(horizontal @ e2, horizontal @ e1))


def test_auto_keeps_a_forward_capture_in_front():
    """Before: the default 360-degree orbit, mostly behind a forward-facing capture (empty
    frames). Now the views stay within the cameras' spread plus a margin: centres within
    their azimuth range + 5 degrees, axes within their axis spread + 10 degrees."""
    from viewer.framing import estimate_up
    from viewer.trajectories import axis_spread_deg, choose_trajectory, make_trajectory

    T, cams, sphere = _procedural("forward", 9)
    up = estimate_up(T)
    np.testing.assert_allclose(up, [0.0, 0.0, 1.0], atol=1e-6)
    assert choose_trajectory(sphere, up, T) == "spiral"
    path = make_trajectory("auto", 60, sphere, up, T, *_arrays(cams)[1:])
    cams_az = _azimuths_deg(sphere, up, T, T)
    path_az = _azimuths_deg(sphere, up, path.T_world_cam, T)
    assert cams_az.min() - 5.0 <= path_az.min() and path_az.max() <= cams_az.max() + 5.0
    mean_axis = T[:, :3, 2].sum(0) / np.linalg.norm(T[:, :3, 2].sum(0))
    path_angles = np.degrees(np.arccos(np.clip(path.T_world_cam[:, :3, 2] @ mean_axis, -1, 1)))
    assert path_angles.max() <= axis_spread_deg(T) + 10.0, (path_angles.max(),
                                                            axis_spread_deg(T))
    old = orbit(sphere, up, 60, T, *_arrays(cams)[1:])  # what the default was
    assert np.ptp(_azimuths_deg(sphere, up, old.T_world_cam, T)) > 300.0
    _assert_rotations(path.T_world_cam)


def test_auto_swings_an_arc_over_a_converging_partial_capture():
    from viewer.framing import estimate_up
    from viewer.trajectories import azimuth_spread, choose_trajectory, make_trajectory

    T, cams, sphere = _procedural("orbit", 5)
    up = estimate_up(T)
    T = T[[0, 1, 2]]  # 3 of the 5 cameras: 75 degrees of arc, converging on the objects
    assert choose_trajectory(sphere, up, T) == "arc"
    _, spread = azimuth_spread(sphere, up, T)
    assert math.degrees(spread) == pytest.approx(75.0, abs=1.5)
    path = make_trajectory("auto", 40, sphere, up, T, *_arrays(cams[[0, 1, 2]])[1:])
    cams_az = _azimuths_deg(sphere, up, T, T)
    path_az = _azimuths_deg(sphere, up, path.T_world_cam, T)
    margin = max(0.15 * math.degrees(spread), 5.0)
    assert path_az.min() == pytest.approx(cams_az.min() - margin, abs=0.5)
    assert path_az.max() == pytest.approx(cams_az.max() + margin, abs=0.5)
    # every frame looks at the centre from the cameras' distance
    to_centre = sphere.centre - path.T_world_cam[:, :3, 3]
    np.testing.assert_allclose(np.einsum("fi,fi->f", path.T_world_cam[:, :3, 2], to_centre),
                               np.linalg.norm(to_centre, axis=1), rtol=1e-9)
    _assert_rotations(path.T_world_cam)


def test_auto_keeps_the_orbit_for_an_orbit_capture():
    from viewer.framing import estimate_up
    from viewer.trajectories import choose_trajectory, make_trajectory

    T, cams, sphere = _procedural("orbit", 5)  # 150 degrees around the objects
    up = estimate_up(T)
    assert choose_trajectory(sphere, up, T) == "orbit"
    auto = make_trajectory("auto", 30, sphere, up, T, *_arrays(cams)[1:])
    np.testing.assert_allclose(auto.T_world_cam,
                               orbit(sphere, up, 30, T, *_arrays(cams)[1:]).T_world_cam)
    assert choose_trajectory(sphere, up, None) == "orbit"  # a bare PLY

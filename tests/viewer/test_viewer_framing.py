"""The initial view frames the whole scene, whatever its position and scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry.se3 import look_at
from geometry.so3 import random_rotation
from viewer.framing import (
    DEFAULT_UP,
    clip_planes,
    estimate_up,
    framing_distance,
    initial_view,
    robust_bounds,
    scene_sphere,
)


def _project(T_world_cam: np.ndarray, pts: np.ndarray, fov_y: float, size: int = 1000):
    """Pixel coordinates and depths of ``pts`` in a square ``size`` image of ``fov_y``."""
    R, t = T_world_cam[:3, :3], T_world_cam[:3, 3]
    pts_cam = (pts - t) @ R
    f = 0.5 * size / math.tan(fov_y / 2)
    uv = f * pts_cam[:, :2] / pts_cam[:, 2:3] + size / 2
    return uv, pts_cam[:, 2]


@pytest.mark.parametrize("up", [(0, 0, 1), (0, -1, 0), (0.3, 0.2, -0.9), (1, 0, 0)])
def test_look_at_is_a_rotation_facing_the_target_with_up_on_screen(up):
    eye, target = np.array([1.0, 2.0, 3.0]), np.array([-2.0, 0.5, 4.0])
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    T = look_at(eye, target, up)
    R = T[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    forward = (target - eye) / np.linalg.norm(target - eye)
    np.testing.assert_allclose(R[:, 2], forward, atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], eye)
    # the image's up (-y) is the world up made perpendicular to the view
    expected_up = up - (up @ forward) * forward
    np.testing.assert_allclose(-R[:, 1], expected_up / np.linalg.norm(expected_up), atol=1e-12)


def test_look_at_along_up_still_gives_a_rotation():
    T = look_at(np.zeros(3), np.array([0.0, 0.0, 5.0]), np.array([0.0, 0.0, 1.0]))
    R = T[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(R[:, 2], [0.0, 0.0, 1.0], atol=1e-12)


def test_estimate_up_recovers_the_up_of_level_cameras_in_a_rotated_world():
    rng = np.random.default_rng(0)
    R_world = random_rotation((1,), generator=torch.Generator().manual_seed(3),
                              dtype=torch.float64)[0].numpy()
    poses = []
    for _ in range(8):  # level cameras (y down = -world_up), random yaw, small tilt
        yaw = rng.uniform(0, 2 * np.pi)
        tilt = rng.normal(0, 0.05)
        Ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        Rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt),
                                                                     np.cos(tilt)]])
        T = np.eye(4)
        T[:3, :3] = R_world @ Ry @ Rx
        poses.append(T)
    up = estimate_up(np.stack(poses))
    true_up = R_world @ np.array([0.0, -1.0, 0.0])
    # pitch keeps every camera's x axis horizontal, so up is found exactly
    np.testing.assert_allclose(up, true_up, atol=1e-9)
    # a forward-facing row has parallel x axes, which leave up undetermined within a
    # plane: then it is the cameras' own -y (their common pitch cannot be told apart)
    row = np.stack([poses[0]] * 3)
    row[:, :3, 3] = np.arange(3)[:, None] * poses[0][:3, 0]
    np.testing.assert_allclose(estimate_up(row), -poses[0][:3, 1], atol=1e-9)
    np.testing.assert_allclose(estimate_up(None), DEFAULT_UP)


def test_robust_bounds_ignore_far_floaters():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1, 1, size=(5000, 3))
    pts[:10] = 1e4  # floaters: 0.2 % of the points
    lo, hi = robust_bounds(pts)
    assert np.all(lo > -1.01) and np.all(hi < 1.01)
    sphere = scene_sphere(pts)
    assert sphere.radius < 2.0


@pytest.mark.parametrize("centre,scale", [
    ((0.0, 0.0, 0.0), 1.0),
    ((1000.0, -2000.0, 50.0), 0.01),  # millimetre-sized object far from the origin
    ((-40.0, 7.0, 3.0), 250.0),  # a city block
    ((0.0, 1e5, 0.0), 3.0),
])
@pytest.mark.parametrize("with_cameras", [False, True])
def test_initial_view_frames_every_point_and_fills_the_view(centre, scale, with_cameras):
    rng = np.random.default_rng(2)
    centre = np.asarray(centre)
    pts = centre + scale * rng.normal(size=(2000, 3)) * np.array([1.0, 0.3, 0.6])
    cams = None
    up = np.array([0.0, 0.0, 1.0])
    if with_cameras:  # a forward-facing arc on one side, as phones take them
        angles = np.linspace(-0.5, 0.5, 5)
        cams = centre + 4 * scale * np.stack([np.cos(angles), np.sin(angles),
                                              0.2 * np.ones(5)], axis=1)
    sphere = scene_sphere(pts, cams)
    fov = math.radians(60)
    T = initial_view(sphere, up, fov, cams)
    lo, hi = robust_bounds(pts)
    inliers = pts[np.all((pts >= lo) & (pts <= hi), axis=1)]
    uv, depth = _project(T, inliers, fov)
    assert np.all(depth > 0)
    assert np.all((uv >= 0) & (uv <= 1000)), "a scene point falls outside the first view"
    # the scene sphere fills most of the view: its projected radius is 1/margin of the
    # half height, so the content spans a good part of the image, not a dot
    span = (uv.max(0) - uv.min(0)).max()
    assert span > 250
    # the look-at point is the scene centre, at the image centre
    uv_c, _ = _project(T, sphere.centre[None], fov)
    np.testing.assert_allclose(uv_c[0], [500, 500], atol=1e-6)
    # upright: world up projects upwards on screen
    uv_up, _ = _project(T, (sphere.centre + 0.01 * sphere.radius * up)[None], fov)
    assert uv_up[0, 1] < 500
    near, far = clip_planes(sphere, T[:3, 3])
    assert near < depth.min() and far > depth.max()
    if with_cameras:  # seen from the cameras' side
        side = (cams.mean(0) - sphere.centre) @ (T[:3, 3] - sphere.centre)
        assert side > 0


def test_framing_distance_fits_the_narrower_field_of_view():
    fov = math.radians(60)
    assert framing_distance(1.0, fov, aspect=1.0, margin=1.0) == pytest.approx(2.0)
    # a portrait view is narrower horizontally: it must back off further
    assert framing_distance(1.0, fov, aspect=0.5, margin=1.0) > 2.0
    assert framing_distance(1.0, fov, aspect=2.0, margin=1.0) == pytest.approx(2.0)

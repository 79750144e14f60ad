"""ShAPO's generated tabletop scenes and category shapes: geometry checked against the GT."""

from __future__ import annotations

import numpy as np
import pytest

from pose.object.shapo.data import SceneConfig, render_scene, sensor_depth
from pose.object.shapo.shapes import CATEGORIES, polygon_sdf, random_shape

CFG = SceneConfig(width=64, height=64)


def _backproject(scene, depth):
    H, W = depth.shape
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    K = scene.K
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    return np.stack([x, y, depth], -1)


def test_polygon_sdf_unit_square():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
    p = np.array([[0.5, 0.5], [2.0, 0.5], [2.0, 2.0], [0.5, 0.9]])
    np.testing.assert_allclose(polygon_sdf(p, square), [-0.5, 1.0, np.sqrt(2), -0.1])


@pytest.mark.parametrize("category", CATEGORIES)
def test_shape_box_is_tight_and_centred(category):
    rng = np.random.default_rng(3)
    shape = random_shape(category, rng)
    pts = (rng.random((60000, 3)) - 0.5) * shape.size * 1.1
    inside = pts[shape.sdf(pts) < 0]
    # nothing outside the box; the solid reaches each face to within 2 % of the size
    assert np.all(np.abs(inside) <= shape.size / 2 + 1e-9)
    np.testing.assert_allclose(inside.max(0), shape.size / 2, rtol=0.03, atol=1e-3)
    np.testing.assert_allclose(inside.min(0), -shape.size / 2, rtol=0.03, atol=1e-3)
    assert 0.03 < shape.diag < 0.6


def test_scene_is_deterministic_and_consistent_with_its_ground_truth():
    a, b = render_scene(5, CFG), render_scene(5, CFG)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert not np.array_equal(a.rgb, render_scene(6, CFG).rgb)
    assert a.rgb.shape == (64, 64, 3) and a.rgb.min() >= 0 and a.rgb.max() <= 1
    assert len(a.objects) >= 1
    assert set(np.unique(a.instance)) == set(range(len(a.objects) + 1))
    pts = _backproject(a, a.depth_clean)
    for i, obj in enumerate(a.objects, start=1):
        sel = a.instance == i
        assert sel.sum() == obj.pixels > 0
        assert a.semantic[sel][0] == CATEGORIES.index(obj.class_name) + 1
        T = obj.T_cam_obj
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
        p_obj = (pts[sel] - T[:3, 3]) @ T[:3, :3]
        # the depth's points lie on the object's surface and inside its box ...
        assert np.abs(obj.shape.sdf(p_obj)).max() < 2e-3
        assert np.all(np.abs(p_obj) <= obj.size / 2 + 2e-3)
        # ... and the NOCS map holds them in the normalised frame
        np.testing.assert_allclose((a.nocs[sel] - 0.5) * obj.shape.diag, p_obj, atol=2e-3)
        # standing upright on the table: object y is (minus) the world's z seen by the camera
        up_cam = a.T_world_cam[:3, :3].T @ np.array([0, 0, 1.0])
        np.testing.assert_allclose(T[:3, 1], up_cam, atol=1e-9)


def test_sensor_noise_follows_the_model():
    rng = np.random.default_rng(0)
    z = np.full((200, 200), 1.4, np.float32)
    out = sensor_depth(z, np.ones_like(z), rng)
    err = (out - z)[out > 0]
    sigma = 0.0012 + 0.0019 * 1.0  # at 1.4 m
    # sigma (plus 1 mm rounding: variance + 1/12 mm^2), unbiased
    assert abs(err.mean()) < 3e-4
    assert err.std() == pytest.approx(np.sqrt(sigma**2 + 1e-6 / 12), rel=0.05)
    np.testing.assert_allclose(np.round(out * 1000), out * 1000, atol=1e-3)
    # grazing angles return nothing
    assert (sensor_depth(z, np.full_like(z, 0.1), rng) == 0).all()

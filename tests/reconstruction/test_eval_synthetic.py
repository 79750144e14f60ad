"""The synthetic scene generator: analytic depth, the written dataset reads back through
geometry.io, and views agree with each other (poses, depth and view-independent colour)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reconstruction.eval.synthetic import (
    Primitive,
    Scene,
    SyntheticConfig,
    generate,
    look_at,
    render_view,
    shade,
)


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "orbit"
    config = SyntheticConfig(out=out, num_views=6, width=64, height=48, supersample=1,
                             arc_deg=60.0, seed=3)
    return generate(config)


def test_sphere_depth_is_analytic():
    # A unit-radius sphere 5 m in front of the camera, seen head-on: the centre pixel's ray
    # meets it at distance 4, and the silhouette has the sphere's angular radius asin(1/5).
    scene = Scene([Primitive("sphere", (0.0, 0.0, 1.5), (1.0, 1.0, 1.0))], (0.0, 0.0, 1.0))
    eye = np.array([0.0, -5.0, 1.5])
    T = look_at(eye, np.array([0.0, 0.0, 1.5]))
    f, size = 100.0, 101  # odd size: a pixel centre lies exactly on the optical axis
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
    rgb, depth, mask = render_view(scene, K, T, size, size, supersample=1)
    assert depth[50, 50] == pytest.approx(4.0, abs=1e-5)
    # Silhouette radius in pixels: f tan(asin(1/5)).
    radius_px = f * math.tan(math.asin(0.2))
    row = mask[50]
    width = row.sum()
    assert abs(width - 2 * radius_px) <= 2.0
    # Depth off-centre: the ray at angle a hits at distance 5 cos a - sqrt(1 - 25 sin^2 a),
    # z-depth = that times cos a.
    a = math.atan(10.0 / f)
    dist = 5 * math.cos(a) - math.sqrt(1 - 25 * math.sin(a) ** 2)
    assert depth[50, 60] == pytest.approx(dist * math.cos(a), abs=1e-5)
    assert (rgb >= 0).all() and (rgb <= 1).all()


def test_dataset_reads_back(small_scene):
    from reconstruction.eval.data import load_dataset

    dataset = load_dataset(small_scene.path)
    assert dataset.format == "transforms" and dataset.num_views == 6
    torch.testing.assert_close(dataset.cameras.T_world_cam, small_scene.cameras.T_world_cam,
                               atol=1e-9, rtol=0)
    torch.testing.assert_close(dataset.cameras.K, small_scene.cameras.K, atol=1e-9, rtol=0)
    assert dataset.has_masks
    mask = dataset.load_mask(0)
    assert mask.shape == (48, 64) and 0 < int(mask.sum()) < 48 * 64
    image = dataset.load_image(0)
    assert image.shape == (48, 64, 3)
    meta = small_scene.meta
    assert meta["scene_extent"] == pytest.approx(small_scene.scene.extent())
    # --max-size shrinks images and intrinsics together (64x48 -> 32x24: K halves).
    small = load_dataset(small_scene.path, max_size=32)
    assert small.load_image(0).shape == (24, 32, 3) and small.load_mask(0).shape == (24, 32)
    torch.testing.assert_close(small.cameras.K[:, :2], small_scene.cameras.K[:, :2] / 2,
                               atol=1e-9, rtol=0)


def test_views_agree_with_each_other(small_scene):
    """Lift view 0's pixels with its depth map and camera; from every other camera, the
    ray towards each lifted point must hit that point (where it is not hidden) and see the
    colour view 0 saved (Lambertian scene: only 8-bit rounding differs)."""
    from reconstruction.eval.data import load_dataset

    dataset = load_dataset(small_scene.path)
    cams = dataset.cameras
    depth = np.load(small_scene.path / "depth" / "000.npy")
    image = dataset.load_image(0).double().numpy()
    valid = depth > 0
    assert valid.mean() > 0.5
    uv = cams[0].pixel_centers()[torch.from_numpy(valid)]
    pts = cams[0].unproject(uv, torch.from_numpy(depth[valid]).double()).numpy()
    colours = image[valid]
    checked = 0
    for j in range(1, len(cams)):
        origin = cams.centers[j].numpy()
        offset = pts - origin
        dist = np.linalg.norm(offset, axis=1)
        colour_j, t_j, _ = shade(small_scene.scene, np.broadcast_to(origin, pts.shape),
                                 offset / dist[:, None])
        visible = np.abs(t_j - dist) < 1e-4 * dist
        assert visible.mean() > 0.3
        err = np.abs(colour_j[visible] - colours[visible])
        assert err.max() <= 0.5 / 255 + 1e-6
        checked += int(visible.sum())
        # The other view's depth map agrees: bilinear interpolation of INVERSE depth is
        # exact on planes (1/z is affine in pixels there), so the median is ~exact.
        uv_j, z_j = cams[j].project(torch.from_numpy(pts[visible]))
        depth_j = np.load(small_scene.path / "depth" / f"{j:03d}.npy").astype(np.float64)
        x, y = uv_j[:, 0].numpy() - 0.5, uv_j[:, 1].numpy() - 0.5
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        inside = (x0 >= 0) & (x0 < 63) & (y0 >= 0) & (y0 < 47)
        x, y, x0, y0 = x[inside], y[inside], x0[inside], y0[inside]
        corners = np.stack([depth_j[y0, x0], depth_j[y0, x0 + 1], depth_j[y0 + 1, x0],
                            depth_j[y0 + 1, x0 + 1]], -1)
        ok = (corners > 0).all(-1)
        fx, fy = (x - x0)[ok], (y - y0)[ok]
        inv = 1.0 / corners[ok]
        inv_interp = ((1 - fx) * (1 - fy) * inv[:, 0] + fx * (1 - fy) * inv[:, 1]
                      + (1 - fx) * fy * inv[:, 2] + fx * fy * inv[:, 3])
        want = z_j.numpy()[inside][ok]
        assert ok.sum() > 200
        assert np.median(np.abs(1.0 / inv_interp - want) / want) < 1e-5
    assert checked > 1000


def test_generation_is_deterministic(small_scene, tmp_path):
    config = SyntheticConfig(out=tmp_path / "again", num_views=6, width=64, height=48,
                             supersample=1, arc_deg=60.0, seed=3)
    again = generate(config)
    for name in ("images/002.png", "masks/002.png", "depth/002.npy"):
        assert (again.path / name).read_bytes() == (small_scene.path / name).read_bytes()

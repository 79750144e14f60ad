"""The procedural scene generator: analytic depth, the written dataset reads back through
geometry.io, views agree with each other (poses, depth and view-independent colour), and
the object ids / object coordinates agree with depth, cameras and the objects' frames."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from geometry.se3 import look_at
from reconstruction.procedural import (
    ObjectWorld,
    SceneConfig,
    Solid,
    generate,
    render,
    render_view,
    write_photos,
)

SMALL = SceneConfig(num_views=6, width=64, height=48, supersample=1, arc_deg=60.0, seed=3)


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    return generate(SMALL, tmp_path_factory.mktemp("procedural") / "orbit")


@pytest.fixture(scope="module")
def arc_scene():
    # The quad world at its default supersample (2): the geometry ray is off-centre.
    return render(SceneConfig(kind="arc", num_views=2, width=96, height=72, seed=1))


def test_sphere_depth_is_analytic():
    # A unit-radius sphere 5 m in front of the camera, seen head-on: the centre pixel's ray
    # meets it at distance 4, and the silhouette has the sphere's angular radius asin(1/5).
    world = ObjectWorld([Solid("sphere", (0.0, 0.0, 1.5), (1.0, 1.0, 1.0))], (0.0, 0.0, 1.0))
    eye = np.array([0.0, -5.0, 1.5])
    T = look_at(eye, np.array([0.0, 0.0, 1.5]))
    f, size = 100.0, 101  # odd size: a pixel centre lies exactly on the optical axis
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
    view = render_view(world, K, T, size, size, supersample=1)
    depth, mask = view.depth, view.mask
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
    assert (view.rgb >= 0).all() and (view.rgb <= 1).all()
    # The centre ray hits the sphere's point nearest the camera: its -y pole, whose object
    # coordinates (bounding box [-1, 1]^3 -> [0, 1]^3) are (0.5, 0, 0.5).
    assert view.object_ids[50, 50] == 1
    np.testing.assert_allclose(view.object_coords[50, 50], [0.5, 0.0, 0.5], atol=1e-6)
    assert np.isnan(view.object_coords[0, 0]).all() and view.object_ids[0, 0] == 0


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
    assert meta["scene_extent"] == pytest.approx(small_scene.world.extent())
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
        colour_j, t_j, _ = small_scene.world.shade(origin, offset / dist[:, None])
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
    again = generate(SMALL, tmp_path / "again")
    for name in ("images/002.png", "masks/002.png", "depth/002.npy", "object_ids/002.png",
                 "object_coords/002.npy"):
        assert (again.path / name).read_bytes() == (small_scene.path / name).read_bytes()


def test_written_maps_equal_the_in_memory_render(small_scene):
    """What generate writes (found through the transforms.json frame keys) is what render
    returns, and masks and id maps describe the same objects."""
    scene = render(SMALL)
    frames = json.loads((small_scene.path / "transforms.json").read_text())["frames"]
    for k, frame in enumerate(frames):
        image = np.asarray(Image.open(small_scene.path / frame["file_path"]))
        ids = np.asarray(Image.open(small_scene.path / frame["object_id_path"]))
        coords = np.load(small_scene.path / frame["object_coords_path"])
        depth = np.load(small_scene.path / frame["depth_file_path"])
        np.testing.assert_array_equal(image, scene.images[k])
        np.testing.assert_array_equal(ids, scene.object_ids[k])
        np.testing.assert_array_equal(coords, scene.object_coords[k])
        np.testing.assert_array_equal(depth, scene.depth[k])
        # One ray per pixel (supersample 1): the mask is exactly "an object is hit".
        np.testing.assert_array_equal(scene.masks[k], scene.object_ids[k] > 0)
        assert set(np.unique(ids)) <= set(range(len(scene.world.objects) + 1))
    assert len(small_scene.meta["objects"]) == len(scene.world.objects) == SMALL.num_objects


def _check_coords_against_depth(scene, view: int) -> int:
    """Unproject every object pixel's geometry ray with the depth map and camera, map the
    point into its object's frame and compare with the stored object coordinates; the
    point must also lie on its object's surface. Returns the number of pixels checked."""
    s = scene.config.supersample
    ids, coords, depth = scene.object_ids[view], scene.object_coords[view], scene.depth[view]
    on = ids > 0
    assert on.mean() > 0.02
    assert np.isnan(coords[~on]).all() and np.isfinite(coords[on]).all()
    # The geometry ray of pixel (i, j) passes through (j + (s//2 + 0.5) / s, i + ...).
    rows, cols = np.nonzero(on)
    sub = (s // 2 + 0.5) / s
    uv = torch.from_numpy(np.stack([cols + sub, rows + sub], -1).astype(np.float64))
    pts_world = scene.cameras[view].unproject(uv, torch.from_numpy(
        depth[on].astype(np.float64))).numpy()
    for k, obj in enumerate(scene.world.objects, start=1):
        sel = ids[on] == k
        if not sel.any():
            continue
        T_obj_world = np.linalg.inv(obj.T_world_obj)
        pts_obj = pts_world[sel] @ T_obj_world[:3, :3].T + T_obj_world[:3, 3]
        # float32 depth (relative 6e-8, ~5 m) and float32 coordinates: ~1e-6 of the box.
        np.testing.assert_allclose(coords[on][sel], pts_obj / obj.size + 0.5, atol=2e-5)
        c = coords[on][sel].astype(np.float64)
        if obj.kind == "box":
            # On a face: one coordinate is 0 or 1, the others within [0, 1].
            np.testing.assert_allclose(np.abs(2 * c - 1).max(-1), 1.0, atol=1e-4)
        else:
            # On the sphere: radius 0.5 about the centre of the unit cube.
            np.testing.assert_allclose(np.linalg.norm(c - 0.5, axis=-1), 0.5, atol=1e-4)
    return int(on.sum())


def test_object_coords_agree_with_depth_and_cameras(small_scene, arc_scene):
    orbit = render(SMALL)
    assert sum(_check_coords_against_depth(orbit, v) for v in range(3)) > 500
    assert sum(_check_coords_against_depth(arc_scene, v) for v in range(2)) > 500


def _pixels_near(scene, view: int, pt_world: np.ndarray, object_id: int, radius: float):
    """Object-coordinate values of ``object_id``'s pixels within ``radius`` px of the image
    of ``pt_world``, nearest first."""
    cam = scene.cameras[view]
    uv, _ = cam.project(torch.from_numpy(pt_world[None]))
    uv = uv.reshape(2).numpy()
    rows, cols = np.nonzero(scene.object_ids[view] == object_id)
    dist = np.hypot(cols + 0.5 - uv[0], rows + 0.5 - uv[1])
    order = np.argsort(dist)
    order = order[dist[order] < radius]
    return scene.object_coords[view][rows[order], cols[order]]


def test_box_corner_pixels_have_the_corner_coordinates(arc_scene):
    # Quad world box 1 spans x [-0.9, -0.25], y [-0.35, 0.25], z [0, 0.55]; the arc cameras
    # look from -y, so its top-front-left and top-front-right corners are in view: in the
    # object frame they are the corners (0, 0, 1) and (1, 0, 1) of the unit cube.
    f = float(arc_scene.cameras.K[0, 0, 0])  # ~92 px: 1 px is ~3.5 cm at 3.2 m, 5 % of the box
    assert 80 < f < 100
    for corner, want in (((-0.9, -0.35, 0.55), (0.0, 0.0, 1.0)),
                         ((-0.25, -0.35, 0.55), (1.0, 0.0, 1.0))):
        for view in range(2):
            near = _pixels_near(arc_scene, view, np.array(corner), 1, radius=1.5)
            assert len(near) >= 1
            np.testing.assert_allclose(near[0], want, atol=0.12)


def test_yawed_box_corner_and_sphere_pole():
    """A yawed box's +x+y+z corner maps to (1, 1, 1), a sphere's top to (0.5, 0.5, 1)."""
    box = Solid("box", (0.0, 0.0, 0.4), (0.5, 0.3, 0.4), yaw=0.6)
    ball = Solid("sphere", (1.6, -0.4, 0.35), (0.35, 0.35, 0.35))
    world = ObjectWorld([box, ball], (0.0, 0.0, 1.0))
    R = box.rotation()
    corner = np.asarray(box.center) + R @ np.asarray(box.half)
    pole = np.array([1.6, -0.4, 0.7])
    # A camera on the box's diagonal beyond the corner, high enough to see the ball's top.
    eye = np.asarray(box.center) + R @ np.array([3.0, 1.8, 2.4])
    T_world_cam = look_at(eye, np.array([0.8, -0.2, 0.4]))
    width, height, f = 160, 120, 140.0
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    view = render_view(world, K, T_world_cam, width, height, supersample=1)

    def pixel_of(pt):
        cam = T_world_cam[:3, :3].T @ (pt - T_world_cam[:3, 3])
        return K[0, 0] * cam[0] / cam[2] + K[0, 2], K[1, 1] * cam[1] / cam[2] + K[1, 2]

    for pt, object_id, want in ((corner, 1, (1.0, 1.0, 1.0)), (pole, 2, (0.5, 0.5, 1.0))):
        u, v = pixel_of(pt)
        assert 2 < u < width - 2 and 2 < v < height - 2
        rows, cols = np.nonzero(view.object_ids == object_id)
        dist = np.hypot(cols + 0.5 - u, rows + 0.5 - v)
        nearest = np.argmin(dist)
        assert dist[nearest] < 1.5
        # 1.5 px at ~4 m with f = 140: ~4 cm, under 10 % of either object.
        np.testing.assert_allclose(view.object_coords[rows[nearest], cols[nearest]], want,
                                   atol=0.1)


# ------------------------------------------------------------------ textureless objects

# Checksums of scenes rendered before SceneConfig.textureless existed (the option off must
# leave them bit-identical): image sum, position-weighted image sum, depth sum, id sum.
# A libm or OpenCV build elsewhere may round a few anti-aliased edge pixels differently
# (see test_sample), hence the small tolerances; a changed texture moves these by 10^4+.
_REFERENCE = (
    (SceneConfig(kind="arc", num_views=2, width=64, height=48, seed=1),
     2505455, 312063873, 21808.042013645172, 1645),
    (SceneConfig(kind="orbit", num_views=2, width=64, height=48, seed=3),
     1150628, 143389683, 15597.957193851471, 2516),
    (SceneConfig(kind="forward", num_views=2, width=64, height=48, seed=5, supersample=2),
     1356132, 168898050, 22428.970816612244, 3560),
)


@pytest.mark.parametrize("reference", _REFERENCE, ids=lambda r: r[0].kind)
def test_scenes_without_textureless_objects_are_unchanged(reference):
    config, image_sum, weighted_sum, depth_sum, id_sum = reference
    scene = render(config)
    img = scene.images.astype(np.int64)
    weights = np.arange(img.size).reshape(img.shape) % 251
    assert abs(int(img.sum()) - image_sum) <= 60
    assert abs(int((img * weights).sum()) - weighted_sum) <= 60 * 251
    assert float(scene.depth.astype(np.float64).sum()) == pytest.approx(depth_sum, rel=1e-6)
    assert int(scene.object_ids.sum()) == id_sum
    assert not any(obj.textureless for obj in scene.world.objects)


def test_textureless_share_picks_the_largest_objects():
    from reconstruction.procedural import textureless_objects

    sizes = [np.array(s, float) for s in ((1, 1, 1), (2, 1, 1), (1, 1, 0.5), (2, 1, 1))]
    assert textureless_objects(sizes, 0.0) == []
    assert textureless_objects(sizes, 0.01) == [1]  # at least one; ties: the first
    assert textureless_objects(sizes, 0.5) == [1, 3]
    assert textureless_objects(sizes, 0.75) == [0, 1, 3]
    assert textureless_objects(sizes, 1.0) == [0, 1, 2, 3]


def test_textureless_quad_boxes_are_one_colour_per_face():
    """Arc scene, every box textureless: each box pixel away from the face edges has
    exactly its face's colour (uniform colour x flat shading, computed here from the
    face normal and the light), while the same pixels of the textured scene do not; the
    floor and wall are the same pixels as without the option."""
    from geometry.errors import UserError
    from reconstruction.procedural import QuadWorld

    base = SceneConfig(kind="arc", num_views=2, width=96, height=72, seed=1, supersample=1)
    plain = render(replace(base, textureless=1.0))
    textured = render(base)
    assert all(obj.textureless for obj in plain.world.objects)
    light = np.array(QuadWorld.LIGHT) / np.linalg.norm(QuadWorld.LIGHT)
    for k in range(base.num_views):
        ids = plain.object_ids[k]
        np.testing.assert_array_equal(ids, textured.object_ids[k])  # same geometry
        for obj in (1, 2, 3):
            faces = [q for q in plain.world.quads if q.object_id == obj]
            assert all(q.uniform is not None for q in faces)
            colours = np.array([np.asarray(q.uniform) * (0.55 + 0.45 * abs(q.normal @ light))
                                for q in faces])
            colours = (colours * 255 + 0.5).astype(np.int64)  # [F, 3] uint8 values
            on = ids == obj
            assert on.sum() > 100

            def share_on_a_face_colour(image, on=on, colours=colours):
                pixels = image[on].astype(np.int64)
                gap = np.abs(pixels[:, None, :] - colours[None]).max(-1).min(-1)
                return float((gap == 0).mean())

            assert share_on_a_face_colour(plain.images[k]) == 1.0  # supersample 1: no edges
            assert share_on_a_face_colour(textured.images[k]) < 0.05
        background = ids == 0
        np.testing.assert_array_equal(plain.images[k][background],
                                      textured.images[k][background])
    with pytest.raises(UserError, match="textureless"):
        render(replace(base, textureless=1.5))


def test_textureless_object_world_keeps_the_layout_and_only_the_light_varies():
    """Orbit scene with 40 % textureless objects: the two largest objects lose their
    texture, nothing moves, and their pixels are their tint times one grey shading value
    (the channel ratios agree), unlike a textured object's."""
    base = SceneConfig(kind="orbit", num_views=1, width=96, height=72, seed=4, supersample=1)
    plain = render(replace(base, textureless=0.4))
    textured = render(base)
    solids = plain.world.solids
    assert [s.center for s in solids] == [s.center for s in textured.world.solids]
    volumes = [float(np.prod(s.half)) for s in solids]
    largest = sorted(np.argsort(volumes)[::-1][:2].tolist())
    assert [k for k, s in enumerate(solids) if s.uniform] == largest
    assert [obj.textureless for obj in plain.world.objects] == [s.uniform for s in solids]
    np.testing.assert_array_equal(plain.object_ids, textured.object_ids)

    def channel_spread(scene, k):
        """Per pixel of object k: spread over the channels of colour / tint (one value
        for a uniform albedo under white light, up to 8-bit rounding)."""
        on = scene.object_ids[0] == k + 1
        ratio = scene.images[0][on].astype(np.float64) / 255 / np.asarray(solids[k].tint)
        bright = ratio.max(-1) > 0.3  # 8-bit rounding dominates in deep shadow
        return np.ptp(ratio[bright], -1), int(on.sum())

    for k in range(len(solids)):
        spread, count = channel_spread(plain if solids[k].uniform else textured, k)
        if count < 50:
            continue
        if solids[k].uniform:
            assert spread.max() < 1.5 / 255 / 0.35  # rounding of the smallest tint (0.35)
        else:
            assert np.median(spread) > 0.1


def test_textureless_dataset_writes_masks_recon_eval_reads(tmp_path, small_scene):
    from reconstruction.eval.data import load_dataset

    config = SceneConfig(kind="forward", num_views=3, width=48, height=36, supersample=1,
                         seed=2, textureless=0.4)
    written = generate(config, tmp_path / "plain")
    meta = json.loads((written.path / "transforms.json").read_text())["sparseview_synthetic"]
    flags = [obj["textureless"] for obj in meta["objects"]]
    assert sum(flags) == 2 and meta["config"]["textureless"] == 0.4
    dataset = load_dataset(written.path, masks=written.path / "textureless_masks")
    assert dataset.has_masks
    for k in range(3):
        ids = np.asarray(Image.open(written.path / "object_ids" / f"{k:03d}.png"))
        want = np.isin(ids, [i + 1 for i, flag in enumerate(flags) if flag])
        assert want.any()
        np.testing.assert_array_equal(dataset.load_mask(k).numpy(), want)
    # Without textureless objects there is no such folder (the layout is as before).
    assert not (small_scene.path / "textureless_masks").exists()


def _cloud_coverage(points: np.ndarray, scene, view: int, radius: int = 2,
                    tolerance: float = 0.03) -> np.ndarray:
    """``[H, W]`` bool: pixels within ``radius`` px of a point of the cloud that lies on
    the surface there (its depth within ``tolerance`` of the true depth)."""
    from scipy.ndimage import binary_dilation

    cam = scene.cameras[view]
    uv, z = cam.project(torch.from_numpy(points))
    uv, z = uv.numpy(), z.numpy()
    h, w = scene.depth[view].shape
    col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    col, row, z = col[inside], row[inside], z[inside]
    truth = scene.depth[view][row, col]
    on_surface = np.abs(z - truth) < tolerance * truth
    hit = np.zeros((h, w), bool)
    hit[row[on_surface], col[on_surface]] = True
    return binary_dilation(hit, iterations=radius)


def test_stereo_finds_few_points_on_textureless_boxes(tmp_path):
    """The failure the option is for: on an arc scene whose boxes are textureless (close
    cameras: the boxes fill ~30 % of each photo), the SfM initialiser's measured cloud
    (sparse points and fused block stereo, without its nearest-depth guesses or any
    coverage fill) leaves most of the boxes uncovered; with textured boxes it covers them."""
    from scipy.ndimage import binary_erosion

    from reconstruction.images import load_images
    from reconstruction.init.config import InitConfig
    from reconstruction.init.registry import INITIALISERS

    config = InitConfig()
    config.stereo.fill_stride = 0  # no guesses: only what matching and stereo measured
    if hasattr(config, "fill_coverage"):
        config.fill_coverage = False
    shares = {}
    for textureless in (1.0, 0.0):
        scene = render(SceneConfig(kind="arc", num_views=3, width=192, height=144, seed=1,
                                   radius=2.2, textureless=textureless))
        folder = tmp_path / f"t{textureless}"
        write_photos(scene, folder)
        T_cam_world = np.linalg.inv(scene.cameras.T_world_cam.numpy())
        result = INITIALISERS["sfm"](load_images(folder), tmp_path / f"w{textureless}", config,
                                     0, cameras=(scene.cameras.K.numpy(), T_cam_world))
        covered = {"boxes": [], "interior": [], "background": []}
        for k in range(3):
            cov = _cloud_coverage(result.points_world, scene, k)
            boxes = scene.object_ids[k] > 0
            assert boxes.mean() > 0.2
            covered["boxes"].append(cov[boxes].mean())
            covered["interior"].append(cov[binary_erosion(boxes, iterations=4)].mean())
            covered["background"].append(cov[(scene.object_ids[k] == 0)
                                             & (scene.depth[k] > 0)].mean())
        shares[textureless] = {key: float(np.mean(v)) for key, v in covered.items()}
    # Measured: textureless boxes 29 % covered (17 % away from their edges: the points sit
    # on the silhouettes and on the edges between differently lit faces), textured boxes
    # 84 % (83 %); the textured floor and wall 65 % in both. One of the first three
    # clean-clone CI runs of a stop gave 48 % for the floor and wall of the textureless
    # scene (cause not found: 13 local runs, also under load and with 1 or 2 threads, all
    # gave 65.1 %), so that sanity check asks for 40 %.
    plain, textured = shares[1.0], shares[0.0]
    assert plain["boxes"] < 0.45 and plain["interior"] < 0.3, plain
    assert textured["boxes"] > 0.7 and textured["interior"] > 0.6, textured
    assert plain["background"] > 0.4 and textured["background"] > 0.4, (plain, textured)

"""Object-centric sequences: deterministic by seed, masks/depth/NOCS consistent with the
cameras and the object frame, symmetric categories invariant under rotation about their
axis (and asymmetric ones not), cameras on the configured orbit, worker processes and the
disk cache give the same sequences."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from geometry.se3 import invert_T, transform_points
from reconstruction.procedural.objects import (
    CATEGORIES,
    ObjectSequenceConfig,
    make_object,
    object_sequence,
    object_sequences,
    read_object_dataset,
    render_object_views,
    write_object_dataset,
)

SMALL = ObjectSequenceConfig(image_size=24, views=3, supersample=1)


def _nocs_from_depth(seq) -> tuple[torch.Tensor, torch.Tensor]:
    """NOCS recomputed from depth, cameras, T_world_obj and nocs_scale; and the stored one,
    both on the mask pixels ``[N, 3]``."""
    cams = seq.cameras
    uv = cams[0].pixel_centers().reshape(-1, 2).double()
    out, ref = [], []
    for v in range(seq.num_views):
        on = seq.masks[v].reshape(-1)
        pts = cams[v].unproject(uv[on], seq.depth[v].reshape(-1)[on].double())
        p_obj = transform_points(invert_T(seq.T_world_obj), pts)
        out.append(p_obj / seq.nocs_scale + 0.5)
        ref.append(seq.nocs[v].reshape(-1, 3)[on].double())
    return torch.cat(out), torch.cat(ref)


def test_categories_tags():
    assert {c.symmetry for c in CATEGORIES.values()} == {"axis", "near", "none"}
    assert sum(c.symmetry == "axis" for c in CATEGORIES.values()) >= 3
    for name, cat in CATEGORIES.items():
        assert cat.name == name


def test_deterministic_by_seed():
    a, b, c = object_sequence(5, SMALL), object_sequence(5, SMALL), object_sequence(6, SMALL)
    for name in ("images", "masks", "depth", "nocs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.cameras.T_world_cam, b.cameras.T_world_cam)
    assert a.category == b.category and a.nocs_scale == b.nocs_scale
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.cameras.T_world_cam, c.cameras.T_world_cam)


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_nocs_depth_masks_consistent(category):
    config = replace(SMALL, categories=(category,), image_size=32)
    seq = object_sequence(11, config)
    assert seq.category == category and seq.symmetry == CATEGORIES[category].symmetry
    assert seq.images.dtype == torch.float32 and seq.images.shape == (3, 32, 32, 3)
    assert seq.masks.dtype == torch.bool and seq.depth.dtype == torch.float32
    assert torch.equal(seq.masks, seq.depth > 0)
    assert seq.masks.sum() > 0.03 * seq.masks.numel()  # the object is in view
    assert torch.all(seq.nocs[~seq.masks] == 0)
    assert seq.nocs.min() >= 0 and seq.nocs.max() <= 1
    assert float(seq.images.min()) >= 0 and float(seq.images.max()) <= 1
    # 8-bit levels
    assert torch.equal(torch.round(seq.images * 255) / 255, seq.images)
    recomputed, stored = _nocs_from_depth(seq)
    assert (recomputed - stored).abs().max() < 1e-4
    # nocs_scale is the bounding box's diagonal; the box centred in the unit cube
    assert math.isclose(seq.nocs_scale, float(seq.size.norm()), rel_tol=1e-12)
    centre = torch.tensor([0.5, 0.5, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(seq.T_world_nocs @ centre, seq.T_world_obj[:, 3])
    # standing on the ground
    assert math.isclose(float(seq.T_world_obj[2, 3]), 0.5 * float(seq.size[2]), rel_tol=1e-12)


def test_object_bounding_box_is_tight():
    # Points on the surface reach every face of the bounding box: NOCS extremes hit
    # 0.5 -+ size / (2 diag) on each axis, seen over a dense orbit from above and below.
    for category in ("bottle", "mug", "car"):
        model = make_object(category, np.random.default_rng(3))
        half = model.size / (2 * model.nocs_scale)
        rng = np.random.default_rng(0)
        dirs = rng.normal(size=(200_000, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        origins = -dirs * 3 * model.radius + rng.uniform(-1, 1, (len(dirs), 3)) * model.radius
        t, _, _ = model.intersect(origins, dirs)
        hit = origins[np.isfinite(t)] + t[np.isfinite(t), None] * dirs[np.isfinite(t)]
        nocs = hit / model.nocs_scale
        np.testing.assert_allclose(nocs.max(0), half, atol=0.01, err_msg=category)
        np.testing.assert_allclose(nocs.min(0), -half, atol=0.01, err_msg=category)


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    return T


def _render_rotated(category: str, angle: float):
    from geometry.se3 import look_at

    model = make_object(category, np.random.default_rng(7))
    T_world_obj = np.eye(4)
    T_world_obj[2, 3] = 0.5 * model.size[2]
    size = 40
    f = 0.5 * size / math.tan(math.radians(25))
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
    centre = T_world_obj[:3, 3]
    d = 1.2 * model.radius / math.sin(math.radians(25))
    poses = np.stack([look_at(centre + d * np.array([math.cos(a), math.sin(a), 0.5]), centre)
                      for a in (0.3, 2.0)])
    a = render_object_views(model, T_world_obj, K, poses, size, 1)
    b = render_object_views(model, T_world_obj @ _rot_z(angle), K, poses, size, 1)
    return a, b


@pytest.mark.parametrize("category", [c for c, v in CATEGORIES.items() if v.symmetry == "axis"])
def test_axis_symmetric_invariant_under_rotation(category):
    angle = 1.1
    a, b = _render_rotated(category, angle)
    assert a["masks"].sum() > 100
    assert np.mean(a["masks"] != b["masks"]) < 0.003
    both = a["masks"] & b["masks"]
    # Same colour and depth, NOCS rotated about the object's axis by -angle.
    assert np.abs(a["images"][both] - b["images"][both]).max() < 0.02
    assert np.abs(a["depth"][both] - b["depth"][both]).max() < 1e-6
    R = _rot_z(-angle)[:3, :3]
    rotated = (a["nocs"][both] - 0.5) @ R.T + 0.5
    assert np.abs(rotated - b["nocs"][both]).max() < 1e-5
    # The whole image too (ground and shadow included).
    assert np.mean(np.abs(a["images"] - b["images"]) > 0.02) < 0.003


@pytest.mark.parametrize("category", ["car", "chair", "toy", "mug"])
def test_asymmetric_changes_under_rotation(category):
    a, b = _render_rotated(category, 1.1)
    assert np.mean(a["masks"] != b["masks"]) > 0.005


def test_cameras_on_the_orbit():
    config = ObjectSequenceConfig(image_size=16, views=8, supersample=1,
                                  elevation_range_deg=(20.0, 30.0), elevation_jitter_deg=2.0,
                                  roll_jitter_deg=0.0, target_jitter=0.0)
    seq = object_sequence(2, config)
    cams = seq.cameras
    centre = seq.T_world_obj[:3, 3]
    uv, z = cams.project(centre[None].expand(8, 1, 3))
    assert torch.allclose(uv[:, 0], torch.full((8, 2), 8.0, dtype=torch.float64), atol=1e-6)
    offset = cams.centers - centre
    elevation = torch.rad2deg(torch.atan2(offset[:, 2], offset[:, :2].norm(dim=-1)))
    assert torch.all((elevation >= 18 - 1e-9) & (elevation <= 32 + 1e-9))
    azimuth = torch.atan2(offset[:, 1], offset[:, 0])
    steps = torch.remainder(azimuth.diff(), 2 * math.pi)
    assert torch.all((steps > math.radians(45 * 0.4)) & (steps < math.radians(45 * 1.6)))
    # image x axis level with the ground without roll
    assert cams.T_world_cam[:, 2, 0].abs().max() < 1e-9


def test_workers_and_disk_cache(tmp_path):
    ref = list(object_sequences(20, 3, SMALL))
    par = list(object_sequences(20, 3, SMALL, workers=2))
    assert [s.seed for s in par] == [20, 21, 22]
    for r, p in zip(ref, par, strict=True):
        assert torch.equal(r.images, p.images) and torch.equal(r.nocs, p.nocs)
    folder = write_object_dataset(tmp_path / "objs", 20, 3, SMALL, shard_size=2)
    data = read_object_dataset(folder)
    assert len(data) == 3 and data.config == SMALL
    for r, d in zip(ref, data, strict=True):
        for name in ("images", "masks", "depth", "nocs", "T_world_obj", "size"):
            assert torch.equal(getattr(r, name), getattr(d, name)), name
        assert torch.equal(r.cameras.K, d.cameras.K)
        assert torch.equal(r.cameras.T_world_cam, d.cameras.T_world_cam)
        assert (r.category, r.symmetry, r.seed, r.nocs_scale) == (
            d.category, d.symmetry, d.seed, d.nocs_scale)
    sub = ref[0].subset([2, 0])
    assert torch.equal(sub.images[1], ref[0].images[0]) and sub.cameras.shape == (2,)


def test_textureless_and_plain_background():
    config = replace(SMALL, textureless=1.0, background=False, categories=("can",))
    seq = object_sequence(4, config)
    assert seq.textureless
    assert torch.all(seq.images[~seq.masks] == torch.tensor(128 / 255))  # mid-grey backdrop


def test_bad_config():
    with pytest.raises(UserError, match="unknown object categories"):
        object_sequence(0, ObjectSequenceConfig(categories=("teapot",)))
    with pytest.raises(UserError, match="textureless"):
        object_sequence(0, ObjectSequenceConfig(textureless=2.0))
    with pytest.raises(UserError, match="not an object dataset"):
        read_object_dataset("/nonexistent/folder")

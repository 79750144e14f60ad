"""The NOCS REAL275/CAMERA reader round-trips a frame written from a generated scene."""

from __future__ import annotations

import math
import pickle

import cv2
import numpy as np
import pytest

from geometry.errors import UserError
from pose.object.shapo.data import SceneConfig, render_scene
from pose.object.shapo.nocs import list_frames, read_frame


def _write_frame(folder, scene, camera_depth=False):
    """Write a generated scene in NOCS's layout (inverse of the reader's conversions)."""
    prefix = folder / "0000"
    cv2.imwrite(f"{prefix}_color.png", np.round(scene.rgb[:, :, ::-1] * 255).astype(np.uint8))
    mm = np.round(scene.depth_clean * 1000).astype(np.uint16)
    if camera_depth:  # G * 256 + R in BGR order
        three = np.zeros((*mm.shape, 3), np.uint8)
        three[:, :, 1], three[:, :, 2] = mm // 256, mm % 256
        cv2.imwrite(f"{prefix}_depth.png", three)
    else:
        cv2.imwrite(f"{prefix}_depth.png", mm)
    mask = np.full(scene.instance.shape, 255, np.uint8)
    ids = [7 + 3 * k for k in range(len(scene.objects))]  # file ids need not be 1..N
    for k, inst in enumerate(ids):
        mask[scene.instance == k + 1] = inst
    cv2.imwrite(f"{prefix}_mask.png", np.repeat(mask[:, :, None], 3, -1))
    coord = scene.nocs.copy()
    coord[:, :, 2] = np.where(scene.instance > 0, 1 - coord[:, :, 2], 0)
    cv2.imwrite(f"{prefix}_coord.png", np.round(coord[:, :, ::-1] * 255).astype(np.uint8))
    lines = [f"{inst} {o.class_id} model_{k}" for k, (inst, o) in
             enumerate(zip(ids, scene.objects, strict=True))]
    lines.insert(0, "3 0 distractor")  # a CAMERA-style non-benchmark object (absent)
    (folder / "0000_meta.txt").write_text("\n".join(lines) + "\n")
    K = scene.K
    return prefix, (K[0, 0], K[1, 1], K[0, 2] - 0.5, K[1, 2] - 0.5)  # OpenCV centres


def _angle_deg(Ra, Rb):
    return math.degrees(math.acos(np.clip((np.trace(Ra @ Rb.T) - 1) / 2, -1, 1)))


@pytest.mark.parametrize("camera_depth", [False, True])
def test_round_trip_with_poses_from_the_nocs_map(tmp_path, camera_depth):
    scene = render_scene(11, SceneConfig(width=96, height=96, noise=False))
    prefix, intr = _write_frame(tmp_path, scene, camera_depth)
    assert list_frames(tmp_path) == [prefix]
    frame = read_frame(prefix, intr)
    np.testing.assert_allclose(frame.K, scene.K, atol=1e-9)
    np.testing.assert_allclose(frame.depth, scene.depth_clean, atol=5.1e-4)
    np.testing.assert_allclose(frame.rgb, scene.rgb, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(frame.instance, scene.instance)
    obj_px = scene.instance > 0
    np.testing.assert_allclose(frame.nocs[obj_px], scene.nocs[obj_px], atol=0.5 / 255 + 1e-6)
    assert [o.class_name for o in frame.objects] == [o.class_name for o in scene.objects]
    for got, ref in zip(frame.objects, scene.objects, strict=True):
        if ref.pixels < 100:
            continue
        assert got.pose_source == "umeyama"
        assert _angle_deg(got.T_cam_obj[:3, :3], ref.T_cam_obj[:3, :3]) < 3.0
        assert np.linalg.norm(got.T_cam_obj[:3, 3] - ref.T_cam_obj[:3, 3]) < 0.006
        # visible extent: at most the box, and not much less for a well-seen object
        assert np.all(got.size <= ref.size * 1.05 + 2e-3)


def test_gt_pickle_is_used_and_code_is_refused(tmp_path):
    scene = render_scene(11, SceneConfig(width=64, height=64, noise=False))
    prefix, intr = _write_frame(tmp_path, scene)
    s = 0.3
    sRTs = np.stack([o.T_cam_obj @ np.diag([s, s, s, 1.0]) for o in scene.objects])
    gt = {"gt_class_ids": np.array([o.class_id for o in scene.objects]), "gt_RTs": sRTs,
          "gt_scales": np.stack([o.size / s for o in scene.objects]),
          "gt_handle_visibility": np.zeros(len(scene.objects), int)}
    path = tmp_path / "results.pkl"
    path.write_bytes(pickle.dumps(gt))
    frame = read_frame(prefix, intr, gt_pickle=path)
    for got, ref in zip(frame.objects, scene.objects, strict=True):
        assert got.pose_source == "gt" and not got.handle_visible
        np.testing.assert_allclose(got.T_cam_obj, ref.T_cam_obj, atol=1e-9)
        np.testing.assert_allclose(got.size, ref.size, atol=1e-9)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path.write_bytes(pickle.dumps({"gt_RTs": Evil()}))
    with pytest.raises(UserError, match="numpy arrays"):
        read_frame(prefix, intr, gt_pickle=path)


def test_missing_and_mismatched_files_are_one_line_errors(tmp_path):
    scene = render_scene(2, SceneConfig(width=48, height=48))
    prefix, intr = _write_frame(tmp_path, scene)
    cv2.imwrite(f"{prefix}_depth.png", np.zeros((40, 48), np.uint16))
    with pytest.raises(UserError, match="differ in size"):
        read_frame(prefix, intr)
    prefix, intr = _write_frame(tmp_path, scene)
    (tmp_path / "0000_meta.txt").unlink()
    with pytest.raises(UserError, match="meta"):
        read_frame(prefix, intr)

"""Box structures against the devkit's own ``Box`` (pyquaternion), as the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box, view_points
from pyquaternion import Quaternion

from perception import frames
from perception.boxes import GlobalBoxes, LidarBoxes
from perception.constants import ATTRIBUTES, DETECTION_CLASSES


def random_boxes(rng: np.random.Generator, n: int = 7) -> LidarBoxes:
    return LidarBoxes(
        centers=rng.uniform(-30, 30, (n, 3)),
        sizes=rng.uniform(0.4, 6.0, (n, 3)),
        yaws=rng.uniform(-math.pi, math.pi, n),
        velocities=rng.normal(0, 5, (n, 2)),
        labels=rng.integers(0, len(DETECTION_CLASSES), n),
        attributes=rng.integers(0, len(ATTRIBUTES), n),
        scores=rng.uniform(0, 1, n),
    )


def devkit_box(boxes: LidarBoxes, i: int) -> Box:
    return Box(boxes.centers[i], boxes.sizes[i], Quaternion(axis=[0, 0, 1], angle=boxes.yaws[i]),
               velocity=(*boxes.velocities[i], 0.0))


def random_pose(rng: np.random.Generator) -> np.ndarray:
    """A pose with some pitch and roll, like a real ego pose."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    q = Quaternion(axis=axis, angle=rng.uniform(0, math.pi))
    return frames.make_T(q.rotation_matrix, rng.uniform(-500, 500, 3))


def test_corners_match_devkit() -> None:
    boxes = random_boxes(np.random.default_rng(0))
    corners = boxes.corners()
    for i in range(len(boxes)):
        np.testing.assert_allclose(corners[i], devkit_box(boxes, i).corners().T, atol=1e-9)


def test_points_in_boxes_matches_devkit() -> None:
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 5)
    pts = rng.uniform(-35, 35, (4000, 3))
    # Put many points near each box so the test is not decided by empty space.
    pts[:2500] = (boxes.centers[rng.integers(0, 5, 2500)] + rng.normal(0, 1.5, (2500, 3)))
    inside = boxes.points_in_boxes(pts)
    for i in range(len(boxes)):
        expected = points_in_box(devkit_box(boxes, i), pts.T)
        assert expected.sum() > 20
        np.testing.assert_array_equal(inside[:, i], expected)


def test_to_global_matches_devkit_chain() -> None:
    """Lidar -> global as mmdet3d's output_to_nusc_box + lidar_nusc_box_to_global."""
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng)
    T_global_lidar = random_pose(rng)
    out = boxes.to_global(T_global_lidar)
    q_global_lidar = Quaternion(matrix=T_global_lidar[:3, :3])
    for i in range(len(boxes)):
        box = devkit_box(boxes, i)
        box.rotate(q_global_lidar)
        box.translate(T_global_lidar[:3, 3])
        np.testing.assert_allclose(out.translations[i], box.center, atol=1e-9)
        # Same rotation (q and -q are the same rotation).
        dot = abs(float(np.dot(out.rotations[i], box.orientation.elements)))
        assert dot == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(out.velocities[i], box.velocity[:2], atol=1e-9)


def test_global_lidar_round_trip() -> None:
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng)
    T_global_lidar = random_pose(rng)
    # Upright boxes survive only if the LiDAR is upright too (yaw-only boxes).
    yaw = rng.uniform(-math.pi, math.pi)
    T_global_lidar[:3, :3] = frames.quat_to_matrix(frames.yaw_to_quat(yaw))
    back = boxes.to_global(T_global_lidar).to_lidar(frames.invert_T(T_global_lidar))
    np.testing.assert_allclose(back.centers, boxes.centers, atol=1e-9)
    np.testing.assert_allclose(back.sizes, boxes.sizes)
    np.testing.assert_allclose(np.cos(back.yaws - boxes.yaws), 1.0, atol=1e-12)
    np.testing.assert_allclose(back.velocities, boxes.velocities, atol=1e-9)
    np.testing.assert_array_equal(back.labels, boxes.labels)


def test_results_records_round_trip() -> None:
    rng = np.random.default_rng(4)
    boxes = random_boxes(rng)
    T_global_lidar = random_pose(rng)
    records = boxes.to_results("tok", T_global_lidar)
    assert records[0]["detection_name"] == DETECTION_CLASSES[boxes.labels[0]]
    again = GlobalBoxes.from_records(records)
    np.testing.assert_allclose(again.translations, boxes.to_global(T_global_lidar).translations)
    np.testing.assert_allclose(again.scores, boxes.scores)
    np.testing.assert_allclose(np.linalg.norm(again.rotations, axis=1), 1.0, atol=1e-12)


def test_to_camera_matches_devkit_projection() -> None:
    """Camera-frame centres, 2D boxes of boxes fully in front, and the yaw convention."""
    K = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
    # A front camera: camera z = LiDAR y (forward), x = LiDAR x (right), y = -LiDAR z.
    R_cam_lidar = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    T_cam_lidar = frames.make_T(R_cam_lidar, [0.0, 0.3, -0.5])
    boxes = LidarBoxes(
        centers=[[0.0, 15.0, -1.0], [3.0, 30.0, -1.0], [0.0, -10.0, -1.0], [200.0, 5.0, 0.0]],
        sizes=[[1.9, 4.5, 1.6]] * 4,
        yaws=[0.0, math.pi / 2, 0.0, 0.0],
        velocities=[[1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
        labels=[0, 0, 0, 0], attributes=[5, 5, 5, 5],
    )
    cam = boxes.to_camera(T_cam_lidar, K, (1600, 900))
    # Behind the camera and far outside the image: dropped.
    np.testing.assert_array_equal(cam.box_index, [0, 1])
    for k, i in enumerate(cam.box_index):
        box = devkit_box(boxes, i)
        box.rotate(Quaternion(matrix=R_cam_lidar))
        box.translate(T_cam_lidar[:3, 3])
        np.testing.assert_allclose(cam.centers[k], box.center, atol=1e-9)
        uv = view_points(box.corners(), K, normalize=True)[:2]
        expected = [uv[0].min(), uv[1].min(), uv[0].max(), uv[1].max()]
        expected = np.clip(expected, 0, [1600, 900, 1600, 900])
        np.testing.assert_allclose(cam.bboxes_2d[k], expected, atol=1e-6)
        heading = box.rotation_matrix[:, 0]  # the box's length axis, camera frame
        np.testing.assert_allclose(
            [np.cos(cam.yaws[k]), -np.sin(cam.yaws[k])], heading[[0, 2]], atol=1e-9)
    # Yaw 0 in the LiDAR frame points along LiDAR x = camera x: camera yaw 0.
    assert cam.yaws[0] == pytest.approx(0.0, abs=1e-12)
    # LiDAR velocity (vx, vy) -> camera (vx, vz) = (vx, vy) for this camera.
    np.testing.assert_allclose(cam.velocities[0], [1.0, 2.0], atol=1e-12)


def test_to_camera_clips_boxes_that_straddle_the_camera() -> None:
    """A long box beside the camera, partly behind it, gets a 2D box from its part in
    front only (projecting the corners behind would flip them across the image)."""
    K = np.array([[800.0, 0.0, 800.0], [0.0, 800.0, 450.0], [0.0, 0.0, 1.0]])
    R_cam_lidar = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    T_cam_lidar = frames.make_T(R_cam_lidar, [0.0, 0.0, 0.0])
    boxes = LidarBoxes(centers=[[4.0, 1.0, 0.0]], sizes=[[2.0, 12.0, 2.0]],
                       yaws=[math.pi / 2], velocities=[[0.0, 0.0]], labels=[3], attributes=[5])
    cam = boxes.to_camera(T_cam_lidar, K, (1600, 900))
    assert len(cam) == 1
    x1, y1, x2, y2 = cam.bboxes_2d[0]
    # The near face is at x = 3 m; where it crosses z = 0.1 m it projects far right, so
    # the box runs from the far end (x from 3 to 5 m, z = 7 m) to the right image edge.
    assert x1 == pytest.approx(800 + 800 * 3.0 / 7.0)
    assert x2 == 1600
    assert y1 == 0 and y2 == 900


def test_class_and_attribute_names_are_the_devkits() -> None:
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES, DETECTION_NAMES
    from nuscenes.eval.detection.utils import detection_name_to_rel_attributes

    from perception.constants import CLASS_ATTRIBUTES

    assert sorted(DETECTION_CLASSES) == sorted(DETECTION_NAMES)
    assert sorted(a for a in ATTRIBUTES if a) == sorted(ATTRIBUTE_NAMES)
    for name in DETECTION_CLASSES:
        expected = detection_name_to_rel_attributes(name) or [""]
        assert sorted(CLASS_ATTRIBUTES[name]) == sorted(expected)

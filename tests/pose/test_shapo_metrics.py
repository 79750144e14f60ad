"""NOCS metrics of ShAPO on hand-made cases (values computed by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pose.object.shapo.metrics import FrameDetections, compute_ap, iou_3d, nocs_map, pose_error


def _RT(R=None, t=(0.0, 0.0, 1.0)):
    RT = np.eye(4)
    RT[:3, :3], RT[:3, 3] = np.eye(3) if R is None else R, t
    return RT


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


SIZE = np.array([0.1, 0.2, 0.06])


def test_identical_boxes_iou_one_and_zero_error():
    assert iou_3d(_RT(), _RT(), SIZE, SIZE, "laptop", "laptop") == pytest.approx(1.0)
    assert pose_error(_RT(), _RT(), "laptop") == pytest.approx((0.0, 0.0), abs=1e-6)


def test_shifted_box_iou_by_hand():
    # shift by 3 cm along x: overlap 0.07 x 0.2 x 0.06; union 2 * 0.1*0.2*0.06 - overlap
    iou = iou_3d(_RT(t=(0.03, 0, 1)), _RT(), SIZE, SIZE, "camera", "camera")
    inter = 0.07 * 0.2 * 0.06
    assert iou == pytest.approx(inter / (2 * 0.1 * 0.2 * 0.06 - inter))
    assert pose_error(_RT(t=(0.03, 0.04, 1)), _RT(), "camera")[1] == pytest.approx(5.0)
    # disjoint boxes
    assert iou_3d(_RT(t=(0.5, 0, 1)), _RT(), SIZE, SIZE, "camera", "camera") == 0.0


def test_rotated_box_uses_camera_aligned_bounds():
    # a cube turned 45 deg about z: its bounds grow to sqrt(2) x sqrt(2) x 1 of the cube's
    cube = np.array([0.1, 0.1, 0.1])
    iou = iou_3d(_RT(_rot("z", 45)), _RT(), cube, cube, "camera", "camera")
    assert iou == pytest.approx(1.0 / 2.0)


def test_rotated_bottle_is_correct_rotated_mug_with_handle_is_not():
    size = np.array([0.08, 0.2, 0.12])  # not square in x/z: a y turn changes the box
    R90 = _rot("y", 90)
    assert iou_3d(_RT(R90), _RT(), size, size, "bottle", "bottle") == pytest.approx(1.0)
    assert pose_error(_RT(R90), _RT(), "bottle")[0] == pytest.approx(0.0, abs=1e-6)
    deg, _ = pose_error(_RT(R90), _RT(), "mug", handle_visible=True)
    assert deg == pytest.approx(90.0)
    # its box: 0.12 x 0.2 x 0.08 against 0.08 x 0.2 x 0.12
    inter = 0.08 * 0.2 * 0.08
    assert iou_3d(_RT(R90), _RT(), size, size, "mug", "mug", True) == pytest.approx(
        inter / (2 * 0.08 * 0.2 * 0.12 - inter))
    # handle invisible: symmetric
    assert pose_error(_RT(R90), _RT(), "mug", handle_visible=False)[0] == pytest.approx(
        0.0, abs=1e-6)
    # a tilt of the axis still counts for a bottle
    assert pose_error(_RT(_rot("x", 7)), _RT(), "bottle")[0] == pytest.approx(7.0)
    # a uniform scale inside RT is divided out
    assert pose_error(_RT(2.0 * _rot("z", 30)), _RT(), "laptop")[0] == pytest.approx(30.0)


def test_ap_by_hand():
    # scores 0.9 (TP), 0.8 (FP), 0.7 (TP), 3 ground truths:
    # precisions 1, 1/2, 2/3 at recalls 1/3, 1/3, 2/3 -> AP = 1/3 * 1 + 1/3 * 2/3
    ap = compute_ap(np.array([0, -1, 1]), np.array([0.9, 0.8, 0.7]), 3)
    assert ap == pytest.approx(1 / 3 + 2 / 9)
    # the order of the input does not matter, only the scores
    assert compute_ap(np.array([1, 0, -1]), np.array([0.7, 0.9, 0.8]), 3) == pytest.approx(ap)
    assert compute_ap(np.zeros(0), np.zeros(0), 2) == 0.0


def test_nocs_map_on_hand_made_detections():
    # frame: two cans (gt), three predictions: an exact one (0.9), a 3 cm shifted one
    # (0.8) of the second can, a stray one far away (0.95); one laptop detected exactly
    can = np.array([0.06, 0.12, 0.06])
    laptop = np.array([0.3, 0.02, 0.2])
    gt_RTs = np.stack([_RT(t=(0, 0, 1)), _RT(t=(0.3, 0, 1)), _RT(t=(-0.4, 0, 1.2))])
    pred_RTs = np.stack([_RT(t=(0, 0, 1)), _RT(t=(0.33, 0, 1)), _RT(t=(2, 2, 3)),
                         _RT(t=(-0.4, 0, 1.2))])
    frame = FrameDetections(
        gt_classes=["can", "can", "laptop"], gt_RTs=gt_RTs, gt_sizes=np.stack([can, can, laptop]),
        pred_classes=["can", "can", "can", "laptop"], pred_scores=np.array([0.9, 0.8, 0.95, 0.5]),
        pred_RTs=pred_RTs, pred_sizes=np.stack([can, can, can, laptop]))
    out = nocs_map([frame])
    # shifted can: overlap 0.03 x 0.12 x 0.06 -> IoU 0.03/0.09 = 1/3: a hit at 0.25, not 0.5
    # cans by score: stray (FP), exact (TP), shifted (TP at 25 %) ->
    #   iou25: precisions 0, 1/2, 2/3 at recalls 0, 1/2, 1; interpolated (max to the right)
    #   1/2 * 2/3 + 1/2 * 2/3 = 2/3; iou50: precision 1/2 at recall 1/2 -> 1/4
    assert out["per_class"]["can"]["iou25"] == pytest.approx(2 / 3)
    assert out["per_class"]["can"]["iou50"] == pytest.approx(0.25)
    assert out["per_class"]["laptop"]["iou50"] == pytest.approx(1.0)
    # pose: the stray one is dropped (no IoU > 0.1 match); exact TP, shifted 3 cm:
    #   5deg2cm: AP 1/2 (recall over the 2 matched cans); 5deg5cm: 1
    assert out["per_class"]["can"]["5deg2cm"] == pytest.approx(0.5)
    assert out["per_class"]["can"]["5deg5cm"] == pytest.approx(1.0)
    assert out["iou50"] == pytest.approx((0.25 + 1.0) / 2)
    assert out["10deg10cm"] == pytest.approx(1.0)
    for name in ("iou25", "iou50", "5deg2cm", "5deg5cm", "10deg5cm", "10deg10cm"):
        assert 0.0 <= out[name] <= 1.0

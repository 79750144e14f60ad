"""mmdet3d info pickles: the restricted unpickler, and the real nuScenes fixture in
../shared/datasets (LiDAR file, sweeps, info pickle, camera JPEG)."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from geometry.errors import UserError
from perception import frames
from perception.constants import DETECTION_CLASSES
from perception.data import InfoDataset, load_image, load_lidar_points, read_info_file
from perception.data.mmdet3d_info import restricted_load


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_calls_os_system_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"infos": [_RunsCommand(marker)]}, protocol=2))
    with pytest.raises(UserError, match=r"refers to (posix|os)\.system"):
        restricted_load(path)
    assert not marker.exists()
    # The same file through the info reader: the same refusal, still nothing run.
    with pytest.raises(UserError, match="must not contain"):
        read_info_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("target", [("builtins", "eval"), ("subprocess", "Popen"),
                                    ("numpy", "load"), ("pickle", "loads")])
def test_other_callables_are_refused(tmp_path: Path, target: tuple[str, str]) -> None:
    module, name = target
    # GLOBAL opcode, an argument tuple, REDUCE: "call module.name('1')".
    payload = f"c{module}\n{name}\n(S'1'\ntR.".encode()
    path = tmp_path / "call.pkl"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=f"{module}.{name}"):
        restricted_load(path)


def test_numpy_data_and_containers_load(tmp_path: Path) -> None:
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.float64(2.5), (1, 2)],
            "c": {"x", "y"}, "d": np.array(["car", "bus"])}
    for protocol in (2, 4, 5):
        path = tmp_path / f"ok{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        loaded = restricted_load(path)
        np.testing.assert_array_equal(loaded["a"], data["a"])
        assert loaded["b"] == [2.5, (1, 2)] and loaded["c"] == {"x", "y"}
        np.testing.assert_array_equal(loaded["d"], data["d"])


def test_not_a_pickle_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "text.pkl"
    path.write_text("hello")
    with pytest.raises(UserError, match="not a readable info pickle"):
        restricted_load(path)
    with pytest.raises(UserError, match="does not exist"):
        restricted_load(tmp_path / "missing.pkl")


def test_fixture_result_pickles_with_torch_objects_are_refused(fixture_root: Path) -> None:
    """mmdet3d result pickles hold torch tensors and mmdet3d classes: not data we load."""
    with pytest.raises(UserError, match="must not contain"):
        restricted_load(fixture_root / "mono3d_sample_results.pkl")


def test_fixture_lidar_file_and_camera_image(fixture_root: Path) -> None:
    path = next((fixture_root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    points = load_lidar_points(path)
    assert points.shape == (100, 5) and points.dtype == np.float32
    assert np.all(np.isfinite(points))
    ring = points[:, 4]
    np.testing.assert_array_equal(ring, np.round(ring))
    assert 0 <= ring.min() and ring.max() <= 31
    assert 0 <= points[:, 3].min() and points[:, 3].max() <= 255
    image = load_image(next((fixture_root / "samples" / "CAM_BACK_LEFT").glob("*.jpg")))
    assert image.shape == (900, 1600, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() < image.max() <= 1.0


def test_fixture_info_pickle_boxes_follow_the_velocities(fixture_root: Path) -> None:
    """nus_info.pkl stores boxes as (x, y, z, w, l, h, -yaw - pi/2) (mmdet3d < 1.0);
    the reader detects it, and then moving objects head where they go."""
    info = read_info_file(fixture_root / "nus_info.pkl")
    assert info.box_convention == "wlh_neg_yaw"
    assert len(info.samples) == 2 and info.class_names == DETECTION_CLASSES
    errors = []
    for sample in info.samples:
        gt = sample["gt"]
        assert len(gt) > 30
        speed = np.linalg.norm(gt.velocities, axis=1)
        moving = np.nan_to_num(speed) > 1.0
        heading = np.arctan2(gt.velocities[moving, 1], gt.velocities[moving, 0])
        errors.extend(np.abs(np.angle(np.exp(1j * (gt.yaws[moving] - heading)))))
        # Cars are longer than wide once the sizes are in (w, l, h) order.
        cars = gt.labels == DETECTION_CLASSES.index("car")
        assert np.all(gt.sizes[cars, 1] > gt.sizes[cars, 0])
    assert len(errors) >= 10
    assert np.median(errors) < 0.15
    # The other convention would point them sideways.
    other = read_info_file(fixture_root / "nus_info.pkl", box_convention="lwh_yaw")
    gt = other.samples[0]["gt"]
    moving = np.nan_to_num(np.linalg.norm(gt.velocities, axis=1)) > 1.0
    heading = np.arctan2(gt.velocities[moving, 1], gt.velocities[moving, 0])
    assert np.median(np.abs(np.angle(np.exp(1j * (gt.yaws[moving] - heading))))) > 0.5


def test_fixture_info_dataset_points_and_sweeps(fixture_root: Path) -> None:
    dataset = InfoDataset(fixture_root / "nus_info.pkl", fixture_root, load_images=False)
    assert len(dataset) == 2
    first = dataset[0]  # no sweeps recorded: the keyframe only
    raw = load_lidar_points(fixture_root / "samples" / "LIDAR_TOP" /
                            "n015-2018-08-02-17-16-37+0800__LIDAR_TOP__1533201470948018.pcd.bin")
    far = ~((np.abs(raw[:, 0]) < 1.0) & (np.abs(raw[:, 1]) < 1.0))
    np.testing.assert_array_equal(first.points[:, :4], raw[far, :4])
    np.testing.assert_array_equal(first.points[:, 4], 0.0)
    second = dataset[1]  # two (identical) sweeps 0.1 s before the keyframe
    lags = np.unique(np.round(second.points[:, 4], 6))
    np.testing.assert_allclose(lags, [0.0, 1533201470.948018 - 1533201470.847939], atol=1e-6)
    # The sweep transform from the two ego poses matches the 4x4 stored with the sweep
    # (mmdet3d's test data keeps the keyframe-LiDAR-to-sweep matrix under 'lidar2cam').
    stored = restricted_load(fixture_root / "nus_info.pkl")["data_list"][1]["lidar_sweeps"][0]
    T_sweep_lidar = np.asarray(stored["lidar_points"]["lidar2cam"])
    T_lidar_sweep = dataset.info.samples[1]["sweeps"][0]["T_lidar_sweep"]
    np.testing.assert_allclose(T_lidar_sweep, frames.invert_T(T_sweep_lidar), atol=1e-4)
    # Cameras: six, with intrinsics and the stored LiDAR-to-camera transforms.
    assert len(second.cameras) == 6
    cam = second.cameras["CAM_BACK_LEFT"]
    assert cam.K[0, 0] == pytest.approx(1256.7414812095406)
    # The image is not in the fixture: its size is estimated from the principal point.
    assert cam.image_size == (1584, 986)
    # Every box within 30 m lies in front of at least one of the six cameras.
    near = set(np.nonzero(np.linalg.norm(second.gt.centers[:, :2], axis=1) < 30)[0])
    seen = set()
    for c in second.cameras.values():
        seen |= set(c.instances.box_index.tolist())
    assert near and near <= seen


def test_fixture_lyft_infos_use_the_newer_box_convention(fixture_root: Path) -> None:
    info = read_info_file(fixture_root / "lyft_tables_template" / "lyft_infos_val.pkl")
    assert info.box_convention == "lwh_yaw"  # dims (4.495, 2.046, ...) are (l, w, h)
    gt = info.samples[0]["gt"]
    assert len(gt) == 4
    np.testing.assert_allclose(gt.sizes[0], [2.046, 4.495, 1.849])
    assert gt.yaws[0] == pytest.approx(2.7091, abs=1e-3)
    assert math.isclose(info.samples[0]["timestamp"], 1556675185.903083, abs_tol=1e-6)


def test_real_tables_give_the_same_frames_as_mmdet3d(fixture_root: Path, tmp_path: Path) -> None:
    """The fixture's Lyft tables (nuScenes schema, real calibration and ego poses with
    pitch and roll) through NuScenesDataset, against lyft_infos_val.pkl that mmdet3d's
    converter made from the same tables: LiDAR-to-camera transforms (through the ego
    poses at each camera's own timestamp) and boxes in the LiDAR frame agree."""
    import shutil

    from perception.boxes import GlobalBoxes
    from perception.data import NuScenesDataset

    tables = fixture_root / "lyft_tables_template" / "v1.01-train"
    root = tmp_path / "lyft"
    shutil.copytree(tables, root)  # a copy in the test's temp dir: we add splits.json
    scene = json.loads((root / "v1.01-train" / "scene.json").read_text())[0]["name"]
    (root / "v1.01-train" / "splits.json").write_text(json.dumps({"one": [scene]}))
    dataset = NuScenesDataset(root, "v1.01-train", "one", load_points=False, load_images=False)
    sample = dataset[0]
    info = read_info_file(fixture_root / "lyft_tables_template" / "lyft_infos_val.pkl")
    record = info.samples[0]
    assert record["token"] == sample.token
    np.testing.assert_allclose(sample.T_ego_lidar, record["T_ego_lidar"], atol=1e-12)
    np.testing.assert_allclose(sample.T_global_ego, record["T_global_ego"], atol=1e-9)
    for channel, cam in sample.cameras.items():
        np.testing.assert_allclose(cam.T_cam_lidar, record["cameras"][channel]["T_cam_lidar"],
                                   atol=1e-9, err_msg=channel)
        np.testing.assert_allclose(cam.K, record["cameras"][channel]["K"])
    # Lyft's category names are not nuScenes detection classes, so convert the raw
    # annotation records ourselves and compare with mmdet3d's gt_boxes.
    nusc = dataset.nusc
    anns = [nusc.get("sample_annotation", t) for t in nusc.get("sample", sample.token)["anns"]]
    n = len(anns)
    boxes = GlobalBoxes(
        translations=np.array([a["translation"] for a in anns]),
        sizes=np.array([a["size"] for a in anns]),
        rotations=np.array([a["rotation"] for a in anns]),
        velocities=np.zeros((n, 2)), labels=np.zeros(n, np.int64),
        attributes=np.zeros(n, np.int64),
    ).to_lidar(frames.invert_T(sample.T_global_lidar))
    gt = record["gt"]
    np.testing.assert_allclose(boxes.centers, gt.centers, atol=1e-6)
    np.testing.assert_allclose(boxes.sizes, gt.sizes)
    # mmdet3d takes the yaw of the full quaternion; we take the heading of the box's
    # length axis: they differ by the LiDAR's tilt (< 1 mrad here).
    np.testing.assert_allclose(np.angle(np.exp(1j * (boxes.yaws - gt.yaws))), 0.0, atol=1e-3)


def _tracemalloc_peak(load) -> tuple[BaseException | None, int]:
    """Run ``load()``; return what it raised and the peak of traced allocations (bytes)."""
    import tracemalloc

    tracemalloc.start()
    try:
        load()
        raised = None
    except BaseException as err:  # noqa: BLE001 - returned to the test
        raised = err
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak


def test_a_33_byte_pickle_cannot_allocate_a_gigabyte(tmp_path: Path) -> None:
    """``bytearray(10**9)`` written with handwritten opcodes: PROTO 2, GLOBAL, BININT,
    TUPLE1, REDUCE, STOP. Refused in one sentence before anything is allocated."""
    import pickletools

    payload = (b"\x80\x02" + b"c__builtin__\nbytearray\n" + b"J" + (10**9).to_bytes(4, "little")
               + b"\x85R.")
    assert len(payload) == 33
    pickletools.dis(payload, out=io.StringIO())  # a well-formed pickle
    path = tmp_path / "bomb.pkl"
    path.write_bytes(payload)
    raised, peak = _tracemalloc_peak(lambda: restricted_load(path))
    assert isinstance(raised, UserError), raised
    message = str(raised)
    assert "bytearray" in message and "allocation" in message and "\n" not in message
    assert peak < 50_000_000, peak
    # Bytes from the file itself still load (nothing is allocated beyond the file).
    path.write_bytes(pickle.dumps({"raw": bytearray(b"abc")}, protocol=2))
    assert restricted_load(path) == {"raw": bytearray(b"abc")}


@pytest.mark.parametrize("case", ["ndarray called", "reconstruct shape", "object setstate"])
def test_arrays_cannot_claim_a_shape_the_file_does_not_hold(tmp_path: Path, case: str) -> None:
    """numpy globals that allocate by an argument: calling ``ndarray((10**9,))``, numpy's
    ``_reconstruct`` with a large shape, and an object array whose BUILD claims 10**9
    elements but holds two (numpy allocates 8 GB, then crashes)."""
    big = b"J" + (10**9).to_bytes(4, "little")
    if case == "ndarray called":
        payload = b"\x80\x02cnumpy\nndarray\n" + big + b"\x85\x85R."
    elif case == "reconstruct shape":
        payload = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + big
                   + b"\x85C\x01b\x87R.")
    else:
        # _reconstruct(ndarray, (0,), b'b'), then BUILD (1, (10**9,), dtype('O'), False, [1, 2])
        payload = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
                   b"C\x01b\x87R(K\x01" + big + b"\x85cnumpy\ndtype\nX\x02\x00\x00\x00O8K\x00K\x01"
                   b"\x87R(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb"
                   b"\x89]q\x00(K\x01K\x02etb.")
    path = tmp_path / "bomb.pkl"
    path.write_bytes(payload)
    raised, peak = _tracemalloc_peak(lambda: restricted_load(path))
    assert isinstance(raised, UserError), raised
    assert "allocation" in str(raised) and "\n" not in str(raised)
    assert peak < 50_000_000, peak


def _swapped_categories_info(fixture_root: Path, tmp_path: Path) -> tuple[Path, dict]:
    """The fixture's info file rewritten as mmdet3d >= 1.1 does (``categories``, no
    ``classes``), with car and pedestrian swapping labels in the map and in every box."""
    raw = restricted_load(fixture_root / "nus_info.pkl")
    car, ped = DETECTION_CLASSES.index("car"), DETECTION_CLASSES.index("pedestrian")
    swap = {car: ped, ped: car}
    categories = {name: swap.get(i, i) for i, name in enumerate(DETECTION_CLASSES)}
    raw["metainfo"] = {"categories": categories, "dataset": "nuscenes",
                       "version": "v1.0-trainval", "info_version": "1.1"}
    for entry in raw["data_list"]:
        for inst in entry["instances"]:
            for key in ("bbox_label", "bbox_label_3d"):
                inst[key] = swap.get(int(inst[key]), int(inst[key]))
    path = tmp_path / "nus_info_categories.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=4))
    return path, raw


def test_categories_of_mmdet3d_1_1_name_the_labels(fixture_root: Path, tmp_path: Path) -> None:
    original = read_info_file(fixture_root / "nus_info.pkl")
    path, _ = _swapped_categories_info(fixture_root, tmp_path)
    info = read_info_file(path)
    car, ped = DETECTION_CLASSES.index("car"), DETECTION_CLASSES.index("pedestrian")
    assert info.class_names[car] == "pedestrian" and info.class_names[ped] == "car"
    for before, after in zip(original.samples, info.samples, strict=True):
        # The same boxes get the same classes, whatever order the file numbers them in.
        np.testing.assert_array_equal(after["gt"].labels, before["gt"].labels)
        np.testing.assert_allclose(after["gt"].centers, before["gt"].centers)
    counts = np.bincount(np.concatenate([s["gt"].labels for s in info.samples]), minlength=10)
    assert counts[car] == 40 and counts[ped] == 13


def test_labels_the_file_cannot_name_are_refused(fixture_root: Path, tmp_path: Path) -> None:
    path, raw = _swapped_categories_info(fixture_root, tmp_path)
    raw["data_list"][0]["instances"][0]["bbox_label_3d"] = 12
    path.write_bytes(pickle.dumps(raw, protocol=4))
    with pytest.raises(UserError, match="label 12, but the file names only 10 classes"):
        read_info_file(path)
    raw["data_list"][0]["instances"][0]["bbox_label_3d"] = 0
    raw["metainfo"]["categories"] = {"car": 0, "pedestrian": 2}
    path.write_bytes(pickle.dumps(raw, protocol=4))
    with pytest.raises(UserError, match="are not 0..1, each once"):
        read_info_file(path)

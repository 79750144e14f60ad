"""mmdetection3d info pickles (``nuscenes_infos_*.pkl``), read without trusting them.

Two layouts exist: mmdet3d < 1.1 writes ``{"infos": [...], "metadata": {...}}`` with
quaternion poses and ``gt_boxes``; mmdet3d >= 1.1 writes ``{"metainfo": {...},
"data_list": [...]}`` with 4x4 matrices and per-instance dicts. Both are read into the
same :class:`NuScenesSample` as :class:`~perception.data.nuscenes.NuScenesDataset` gives.

Box conventions differ too: mmdet3d < 1.0 stored LiDAR boxes as ``(x, y, z, w, l, h, r)``
with ``r = -yaw - pi/2``; mmdet3d >= 1.0 as ``(x, y, z, l, w, h, yaw)``. Files converted
between versions keep whichever convention they were made with, so ``box_convention``
defaults to ``"auto"``: vehicles are longer than wide, so the order of the two horizontal
sizes of the vehicle boxes tells them apart.

A pickle can run any code when loaded, so it is read with :class:`RestrictedUnpickler`,
which can only build numpy arrays, numpy scalars and plain containers, and cannot be made
to allocate memory out of proportion to the file (no ``bytearray(10**9)``, no array of a
shape given as an argument: array data always comes from the file itself).
"""

from __future__ import annotations

import io
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geometry.errors import UserError
from perception import frames
from perception.boxes import LidarBoxes
from perception.constants import ATTRIBUTES, CAMERA_CHANNELS, DETECTION_CLASSES
from perception.data.io import load_image, load_lidar_points
from perception.data.sample import CameraData, NuScenesSample

BoxConvention = Literal["auto", "lwh_yaw", "wlh_neg_yaw"]

# (module, name) pairs a data pickle may refer to: numpy's array/scalar/dtype
# reconstruction (numpy 1.x and 2.x module paths), bytes decoding used by protocol 2, and
# container types. Nothing here can call into the OS or import modules. Callables that
# allocate by an argument (``bytearray(n)``, ``ndarray(shape)``, ``_reconstruct`` with a
# large shape) are replaced in :meth:`RestrictedUnpickler.find_class` by checked versions,
# so a tiny file cannot claim gigabytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
}


class _NdarrayType:
    """Stands in for ``numpy.ndarray`` in a pickle: numpy's pickles only pass the class to
    ``_reconstruct`` (as the subtype); calling it (``ndarray(shape)``) would allocate the
    shape the file asks for."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ForbiddenGlobal("numpy.ndarray called with a shape (an allocation)")


_NDARRAY = _NdarrayType()


def _checked_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for the empty arrays its pickles start from (the data comes
    with the following BUILD, whose size numpy checks against the bytes in the file)."""
    if subtype is not _NDARRAY and subtype is not np.ndarray:
        raise ForbiddenGlobal("numpy _reconstruct of a type other than ndarray")
    dims = shape if isinstance(shape, tuple) else (shape,)
    if not all(isinstance(d, int) and d >= 0 for d in dims) or math.prod(dims) != 0:
        raise ForbiddenGlobal(f"numpy _reconstruct with shape {shape!r} (an allocation)")
    return np.ndarray.__new__(_CheckedArray, shape, dtype)  # what numpy's _reconstruct does


class _CheckedArray(np.ndarray):
    """An array being unpickled: its ``__setstate__`` (the BUILD after ``_reconstruct``)
    checks that the data in the file fills the shape the file claims, before numpy
    allocates it (numpy allocates an object array of the claimed shape first, and crashes
    on a short list). :func:`restricted_load` turns these back into plain arrays."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ForbiddenGlobal("an array with a malformed state")
        shape, dtype, data = state[-4], state[-3], state[-1]
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not isinstance(dtype, np.dtype) or not all(isinstance(d, int) and d >= 0
                                                      for d in dims):
            raise ForbiddenGlobal("an array with a malformed shape or dtype")
        count = math.prod(dims)
        if dtype.hasobject:
            ok = isinstance(data, list) and len(data) == count
        else:
            ok = isinstance(data, (bytes, bytearray)) and len(data) == count * dtype.itemsize
        if not ok:
            raise ForbiddenGlobal(f"an array of shape {shape!r} whose data does not fill it "
                                  "(an allocation)")
        super().__setstate__(state)


def _plain_arrays(value: Any, depth: int = 0) -> Any:
    """``value`` with every :class:`_CheckedArray` in its dicts, lists and tuples made a
    plain ``ndarray`` (in place for lists and dicts; info pickles are a few levels deep)."""
    if depth > 200:
        raise ForbiddenGlobal("containers nested more than 200 deep")
    if isinstance(value, _CheckedArray):
        return value.view(np.ndarray)
    if isinstance(value, dict):
        for key in value:
            value[key] = _plain_arrays(value[key], depth + 1)
        return value
    if isinstance(value, list):
        value[:] = [_plain_arrays(item, depth + 1) for item in value]
        return value
    if isinstance(value, tuple):
        return tuple(_plain_arrays(item, depth + 1) for item in value)
    return value


def _checked_bytearray(*args: Any) -> bytearray:
    """``bytearray`` of bytes or text from the file only; ``bytearray(n)`` would allocate n
    bytes a tiny file asks for."""
    if args and not isinstance(args[0], (bytes, str)):
        raise ForbiddenGlobal(f"bytearray({type(args[0]).__name__}) (an allocation)")
    return bytearray(*args)

_VEHICLES = {"car", "truck", "bus", "trailer", "construction_vehicle"}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside ``_ALLOWED_GLOBALS``."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the numpy/container globals of ``_ALLOWED_GLOBALS``."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles written by Python 2 (or with fix_imports) say __builtin__.
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise ForbiddenGlobal(f"{module}.{name}")
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        if name == "_reconstruct":
            return _checked_reconstruct
        if name == "bytearray":
            return _checked_bytearray
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenGlobal("a persistent id")


def restricted_load(path: str | os.PathLike) -> Any:
    """Load a data pickle with :class:`RestrictedUnpickler`.

    Raises:
        UserError: the file is missing, not a pickle, or refers to anything but numpy
            data and containers (e.g. ``os.system``).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"info file {path} does not exist.")
    data = path.read_bytes()
    try:
        return _plain_arrays(RestrictedUnpickler(io.BytesIO(data)).load())
    except ForbiddenGlobal as err:
        raise UserError(
            f"{path} refers to {err}, which a data file must not contain; only numpy arrays "
            "and plain containers are loaded (regenerate the info file, or do not trust it)."
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, RecursionError) as err:
        raise UserError(f"{path} is not a readable info pickle ({err}).") from None


@dataclass
class InfoFile:
    """A parsed info pickle: class names and per-sample records (normalised)."""

    path: Path
    class_names: tuple[str, ...]
    version: str
    samples: list[dict]
    box_convention: str


def read_info_file(path: str | os.PathLike, box_convention: BoxConvention = "auto") -> InfoFile:
    """Read an mmdet3d info pickle (either layout) with the restricted unpickler."""
    path = Path(path)
    raw = restricted_load(path)
    if isinstance(raw, dict) and "data_list" in raw:
        meta = raw.get("metainfo", {}) or {}
        if not isinstance(meta, dict):
            raise UserError(f"{path}: 'metainfo' is not a dict; regenerate the info file.")
        classes = _class_names(meta, path)
        samples = [_from_v2(entry, classes, path) for entry in raw["data_list"]]
        version = str(meta.get("version", ""))
    elif isinstance(raw, dict) and "infos" in raw:
        infos = raw["infos"]
        infos = [infos] if isinstance(infos, dict) else list(infos)
        classes = DETECTION_CLASSES
        samples = [_from_v1(entry) for entry in infos]
        version = str((raw.get("metadata") or {}).get("version", ""))
    else:
        raise UserError(f"{path} is neither an mmdet3d 'data_list' nor an 'infos' info file; "
                        "give an info .pkl written by mmdet3d's tools/create_data.py.")
    convention = _resolve_convention(samples, classes, box_convention, path)
    for sample in samples:
        sample["gt"] = _boxes(sample.pop("raw_boxes"), classes, convention)
    return InfoFile(path, classes, version, samples, convention)


def _class_names(meta: dict, path: Path) -> tuple[str, ...]:
    """Class names by label index: mmdet3d >= 1.1 writes ``categories`` (name -> label),
    older files ``classes``/``CLASSES`` (a list); without either, the nuScenes order."""
    categories = meta.get("categories")
    if categories is None:
        names = meta.get("classes", meta.get("CLASSES", DETECTION_CLASSES))
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise UserError(f"{path}: metainfo 'classes' is not a list of names; regenerate "
                            "the info file.")
        return tuple(names)
    if not isinstance(categories, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            for k, v in categories.items()):
        raise UserError(f"{path}: metainfo 'categories' is not a map of class names to "
                        "labels; regenerate the info file.")
    by_label = {int(v): k for k, v in categories.items()}
    if sorted(by_label) != list(range(len(categories))):
        raise UserError(f"{path}: metainfo 'categories' labels {sorted(categories.values())} "
                        f"are not 0..{len(categories) - 1}, each once; regenerate the info file.")
    return tuple(by_label[i] for i in range(len(by_label)))


def _matrix(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64).reshape(4, 4)


def _from_v2(entry: dict, classes: tuple[str, ...], path: Path) -> dict:
    """One ``data_list`` entry (mmdet3d >= 1.1)."""
    lidar = entry["lidar_points"]
    T_ego_lidar = _matrix(lidar["lidar2ego"])
    T_global_ego = _matrix(entry["ego2global"])
    sweeps = []
    for sweep in entry.get("lidar_sweeps", []) or []:
        points = sweep["lidar_points"]
        if points.get("lidar2sensor") is not None:
            T_lidar_sweep = frames.invert_T(_matrix(points["lidar2sensor"]))
        else:
            T_lidar_sweep = frames.compose(
                frames.invert_T(T_ego_lidar), frames.invert_T(T_global_ego),
                _matrix(sweep["ego2global"]), _matrix(points["lidar2ego"]),
            )
        sweeps.append({"path": points["lidar_path"], "T_lidar_sweep": T_lidar_sweep,
                       "timestamp": float(sweep["timestamp"])})
    cameras = {}
    for channel, cam in (entry.get("images") or {}).items():
        if channel not in CAMERA_CHANNELS or not cam.get("img_path"):
            continue
        cameras[channel] = {
            "path": cam["img_path"],
            "K": np.asarray(cam["cam2img"], np.float64)[:3, :3],
            "T_cam_lidar": _matrix(cam["lidar2cam"]),
            "T_ego_cam": _matrix(cam["cam2ego"]) if cam.get("cam2ego") is not None else None,
            "timestamp": float(cam.get("timestamp", entry["timestamp"])),
        }
    raw_boxes = []
    for inst in entry.get("instances", []) or []:
        label = int(inst.get("bbox_label_3d", inst.get("bbox_label", -1)))
        # -1: a category mmdet3d's converter left out (it keeps the box, unlabelled).
        if not -1 <= label < len(classes):
            raise UserError(f"{path}: a box has label {label}, but the file names only "
                            f"{len(classes)} classes (labels 0-{len(classes) - 1}); "
                            "regenerate the info file or add the class to its metainfo.")
        name = classes[label] if label >= 0 else None
        raw_boxes.append({
            "box": np.asarray(inst["bbox_3d"], np.float64)[:7],
            "name": name,
            "velocity": np.asarray(inst.get("velocity", [np.nan, np.nan]), np.float64)[:2],
            "num_lidar_pts": int(inst.get("num_lidar_pts", -1)),
            "num_radar_pts": int(inst.get("num_radar_pts", 0)),
        })
    return {
        "token": str(entry.get("token", entry.get("sample_idx", ""))),
        "timestamp": float(entry["timestamp"]),
        "lidar_path": lidar["lidar_path"],
        "T_ego_lidar": T_ego_lidar,
        "T_global_ego": T_global_ego,
        "sweeps": sweeps,
        "cameras": cameras,
        "raw_boxes": raw_boxes,
    }


def _from_v1(entry: dict) -> dict:
    """One ``infos`` entry (mmdet3d < 1.1): quaternion poses, timestamps in microseconds."""
    T_ego_lidar = frames.pose_to_T(entry["lidar2ego_rotation"], entry["lidar2ego_translation"])
    T_global_ego = frames.pose_to_T(entry["ego2global_rotation"], entry["ego2global_translation"])
    sweeps = []
    for sweep in entry.get("sweeps", []) or []:
        T_lidar_sweep = frames.make_T(np.asarray(sweep["sensor2lidar_rotation"], np.float64),
                                      np.asarray(sweep["sensor2lidar_translation"], np.float64))
        sweeps.append({"path": sweep["data_path"], "T_lidar_sweep": T_lidar_sweep,
                       "timestamp": float(sweep["timestamp"]) * 1e-6})
    cameras = {}
    for channel, cam in (entry.get("cams") or {}).items():
        if channel not in CAMERA_CHANNELS:
            continue
        T_lidar_cam = frames.make_T(np.asarray(cam["sensor2lidar_rotation"], np.float64),
                                    np.asarray(cam["sensor2lidar_translation"], np.float64))
        cameras[channel] = {
            "path": cam["data_path"],
            "K": np.asarray(cam["cam_intrinsic"], np.float64)[:3, :3],
            "T_cam_lidar": frames.invert_T(T_lidar_cam),
            "T_ego_cam": frames.pose_to_T(cam["sensor2ego_rotation"],
                                          cam["sensor2ego_translation"]),
            "timestamp": float(cam["timestamp"]) * 1e-6,
        }
    boxes = np.asarray(entry.get("gt_boxes", np.zeros((0, 7))), np.float64).reshape(-1, 7)
    names = list(entry.get("gt_names", []))
    n = boxes.shape[0]
    velocity = np.asarray(entry.get("gt_velocity", np.full((n, 2), np.nan)), np.float64)
    lidar_pts = np.asarray(entry.get("num_lidar_pts", np.full(n, -1)), np.int64)
    radar_pts = np.asarray(entry.get("num_radar_pts", np.zeros(n)), np.int64)
    raw_boxes = [
        {"box": boxes[i], "name": str(names[i]), "velocity": velocity.reshape(-1, 2)[i],
         "num_lidar_pts": int(lidar_pts[i]), "num_radar_pts": int(radar_pts[i])}
        for i in range(n)
    ]
    return {
        "token": str(entry["token"]),
        "timestamp": float(entry["timestamp"]) * 1e-6,
        "lidar_path": entry["lidar_path"],
        "T_ego_lidar": T_ego_lidar,
        "T_global_ego": T_global_ego,
        "sweeps": sweeps,
        "cameras": cameras,
        "raw_boxes": raw_boxes,
    }


def _resolve_convention(samples: list[dict], classes: tuple[str, ...],
                        requested: BoxConvention, path: Path) -> str:
    if requested != "auto":
        return requested
    longer_first = shorter_first = 0
    for sample in samples:
        for raw in sample["raw_boxes"]:
            if raw["name"] in _VEHICLES:
                d0, d1 = raw["box"][3], raw["box"][4]
                longer_first += int(d0 > d1)
                shorter_first += int(d0 < d1)
    if longer_first == shorter_first:
        if longer_first + shorter_first == 0 and not any(s["raw_boxes"] for s in samples):
            return "lwh_yaw"  # no boxes at all: the convention does not matter
        raise UserError(f"cannot tell the box convention of {path} (no vehicle boxes decide "
                        "it); pass box_convention='lwh_yaw' (mmdet3d >= 1.0) or "
                        "'wlh_neg_yaw' (mmdet3d < 1.0).")
    return "lwh_yaw" if longer_first > shorter_first else "wlh_neg_yaw"


def _boxes(raw_boxes: list[dict], classes: tuple[str, ...], convention: str) -> LidarBoxes:
    """Boxes of the 10 detection classes in our convention (others are left out)."""
    kept = [r for r in raw_boxes if r["name"] in DETECTION_CLASSES]
    if not kept:
        return LidarBoxes(
            centers=np.zeros((0, 3)), sizes=np.zeros((0, 3)), yaws=np.zeros(0),
            velocities=np.zeros((0, 2)), labels=np.zeros(0, np.int64),
            attributes=np.zeros(0, np.int64), num_lidar_pts=np.zeros(0, np.int64),
            num_radar_pts=np.zeros(0, np.int64),
        )
    box = np.stack([r["box"] for r in kept])
    if convention == "lwh_yaw":
        sizes = box[:, [4, 3, 5]]
        yaws = box[:, 6]
    else:
        sizes = box[:, [3, 4, 5]]
        yaws = -box[:, 6] - math.pi / 2
    yaws = (yaws + math.pi) % (2 * math.pi) - math.pi
    return LidarBoxes(
        centers=box[:, :3],
        sizes=sizes,
        yaws=yaws,
        velocities=np.stack([r["velocity"] for r in kept]),
        labels=np.array([DETECTION_CLASSES.index(r["name"]) for r in kept], np.int64),
        # mmdet3d's LiDAR infos do not store attributes.
        attributes=np.full(len(kept), ATTRIBUTES.index(""), np.int64),
        num_lidar_pts=np.array([r["num_lidar_pts"] for r in kept], np.int64),
        num_radar_pts=np.array([r["num_radar_pts"] for r in kept], np.int64),
    )


def resolve_data_path(root: Path, stored: str, default_folder: str) -> Path:
    """Find a file an info pickle names, under ``root``.

    Info files store paths relative to wherever they were made (``data/nuscenes/...``,
    ``./data/...``) or bare file names; the first of these that exists wins: the path
    itself under ``root``, each shorter tail of it under ``root``, and the file name
    under ``root / default_folder``.
    """
    stored_path = Path(stored)
    if stored_path.is_absolute() and stored_path.is_file():
        return stored_path
    parts = [p for p in stored_path.parts if p not in ("", ".", "/")]
    for start in range(len(parts)):
        candidate = root.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate
    return root / default_folder / stored_path.name


@dataclass
class InfoDataset:
    """Samples of an mmdet3d info pickle, with the files under ``data_root``.

    Gives the same :class:`NuScenesSample` as :class:`NuScenesDataset`; sweeps come
    from the info file (mmdet3d keeps up to 10 per sample), time lags from their
    timestamps.
    """

    info_path: Path
    data_root: Path
    sweeps: int = 10
    load_points: bool = True
    load_images: bool = True
    box_convention: BoxConvention = "auto"
    min_distance: float = 1.0

    def __post_init__(self) -> None:
        self.info_path = Path(self.info_path)
        self.data_root = Path(self.data_root)
        self.info = read_info_file(self.info_path, self.box_convention)

    def __len__(self) -> int:
        return len(self.info.samples)

    def __getitem__(self, index: int) -> NuScenesSample:
        record = self.info.samples[index]
        gt: LidarBoxes = record["gt"]
        cameras = {}
        for channel, cam in record["cameras"].items():
            path = resolve_data_path(self.data_root, cam["path"], f"samples/{channel}")
            image = load_image(path) if self.load_images else None
            size = _image_size(path, cam["K"]) if image is None else (image.shape[1],
                                                                       image.shape[0])
            cameras[channel] = CameraData(
                channel=channel, image_path=path, image_size=size, K=cam["K"],
                T_cam_lidar=cam["T_cam_lidar"], timestamp=cam["timestamp"],
                T_ego_cam=cam["T_ego_cam"], image=image,
                instances=gt.to_camera(cam["T_cam_lidar"], cam["K"], size),
            )
        return NuScenesSample(
            token=record["token"], timestamp=record["timestamp"],
            T_ego_lidar=record["T_ego_lidar"], T_global_ego=record["T_global_ego"], gt=gt,
            points=self.lidar_points(index) if self.load_points else None, cameras=cameras,
        )

    def lidar_points(self, index: int) -> np.ndarray:
        """Keyframe plus up to ``sweeps - 1`` sweeps of the info file, in the keyframe
        LiDAR frame.

        Returns:
            ``[N, 5]`` float32: x, y, z (m), intensity, time lag (s).
        """
        record = self.info.samples[index]
        key_path = resolve_data_path(self.data_root, record["lidar_path"], "samples/LIDAR_TOP")
        chunks = [self._points(key_path, np.eye(4), 0.0)]
        for sweep in record["sweeps"][: self.sweeps - 1]:
            path = resolve_data_path(self.data_root, sweep["path"], "sweeps/LIDAR_TOP")
            lag = record["timestamp"] - sweep["timestamp"]
            chunks.append(self._points(path, sweep["T_lidar_sweep"], lag))
        return np.concatenate(chunks, axis=0)

    def _points(self, path: Path, T_lidar_sweep: np.ndarray, lag: float) -> np.ndarray:
        raw = load_lidar_points(path)
        close = (np.abs(raw[:, 0]) < self.min_distance) & (np.abs(raw[:, 1]) < self.min_distance)
        raw = raw[~close]
        xyz = frames.transform_points(T_lidar_sweep, raw[:, :3].astype(np.float64))
        lag_column = np.full((raw.shape[0], 1), lag)
        return np.concatenate([xyz, raw[:, 3:4], lag_column], axis=1).astype(np.float32)


def _image_size(path: Path, K: np.ndarray) -> tuple[int, int]:
    """``(width, height)`` from the image header; info files do not store it, so for a
    missing file it is estimated as twice the principal point (nuScenes' cameras have it
    within a few per cent of the centre)."""
    if path.is_file():
        from PIL import Image

        with Image.open(path) as image:
            return image.size
    return int(round(2 * K[0, 2])), int(round(2 * K[1, 2]))

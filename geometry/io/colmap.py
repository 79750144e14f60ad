"""COLMAP sparse models, text and binary: ``cameras``, ``images`` and ``points3D``.

The file layout follows COLMAP's documentation (Output Format) and its
``Reconstruction::ReadText/ReadBinary``:

- ``cameras``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``;
- ``images``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` (the
  world-to-camera rotation as a wxyz quaternion, and the world-to-camera translation),
  then ``POINTS2D[]`` as ``(X, Y, POINT3D_ID)`` triples (``-1``: no 3D point);
- ``points3D``: ``POINT3D_ID X Y Z R G B ERROR TRACK[]`` as ``(IMAGE_ID, POINT2D_IDX)``.

Binary files hold the same records little-endian (counts ``uint64``, ids ``uint32`` except
point ids ``uint64``, values ``float64``, colours ``uint8``, names NUL-terminated).
COLMAP's pixel convention (image corner at ``(0, 0)``) is the one of
:class:`geometry.cameras.Cameras`, so intrinsics carry over unchanged.

:class:`ColmapModel` keeps every record as read (lossless round trips, keypoints and
tracks included); :meth:`ColmapModel.to_cameras` gives the :class:`Cameras` batch and
:meth:`ColmapModel.from_cameras` builds a model to write from one.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from geometry.cameras import Cameras
from geometry.errors import UserError
from geometry.io.atomic import atomic_path
from geometry.se3 import invert_T
from geometry.so3 import matrix_to_quat, quat_to_matrix

# name -> (model id, number of parameters), as in COLMAP's camera_models.h.
CAMERA_MODELS: dict[str, tuple[int, int]] = {
    "SIMPLE_PINHOLE": (0, 3),
    "PINHOLE": (1, 4),
    "SIMPLE_RADIAL": (2, 4),
    "RADIAL": (3, 5),
    "OPENCV": (4, 8),
    "OPENCV_FISHEYE": (5, 8),
    "FULL_OPENCV": (6, 12),
    "FOV": (7, 5),
    "SIMPLE_RADIAL_FISHEYE": (8, 4),
    "RADIAL_FISHEYE": (9, 5),
    "THIN_PRISM_FISHEYE": (10, 12),
    "RAD_TAN_THIN_PRISM_FISHEYE": (11, 16),
    "SIMPLE_DIVISION": (12, 4),
    "DIVISION": (13, 5),
    "SIMPLE_FISHEYE": (14, 3),
    "FISHEYE": (15, 4),
    "EUCM": (16, 6),
    "EQUIRECTANGULAR": (17, 2),
}
_MODEL_BY_ID = {model_id: name for name, (model_id, _) in CAMERA_MODELS.items()}
_INVALID_POINT3D_ID = -1  # stored as 2^64 - 1 in binary files
_FILES = ("cameras", "images", "points3D")


@dataclass
class ColmapCamera:
    """One COLMAP camera (intrinsics shared by the images that reference it)."""

    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # [P] float64, in the order of CAMERA_MODELS[model]

    def to_intrinsics(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``K [3, 3]`` and ``dist [5]`` (or ``None``) in :class:`Cameras` form.

        Raises:
            UserError: for models :class:`Cameras` cannot represent (fisheye, FOV, ...).
        """
        p = self.params
        zero = 0.0
        if self.model == "SIMPLE_PINHOLE":
            fx = fy = p[0]
            cx, cy, dist = p[1], p[2], None
        elif self.model == "PINHOLE":
            fx, fy, cx, cy, dist = p[0], p[1], p[2], p[3], None
        elif self.model == "SIMPLE_RADIAL":
            fx = fy = p[0]
            cx, cy, dist = p[1], p[2], [p[3], zero, zero, zero, zero]
        elif self.model == "RADIAL":
            fx = fy = p[0]
            cx, cy, dist = p[1], p[2], [p[3], p[4], zero, zero, zero]
        elif self.model == "OPENCV":
            fx, fy, cx, cy = p[:4]
            dist = [p[4], p[5], p[6], p[7], zero]
        elif self.model == "FULL_OPENCV" and not np.any(p[9:12]):
            fx, fy, cx, cy = p[:4]
            dist = [p[4], p[5], p[6], p[7], p[8]]
        else:
            raise UserError(
                f"COLMAP camera {self.camera_id} uses the {self.model} model, which sparseview "
                "cannot represent; undistort the images first (colmap image_undistorter) and "
                "use the undistorted model"
            )
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        return K, None if dist is None else np.asarray(dist, dtype=np.float64)


@dataclass
class ColmapImage:
    """One registered image: pose (world-to-camera) and its 2D keypoints."""

    image_id: int
    qvec: np.ndarray  # [4] wxyz of R_cam_world
    tvec: np.ndarray  # [3] t_cam_world
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [P, 2] pixels
    point3D_ids: np.ndarray = field(  # [P] int64, -1 where the keypoint has no 3D point
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )

    @property
    def T_cam_world(self) -> np.ndarray:
        """``[4, 4]`` world-to-camera."""
        R = quat_to_matrix(torch.from_numpy(np.asarray(self.qvec, dtype=np.float64))).numpy()
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, self.tvec
        return T


@dataclass
class ColmapPoints3D:
    """The sparse point cloud with tracks stored compactly (CSR: ``track_offsets``)."""

    ids: np.ndarray  # [P] int64
    xyz: np.ndarray  # [P, 3] float64, world frame
    rgb: np.ndarray  # [P, 3] uint8
    error: np.ndarray  # [P] float64 mean reprojection error (pixels)
    track_offsets: np.ndarray  # [P + 1] int64; track of point i is [off[i], off[i+1])
    track_image_ids: np.ndarray  # [T] int64
    track_point2D_idxs: np.ndarray  # [T] int64

    @staticmethod
    def empty() -> ColmapPoints3D:
        return ColmapPoints3D.from_arrays(np.zeros((0, 3)))

    @staticmethod
    def from_arrays(
        xyz: np.ndarray,
        rgb: np.ndarray | None = None,
        error: np.ndarray | None = None,
        ids: np.ndarray | None = None,
    ) -> ColmapPoints3D:
        """Points without tracks (ids ``1..P`` unless given, grey, error 0 by default)."""
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        n = len(xyz)
        return ColmapPoints3D(
            ids=np.arange(1, n + 1, dtype=np.int64) if ids is None else np.asarray(ids, np.int64),
            xyz=xyz,
            rgb=np.full((n, 3), 128, np.uint8) if rgb is None else np.asarray(rgb, np.uint8),
            error=np.zeros(n) if error is None else np.asarray(error, np.float64),
            track_offsets=np.zeros(n + 1, dtype=np.int64),
            track_image_ids=np.zeros(0, dtype=np.int64),
            track_point2D_idxs=np.zeros(0, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def track(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image_ids [L], point2D_idxs [L])`` of point ``i`` (an index, not an id)."""
        a, b = self.track_offsets[i], self.track_offsets[i + 1]
        return self.track_image_ids[a:b], self.track_point2D_idxs[a:b]


@dataclass
class ColmapModel:
    """A COLMAP sparse model: cameras by id, images by id, 3D points."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points3D: ColmapPoints3D

    def to_cameras(
        self, dtype: torch.dtype = torch.float32, image_dir: str | os.PathLike | None = None
    ) -> Cameras:
        """One :class:`Cameras` entry per image, sorted by image NAME.

        Args:
            dtype: float dtype of the tensors.
            image_dir: if given, ``image_paths`` are ``image_dir / name``.

        Returns:
            Cameras with ``names`` set to the image names.
        """
        images = sorted(self.images.values(), key=lambda im: im.name)
        if not images:
            raise UserError("the COLMAP model has no registered images; run the mapper first")
        Ks, dists, widths, heights, poses = [], [], [], [], []
        for image in images:
            camera = self.cameras.get(image.camera_id)
            if camera is None:
                raise UserError(f"COLMAP image {image.name!r} references camera "
                                f"{image.camera_id}, which cameras.txt/bin lacks; re-export it")
            K, dist = camera.to_intrinsics()
            Ks.append(K)
            dists.append(np.zeros(5) if dist is None else dist)
            widths.append(camera.width)
            heights.append(camera.height)
            poses.append(image.T_cam_world)
        T_cam_world = torch.from_numpy(np.stack(poses))
        any_dist = any(np.any(d) for d in dists)
        return Cameras(
            K=torch.from_numpy(np.stack(Ks)).to(dtype),
            T_world_cam=invert_T(T_cam_world).to(dtype),
            width=torch.tensor(widths),
            height=torch.tensor(heights),
            dist=torch.from_numpy(np.stack(dists)).to(dtype) if any_dist else None,
            image_paths=None if image_dir is None else
            [str(Path(image_dir) / im.name) for im in images],
            names=[im.name for im in images],
        )

    @staticmethod
    def from_cameras(
        cameras: Cameras,
        points_xyz: np.ndarray | torch.Tensor | None = None,
        points_rgb: np.ndarray | torch.Tensor | None = None,
        observations: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> ColmapModel:
        """A model for writing: one COLMAP camera per distinct intrinsics, one image each.

        Intrinsics become PINHOLE, or OPENCV when there is distortion (FULL_OPENCV when
        ``k3 != 0``). A skew in ``K`` cannot be stored and is dropped with a warning.
        Image names are ``cameras.names``, else the base names of ``image_paths``, else
        ``000000.png, 000001.png, ...``. Points get tracks from ``observations`` (each
        observation becomes a keypoint of its image), none without it.

        Args:
            cameras: a 1-D batch (or a single camera).
            points_xyz: optional ``[P, 3]`` world points.
            points_rgb: optional ``[P, 3]`` uint8 colours (or floats in [0, 1]).
            observations: optional ``(point [M], view [M], xy [M, 2])``: point ``point[m]`` is
                seen in camera ``view[m]`` at pixel ``xy[m]`` (COLMAP's convention: the first
                pixel's centre is ``(0.5, 0.5)``); errors are the mean reprojection error.
        """
        if len(cameras.shape) == 0:
            cameras = _unsqueeze(cameras)
        if len(cameras.shape) != 1:
            raise ValueError(f"ColmapModel.from_cameras needs a 1-D batch, got {cameras.shape}")
        K = cameras.K.detach().cpu().double().numpy()
        skew = np.abs(K[:, 0, 1]) / K[:, 0, 0]
        if np.any(skew > 0):
            warnings.warn(f"COLMAP cannot store a skewed K: dropping skew up to "
                          f"{skew.max():.2e} of fx", stacklevel=2)
        dist = (np.zeros((len(K), 5)) if cameras.dist is None
                else cameras.dist.detach().cpu().double().numpy())
        if cameras.names is not None:
            names = list(cameras.names)
        elif cameras.image_paths is not None:
            names = [Path(p).name for p in cameras.image_paths]
        else:
            names = [f"{i:06d}.png" for i in range(len(K))]
        T_cam_world = cameras.T_cam_world.detach().cpu().double()
        qvecs = matrix_to_quat(T_cam_world[:, :3, :3]).numpy()
        tvecs = T_cam_world[:, :3, 3].numpy()
        camera_ids: dict[tuple, int] = {}
        colmap_cameras: dict[int, ColmapCamera] = {}
        images: dict[int, ColmapImage] = {}
        for i in range(len(K)):
            fx, fy, cx, cy = K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2]
            k1, k2, p1, p2, k3 = dist[i]
            if not np.any(dist[i]):
                model, params = "PINHOLE", [fx, fy, cx, cy]
            elif k3 == 0:
                model, params = "OPENCV", [fx, fy, cx, cy, k1, k2, p1, p2]
            else:
                model, params = "FULL_OPENCV", [fx, fy, cx, cy, k1, k2, p1, p2, k3, 0, 0, 0]
            w, h = int(cameras.width[i]), int(cameras.height[i])
            key = (model, w, h, *params)
            if key not in camera_ids:
                camera_ids[key] = len(camera_ids) + 1
                colmap_cameras[camera_ids[key]] = ColmapCamera(
                    camera_ids[key], model, w, h, np.asarray(params, dtype=np.float64))
            images[i + 1] = ColmapImage(i + 1, qvecs[i], tvecs[i], camera_ids[key], names[i])
        if points_xyz is None:
            points = ColmapPoints3D.empty()
        else:
            xyz = np.asarray(torch.as_tensor(points_xyz).detach().cpu(), dtype=np.float64)
            rgb = None
            if points_rgb is not None:
                rgb = np.asarray(torch.as_tensor(points_rgb).detach().cpu())
                if np.issubdtype(rgb.dtype, np.floating):
                    rgb = np.clip(np.round(rgb * 255), 0, 255)
                rgb = rgb.astype(np.uint8)
            points = ColmapPoints3D.from_arrays(xyz, rgb)
            if observations is not None:
                _add_tracks(points, images, colmap_cameras, observations)
        return ColmapModel(colmap_cameras, images, points)


def _add_tracks(points: ColmapPoints3D, images: dict[int, ColmapImage],
                cameras: dict[int, ColmapCamera],
                observations: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Fill the tracks, the images' keypoints and the points' mean reprojection errors
    (pixels, through each camera's pinhole part) from ``(point, view, xy)`` in place."""
    point, view, xy = (np.asarray(a) for a in observations)
    point, view = point.astype(np.int64).reshape(-1), view.astype(np.int64).reshape(-1)
    xy = xy.astype(np.float64).reshape(-1, 2)
    if not len(point) == len(view) == len(xy):
        raise ValueError("observations need as many points, views and pixels")
    if len(point) and (point.min() < 0 or point.max() >= len(points)
                       or view.min() < 0 or view.max() >= len(images)):
        raise ValueError("an observation names a point or view that does not exist")
    order = np.lexsort((view, point))  # tracks grouped by point, in view order
    point, view, xy = point[order], view[order], xy[order]
    point2D_idx = np.zeros(len(point), dtype=np.int64)
    residual = np.zeros(len(point))
    for v, image in images.items():  # image ids are view + 1
        mine = np.flatnonzero(view == v - 1)
        point2D_idx[mine] = np.arange(len(mine))
        image.xys = xy[mine]
        image.point3D_ids = points.ids[point[mine]]
        K, _ = cameras[image.camera_id].to_intrinsics()
        cam = (image.T_cam_world[:3, :3] @ points.xyz[point[mine]].T).T + image.T_cam_world[:3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (K @ cam.T).T
            uv = uv[:, :2] / uv[:, 2:3]
        residual[mine] = np.linalg.norm(uv - xy[mine], axis=1)
    counts = np.bincount(point, minlength=len(points))
    points.track_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    points.track_image_ids = view + 1
    points.track_point2D_idxs = point2D_idx
    sums = np.bincount(point, weights=np.nan_to_num(residual, nan=0.0, posinf=0.0),
                       minlength=len(points))
    points.error = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def colmap_safe_name(name: str) -> str:
    """``name`` with every whitespace character replaced by ``_``: COLMAP's text format
    splits lines at whitespace, so its readers (pycolmap included) take ``ph`` of
    ``ph oto.png``."""
    return re.sub(r"\s", "_", name)


def _unsqueeze(cameras: Cameras) -> Cameras:
    return Cameras(K=cameras.K[None], T_world_cam=cameras.T_world_cam[None],
                   width=cameras.width[None], height=cameras.height[None],
                   dist=None if cameras.dist is None else cameras.dist[None])


# ---------------------------------------------------------------------------------- reading


def find_colmap_model(path: str | os.PathLike) -> tuple[Path, str] | None:
    """Locate a model: ``path`` itself, ``path/sparse/0`` or ``path/sparse``.

    Returns:
        ``(model_dir, ext)`` with ``ext`` ``".bin"`` or ``".txt"`` (binary preferred, as
        COLMAP does), or ``None``.
    """
    path = Path(path)
    candidates = (path, path / "sparse" / "0", path / "sparse", path / "colmap" / "sparse" / "0")
    for candidate in candidates:
        for ext in (".bin", ".txt"):
            if (candidate / f"cameras{ext}").is_file() and (candidate / f"images{ext}").is_file():
                return candidate, ext
    return None


def read_colmap_model(path: str | os.PathLike) -> ColmapModel:
    """Read a COLMAP model (text or binary, detected by the files present).

    Args:
        path: the model folder (holding ``cameras.bin``/``.txt`` ...) or a project folder
            with ``sparse/0``. ``points3D`` may be missing (then the cloud is empty).

    Raises:
        UserError: no model found, or a file that does not parse (naming it).
    """
    found = find_colmap_model(path)
    if found is None:
        raise UserError(f"no COLMAP model in {path}: expected cameras.bin/images.bin or "
                        "cameras.txt/images.txt there or in sparse/0; point to the model folder")
    model_dir, ext = found
    readers = (
        (_read_cameras_bin, _read_images_bin, _read_points3D_bin) if ext == ".bin"
        else (_read_cameras_txt, _read_images_txt, _read_points3D_txt)
    )
    parsed = []
    for name, reader in zip(_FILES, readers, strict=True):
        file = model_dir / f"{name}{ext}"
        if name == "points3D" and not file.is_file():
            parsed.append(ColmapPoints3D.empty())
            continue
        try:
            parsed.append(reader(file))
        except UserError:
            raise
        except (ValueError, IndexError, KeyError, struct.error, UnicodeDecodeError) as err:
            raise UserError(f"{file} is not a valid COLMAP {name}{ext} file ({err}); "
                            "re-export the model with colmap model_converter") from None
    cameras, images, points = parsed
    _check_finite(model_dir, cameras, images, points)
    return ColmapModel(cameras, images, points)


def _check_finite(model_dir: Path, cameras, images, points) -> None:
    bad = [f"camera {c.camera_id}" for c in cameras.values() if not np.all(np.isfinite(c.params))]
    bad += [f"image {im.name}" for im in images.values()
            if not (np.all(np.isfinite(im.qvec)) and np.all(np.isfinite(im.tvec)))
            or np.linalg.norm(im.qvec) == 0]
    if len(points) and not np.all(np.isfinite(points.xyz)):
        bad.append("points3D")
    if bad:
        raise UserError(f"the COLMAP model in {model_dir} has NaN/inf or zero-quaternion values "
                        f"({', '.join(bad[:3])}); fix or re-run the reconstruction")


def _data_lines(file: Path) -> list[str]:
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _parse_camera(tokens: list[str]) -> ColmapCamera:
    camera_id, model = int(tokens[0]), tokens[1]
    if model not in CAMERA_MODELS:
        raise ValueError(f"unknown camera model {model!r}")
    n_params = CAMERA_MODELS[model][1]
    if len(tokens) != 4 + n_params:
        raise ValueError(f"camera {camera_id} ({model}) needs {n_params} parameters, "
                         f"got {len(tokens) - 4}")
    return ColmapCamera(camera_id, model, int(tokens[2]), int(tokens[3]),
                        np.array([float(v) for v in tokens[4:]], dtype=np.float64))


def _read_cameras_txt(file: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for line in _data_lines(file):
        camera = _parse_camera(line.split())
        cameras[camera.camera_id] = camera
    return cameras


def _read_images_txt(file: Path) -> dict[int, ColmapImage]:
    # Like COLMAP: the line after an image line is its POINTS2D line, even when empty.
    lines = file.read_text(encoding="utf-8").splitlines()
    images: dict[int, ColmapImage] = {}
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        tokens = line.split(maxsplit=9)
        if len(tokens) != 10:
            raise ValueError(f"image line {i} needs 10 columns, got {len(tokens)}")
        points_line = lines[i].split() if i < len(lines) else []
        i += 1
        if len(points_line) % 3:
            raise ValueError(f"POINTS2D line {i} does not hold (X, Y, POINT3D_ID) triples")
        triples = np.array(points_line, dtype=np.float64).reshape(-1, 3)
        image_id = int(tokens[0])
        images[image_id] = ColmapImage(
            image_id=image_id,
            qvec=np.array(tokens[1:5], dtype=np.float64),
            tvec=np.array(tokens[5:8], dtype=np.float64),
            camera_id=int(tokens[8]),
            name=tokens[9],
            xys=triples[:, :2].copy(),
            point3D_ids=np.array([int(v) for v in points_line[2::3]], dtype=np.int64),
        )
    return images


def _read_points3D_txt(file: Path) -> ColmapPoints3D:
    ids, xyz, rgb, error, lengths, track = [], [], [], [], [], []
    for line in _data_lines(file):
        tokens = line.split()
        if len(tokens) < 8 or (len(tokens) - 8) % 2:
            raise ValueError(f"point line needs 8 columns and (IMAGE_ID, POINT2D_IDX) pairs, "
                             f"got {len(tokens)} columns")
        ids.append(int(tokens[0]))
        xyz.append([float(v) for v in tokens[1:4]])
        rgb.append([int(v) for v in tokens[4:7]])
        error.append(float(tokens[7]))
        lengths.append((len(tokens) - 8) // 2)
        track.extend(int(v) for v in tokens[8:])
    track_arr = np.array(track, dtype=np.int64).reshape(-1, 2)
    return ColmapPoints3D(
        ids=np.array(ids, dtype=np.int64),
        xyz=np.array(xyz, dtype=np.float64).reshape(-1, 3),
        rgb=np.array(rgb, dtype=np.uint8).reshape(-1, 3),
        error=np.array(error, dtype=np.float64),
        track_offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
        track_image_ids=track_arr[:, 0].copy(),
        track_point2D_idxs=track_arr[:, 1].copy(),
    )


class _Reader:
    """Sequential little-endian reader over a bytes buffer that fails loudly at the end."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError("the file is truncated")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        if self.pos + dtype.itemsize * count > len(self.data):
            raise ValueError("the file is truncated")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += dtype.itemsize * count
        return out

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ValueError("the file is truncated inside an image name")
        value = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return value

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{len(self.data) - self.pos} unexpected bytes at the end")


def _read_cameras_bin(file: Path) -> dict[int, ColmapCamera]:
    reader = _Reader(file.read_bytes())
    (count,) = reader.take("<Q")
    cameras = {}
    for _ in range(count):
        camera_id, model_id, width, height = reader.take("<IiQQ")
        if model_id not in _MODEL_BY_ID:
            raise ValueError(f"unknown camera model id {model_id}")
        model = _MODEL_BY_ID[model_id]
        params = reader.array("<f8", CAMERA_MODELS[model][1]).copy()
        cameras[camera_id] = ColmapCamera(camera_id, model, width, height, params)
    reader.finish()
    return cameras


_POINT2D_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def _read_images_bin(file: Path) -> dict[int, ColmapImage]:
    reader = _Reader(file.read_bytes())
    (count,) = reader.take("<Q")
    images = {}
    for _ in range(count):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = reader.take("<I7dI")
        name = reader.string()
        (n_points,) = reader.take("<Q")
        pts = reader.array(_POINT2D_DTYPE, n_points)
        images[image_id] = ColmapImage(
            image_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), camera_id, name,
            xys=np.stack([pts["x"], pts["y"]], -1), point3D_ids=pts["id"].astype(np.int64),
        )
    reader.finish()
    return images


_POINT_HEADER = struct.Struct("<Q3d3BdQ")


def _read_points3D_bin(file: Path) -> ColmapPoints3D:
    reader = _Reader(file.read_bytes())
    (count,) = reader.take("<Q")
    ids = np.empty(count, np.int64)
    xyz = np.empty((count, 3))
    rgb = np.empty((count, 3), np.uint8)
    error = np.empty(count)
    lengths = np.empty(count, np.int64)
    tracks = []
    for i in range(count):
        pid, x, y, z, r, g, b, err, length = reader.take(_POINT_HEADER.format)
        ids[i], xyz[i], rgb[i], error[i], lengths[i] = pid, (x, y, z), (r, g, b), err, length
        tracks.append(reader.array("<u4", 2 * length))
    reader.finish()
    track = (np.concatenate(tracks).astype(np.int64).reshape(-1, 2) if tracks
             else np.zeros((0, 2), np.int64))
    return ColmapPoints3D(ids, xyz, rgb, error, np.concatenate([[0], np.cumsum(lengths)]),
                          track[:, 0].copy(), track[:, 1].copy())


# ---------------------------------------------------------------------------------- writing


def _fmt(value: float) -> str:
    """Shortest text that reads back to the same float64 (``repr``), integers without ``.0``."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _write_cameras_txt(model: ColmapModel) -> str:
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(model.cameras)}",
    ]
    for cid in sorted(model.cameras):
        c = model.cameras[cid]
        lines.append(" ".join([str(cid), c.model, str(c.width), str(c.height),
                               *(_fmt(p) for p in c.params)]))
    return "\n".join(lines) + "\n"


def _write_images_txt(model: ColmapModel) -> str:
    n_obs = sum(len(im.point3D_ids) for im in model.images.values())
    mean_obs = n_obs / len(model.images) if model.images else 0.0
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(model.images)}, mean observations per image: {mean_obs}",
    ]
    for iid in sorted(model.images):
        im = model.images[iid]
        if not im.name or re.search(r"\s", im.name):
            raise UserError(f"image name {im.name!r} is empty or holds whitespace, which "
                            "COLMAP's text format cannot hold (its readers stop at the first "
                            "space); rename the image (e.g. spaces to underscores)")
        lines.append(" ".join([str(iid), *(_fmt(v) for v in im.qvec), *(_fmt(v) for v in im.tvec),
                               str(im.camera_id), im.name]))
        lines.append(" ".join(f"{_fmt(x)} {_fmt(y)} {int(pid)}"
                              for (x, y), pid in zip(im.xys, im.point3D_ids, strict=True)))
    return "\n".join(lines) + "\n"


def _write_points3D_txt(model: ColmapModel) -> str:
    pts = model.points3D
    mean_track = (pts.track_offsets[-1] / len(pts)) if len(pts) else 0.0
    lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {len(pts)}, mean track length: {mean_track}",
    ]
    for i in range(len(pts)):
        image_ids, idxs = pts.track(i)
        track = " ".join(f"{a} {b}" for a, b in zip(image_ids, idxs, strict=True))
        fields = [str(pts.ids[i]), *(_fmt(v) for v in pts.xyz[i]), *(str(v) for v in pts.rgb[i]),
                  _fmt(pts.error[i])]
        lines.append(" ".join(fields + ([track] if track else [])))
    return "\n".join(lines) + "\n"


def _write_cameras_bin(model: ColmapModel) -> bytes:
    out = [struct.pack("<Q", len(model.cameras))]
    for cid in sorted(model.cameras):
        c = model.cameras[cid]
        model_id, n_params = CAMERA_MODELS[c.model]
        if len(c.params) != n_params:
            raise ValueError(f"camera {cid}: {c.model} needs {n_params} parameters")
        out.append(struct.pack("<IiQQ", cid, model_id, c.width, c.height))
        out.append(np.asarray(c.params, "<f8").tobytes())
    return b"".join(out)


def _write_images_bin(model: ColmapModel) -> bytes:
    out = [struct.pack("<Q", len(model.images))]
    for iid in sorted(model.images):
        im = model.images[iid]
        out.append(struct.pack("<I7dI", iid, *im.qvec, *im.tvec, im.camera_id))
        out.append(im.name.encode("utf-8") + b"\x00")
        pts = np.empty(len(im.point3D_ids), _POINT2D_DTYPE)
        pts["x"], pts["y"], pts["id"] = im.xys[:, 0], im.xys[:, 1], im.point3D_ids
        out.append(struct.pack("<Q", len(pts)) + pts.tobytes())
    return b"".join(out)


def _write_points3D_bin(model: ColmapModel) -> bytes:
    pts = model.points3D
    out = [struct.pack("<Q", len(pts))]
    for i in range(len(pts)):
        image_ids, idxs = pts.track(i)
        out.append(_POINT_HEADER.pack(int(pts.ids[i]), *pts.xyz[i], *(int(v) for v in pts.rgb[i]),
                                      float(pts.error[i]), len(image_ids)))
        out.append(np.stack([image_ids, idxs], -1).astype("<u4").tobytes())
    return b"".join(out)


def write_colmap_model(
    path: str | os.PathLike, model: ColmapModel | Cameras, binary: bool = False
) -> Path:
    """Write a COLMAP model folder (``cameras``, ``images``, ``points3D``).

    Each file is written to a temporary sibling and all three are renamed together at the
    end, so an error leaves the previous files. Files of the other format (``.bin`` when
    writing text, and vice versa) are removed afterwards so readers that prefer one
    format never see a stale model.

    Args:
        path: the model folder (created if needed).
        model: a :class:`ColmapModel`, or :class:`Cameras` (converted with
            :meth:`ColmapModel.from_cameras`, no points).
        binary: write ``.bin`` files instead of ``.txt``.

    Returns:
        The model folder.
    """
    if isinstance(model, Cameras):
        model = ColmapModel.from_cameras(model)
    path = Path(path)
    ext = ".bin" if binary else ".txt"
    writers = ((_write_cameras_bin, _write_images_bin, _write_points3D_bin) if binary
               else (_write_cameras_txt, _write_images_txt, _write_points3D_txt))
    contents = [writer(model) for writer in writers]
    with contextlib.ExitStack() as stack:
        for name, content in zip(_FILES, contents, strict=True):
            tmp = stack.enter_context(atomic_path(path / f"{name}{ext}"))
            if isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                tmp.write_text(content, encoding="utf-8")
    other = ".txt" if binary else ".bin"
    for name in _FILES:
        (path / f"{name}{other}").unlink(missing_ok=True)
    return path

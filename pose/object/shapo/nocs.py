"""Reader of the NOCS REAL275 / CAMERA layout, with its conventions converted once, here.

A frame is a file prefix ``DIR/0000`` with::

    0000_color.png   8-bit RGB
    0000_depth.png   16-bit z-depth in millimetres (CAMERA composites: 3 channels, the
                     depth is G * 256 + R, as NOCS's ``load_depth`` reads it); 0: no depth
    0000_mask.png    instance ids (NOCS reads the third BGR channel); 255: background
    0000_meta.txt    one line per instance: ``inst_id class_id model`` (REAL) or
                     ``inst_id class_id synset model`` (CAMERA); class 0 (CAMERA's
                     distractors) is not a benchmark object
    0000_coord.png   optional NOCS map: 8-bit RGB of (x, y, 1 - z) (NOCS flips z)

Conventions converted here: colours to float RGB in [0, 1]; depth to metres; NOCS maps to
(x, y, z) in [0, 1]; instance ids to ``1..N`` in meta order (0: background and
non-benchmark); the intrinsics, calibrated with pixel centres at integers (OpenCV), to ours
(centres at ``+0.5``: ``cx + 0.5, cy + 0.5``).

Ground-truth poses: from NOCS's ground-truth pickles (``gts/<split>/results_*.pkl``, keys
``gt_class_ids, gt_RTs, gt_scales, gt_handle_visibility``; read with an unpickler that
admits numpy arrays only) when given, else estimated from the NOCS map and the depth by a
trimmed Umeyama similarity (as NOCS aligns its own labels), the size then being the
visible NOCS extent times the scale (a lower bound for partly seen objects).
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geometry.errors import UserError
from pose.object.shapo.shapes import CATEGORIES

INTRINSICS_OPENCV = {
    "real": (591.0125, 590.16775, 322.525, 244.11084),
    "camera": (577.5, 577.5, 319.5, 239.5),
}
"""NOCS's published intrinsics ``fx, fy, cx, cy`` (OpenCV pixel centres at integers)."""

__all__ = ["INTRINSICS_OPENCV", "NocsFrame", "NocsObject", "intrinsics_K", "list_frames",
           "read_frame", "read_gt_pickle"]


@dataclass
class NocsObject:
    """One benchmark object of a frame."""

    class_name: str
    class_id: int
    inst_id: int
    """The id in the file's mask."""
    model: str
    T_cam_obj: np.ndarray | None = None  # [4, 4] rigid
    size: np.ndarray | None = None  # [3] metres
    handle_visible: bool = True
    pose_source: str = "none"
    """``gt`` (NOCS's pickle), ``umeyama`` (from the NOCS map) or ``none``."""


@dataclass
class NocsFrame:
    """One frame in our conventions."""

    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1]
    depth: np.ndarray  # [H, W] float32 metres, 0 unknown
    instance: np.ndarray  # [H, W] int32: 0 background, i + 1 object i
    K: np.ndarray  # [3, 3], pixel centres at +0.5
    nocs: np.ndarray | None = None  # [H, W, 3] float32 in [0, 1]
    objects: list[NocsObject] = field(default_factory=list)


def intrinsics_K(fx: float, fy: float, cx: float, cy: float, opencv: bool = True
                 ) -> np.ndarray:
    """``K [3, 3]`` in our convention from ``fx, fy, cx, cy`` (OpenCV centres by default)."""
    shift = 0.5 if opencv else 0.0
    return np.array([[fx, 0.0, cx + shift], [0.0, fy, cy + shift], [0.0, 0.0, 1.0]])


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """The frame prefixes (``.../0000``) under ``folder``, sorted (searched recursively)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give a NOCS scene or split folder.")
    return sorted(p.with_name(p.name[: -len("_color.png")])
                  for p in folder.rglob("*_color.png"))


def _imread(path: Path, flags: int) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise UserError(f"{path} is missing; a NOCS frame needs _color.png, _depth.png, "
                        "_mask.png and _meta.txt.")
    image = cv2.imread(str(path), flags)
    if image is None:
        raise UserError(f"{path} is not a readable image; replace the file.")
    return image


def read_meta(path: Path) -> list[tuple[int, int, str]]:
    """``(inst_id, class_id, model)`` per line of a NOCS ``_meta.txt``."""
    if not path.is_file():
        raise UserError(f"{path} is missing; a NOCS frame needs its _meta.txt.")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            rows.append((int(parts[0]), int(parts[1]), parts[-1]))
        except (ValueError, IndexError):
            raise UserError(f"{path} line {number} is not 'inst_id class_id model'; "
                            "fix the file.") from None
    return rows


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, scalars and builtin containers only (no code)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "scalar"), ("builtins", "slice"),
                ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def read_gt_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """NOCS's ground truth of one frame: ``gt_class_ids [N]``, ``gt_RTs [N, 4, 4]``
    (scaled), ``gt_scales [N, 3]`` (NOCS units), ``gt_handle_visibility [N]``."""
    path = Path(path)
    try:
        data = _NumpyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise UserError(f"{path} is not a NOCS ground-truth pickle of numpy arrays ({err}); "
                        "give the gts/<split>/results_*.pkl file of the frame.") from None
    if not isinstance(data, dict) or not {"gt_class_ids", "gt_RTs", "gt_scales"} <= set(data):
        raise UserError(f"{path} lacks gt_class_ids/gt_RTs/gt_scales; give NOCS's "
                        "gts/<split>/results_*.pkl file of the frame.")
    return data


def _umeyama_trimmed(src: np.ndarray, dst: np.ndarray, rounds: int = 3
                     ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    import torch

    from geometry.sim3 import umeyama

    keep = np.ones(len(src), bool)
    for _ in range(rounds):
        s, R, t = umeyama(torch.from_numpy(src[keep]), torch.from_numpy(dst[keep]))
        s, R, t = float(s), R.numpy(), t.numpy()
        res = np.linalg.norm(dst - (s * src @ R.T + t), axis=-1)
        keep = res <= max(2.5 * np.median(res[keep]), 1e-3)
    return s, R, t, keep


def read_frame(prefix: str | os.PathLike, intrinsics: str | tuple[float, float, float, float]
               = "real", gt_pickle: str | os.PathLike | None = None) -> NocsFrame:
    """One NOCS frame in our conventions.

    Args:
        prefix: ``DIR/0000`` (the files are ``DIR/0000_color.png`` and so on).
        intrinsics: ``real``, ``camera`` or ``(fx, fy, cx, cy)`` in OpenCV's convention.
        gt_pickle: NOCS's ``results_*.pkl`` of the frame (poses); otherwise poses come
            from the NOCS map (when the frame has one).
    """
    import cv2

    prefix = Path(prefix)
    rgb = _imread(prefix.with_name(prefix.name + "_color.png"), cv2.IMREAD_COLOR)
    rgb = rgb[:, :, ::-1].astype(np.float32) / 255.0
    raw = _imread(prefix.with_name(prefix.name + "_depth.png"), cv2.IMREAD_UNCHANGED)
    if raw.ndim == 3:
        raw = raw[:, :, 1].astype(np.uint16) * 256 + raw[:, :, 2].astype(np.uint16)
    if raw.dtype != np.uint16:
        raise UserError(f"{prefix}_depth.png is not a 16-bit depth map in millimetres; "
                        "NOCS depth files are 16-bit PNGs.")
    depth = raw.astype(np.float32) / 1000.0
    mask = _imread(prefix.with_name(prefix.name + "_mask.png"), cv2.IMREAD_COLOR)[:, :, 2]
    if rgb.shape[:2] != depth.shape or depth.shape != mask.shape:
        raise UserError(f"{prefix}: colour {rgb.shape[:2]}, depth {depth.shape} and mask "
                        f"{mask.shape} differ in size; the frame's files must match.")
    coord_path = prefix.with_name(prefix.name + "_coord.png")
    nocs = None
    if coord_path.is_file():
        nocs = _imread(coord_path, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0
        nocs[:, :, 2] = 1.0 - nocs[:, :, 2]
    if isinstance(intrinsics, str):
        if intrinsics not in INTRINSICS_OPENCV:
            raise UserError(f"unknown intrinsics {intrinsics!r}; use real, camera or "
                            "fx,fy,cx,cy.")
        intrinsics = INTRINSICS_OPENCV[intrinsics]
    K = intrinsics_K(*intrinsics)

    instance = np.zeros(mask.shape, np.int32)
    objects: list[NocsObject] = []
    meta = sorted(read_meta(prefix.with_name(prefix.name + "_meta.txt")))
    for inst_id, class_id, model in meta:  # NOCS's order: ascending mask ids
        if not 1 <= class_id <= len(CATEGORIES) or not (mask == inst_id).any():
            continue
        objects.append(NocsObject(CATEGORIES[class_id - 1], class_id, inst_id, model))
        instance[mask == inst_id] = len(objects)

    if gt_pickle is not None:
        _attach_gt(objects, read_gt_pickle(gt_pickle), gt_pickle)
    elif nocs is not None:
        _attach_umeyama(objects, instance, nocs, depth, K)
    return NocsFrame(rgb=np.ascontiguousarray(rgb), depth=depth, instance=instance, K=K,
                     nocs=nocs, objects=objects)


def _attach_gt(objects: list[NocsObject], gt: dict, path: str | os.PathLike) -> None:
    """NOCS lists its ground truths in mask-id order of the frame's benchmark objects."""
    class_ids = np.asarray(gt["gt_class_ids"]).reshape(-1)
    if len(class_ids) != len(objects) or any(
            int(c) != o.class_id for c, o in zip(class_ids, objects, strict=True)):
        raise UserError(f"{path} lists classes {class_ids.tolist()} but the frame has "
                        f"{[o.class_id for o in objects]}; give the pickle of this frame.")
    vis = np.asarray(gt.get("gt_handle_visibility", np.ones(len(objects)))).reshape(-1)
    for k, obj in enumerate(objects):
        sRT = np.asarray(gt["gt_RTs"][k], np.float64)
        s = float(np.cbrt(np.linalg.det(sRT[:3, :3])))
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = sRT[:3, :3] / s, sRT[:3, 3]
        obj.T_cam_obj, obj.size = T, np.asarray(gt["gt_scales"][k], np.float64) * s
        obj.handle_visible, obj.pose_source = bool(vis[k]), "gt"


def _attach_umeyama(objects: list[NocsObject], instance: np.ndarray, nocs: np.ndarray,
                    depth: np.ndarray, K: np.ndarray) -> None:
    H, W = depth.shape
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    for i, obj in enumerate(objects, start=1):
        sel = (instance == i) & (depth > 0)
        if sel.sum() < 10:
            continue
        z = depth[sel].astype(np.float64)
        cam = np.stack([(u[sel] - K[0, 2]) / K[0, 0] * z, (v[sel] - K[1, 2]) / K[1, 1] * z, z],
                       -1)
        q = nocs[sel].astype(np.float64) - 0.5
        try:
            s, R, t, keep = _umeyama_trimmed(q, cam)
        except ValueError:
            continue
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        obj.T_cam_obj = T
        obj.size = 2.0 * np.abs(q[keep]).max(0) * s
        obj.pose_source = "umeyama"

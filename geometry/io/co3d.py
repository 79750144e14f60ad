"""CO3D cameras: the real CO3D v2 annotations, and ``gt_cameras.npz`` (PyTorch3D NDC).

Both store PyTorch3D cameras and are converted to OpenCV :class:`Cameras` here, once, at the
boundary (:func:`geometry.conventions.pytorch3d_to_opencv`).

**CO3D v2 dataset** (:func:`read_co3d_sequences`; :func:`write_co3d_category` writes the same
layout, for fixtures)::

    ROOT/<category>/frame_annotations.jgz      gzipped JSON list, one entry per frame:
        {"sequence_name", "frame_number", "frame_timestamp",
         "image": {"path": "<category>/<seq>/images/frameNNNNNN.jpg", "size": [H, W]},
         "mask": {"path": ..., "mass": ...} | null, "depth": {"path", "scale_adjustment",
         "mask_path"} | null,
         "viewpoint": {"R": 3x3, "T": [3], "focal_length": [2], "principal_point": [2],
                       "intrinsics_format": "ndc_isotropic" | "ndc_norm_image_bounds"}}
    ROOT/<category>/sequence_annotations.jgz   gzipped JSON list (optional here):
        {"sequence_name", "category", "video", "point_cloud", "viewpoint_quality_score"}
    ROOT/<category>/set_lists/set_lists_<name>.json   (optional) {"train": [[sequence_name,
        frame_number, image_path], ...], "val": [...], "test": [...]}

Paths in the annotations are relative to ``ROOT``. Intrinsics formats (PyTorch3D
implicitron's ``_get_pytorch3d_camera``), with ``half = (W / 2, H / 2)``:
``ndc_norm_image_bounds`` (CO3D v1): ``f_px = f * half``, ``c_px = half - p * half`` per
axis; ``ndc_isotropic`` (CO3D v2): the same with ``min(W, H) / 2`` for both axes.

**gt_cameras.npz** (:func:`read_co3d`): the file holds ``gtR`` ``[N, 3, 3]``, ``gtT``
``[N, 3]`` and ``gtFL`` ``[N, 2]`` of PyTorch3D ``PerspectiveCameras`` (row-vector
``X_cam = X_world @ R + T``, X left, Y up, isotropic NDC where the shorter image side
spans ``[-1, 1]``: CO3D v2's ``ndc_isotropic``); an optional ``gtPP`` ``[N, 2]`` gives
the principal point in NDC, else it is 0 (the image centre). Frames are the folder's
images in sorted order (``frame000007.jpg``, ...), whose sizes complete the NDC-to-pixel
conversion (:func:`geometry.conventions.pytorch3d_to_opencv`).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geometry.cameras import Cameras
from geometry.conventions import opencv_to_pytorch3d, pytorch3d_to_opencv
from geometry.errors import UserError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_co3d(
    path: str | os.PathLike,
    image_size: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """Read ``gt_cameras.npz`` and the images next to it.

    Args:
        path: the sequence folder or the ``.npz`` file.
        image_size: ``(width, height)`` for every frame when the folder has no images.
        dtype: float dtype of the tensors.

    Returns:
        OpenCV :class:`Cameras` in CO3D's world frame, with ``image_paths`` when the images
        are present.
    """
    from PIL import Image

    path = Path(path)
    file = path if path.suffix == ".npz" else path / "gt_cameras.npz"
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k], dtype=np.float64) for k in npz.files}
    except FileNotFoundError:
        raise UserError(f"{file} does not exist; point to a CO3D sequence folder") from None
    except (ValueError, OSError) as err:
        raise UserError(f"{file} is not a readable .npz file ({err}); regenerate it") from None
    missing = [k for k in ("gtR", "gtT", "gtFL") if k not in arrays]
    if missing:
        raise UserError(f"{file} lacks {', '.join(missing)}; it is not a CO3D gt_cameras.npz")
    R, T, focal = arrays["gtR"], arrays["gtT"], arrays["gtFL"]
    n = len(R)
    pp = arrays.get("gtPP", np.zeros((n, 2)))
    if (R.shape != (n, 3, 3) or T.shape != (n, 3) or focal.shape not in ((n, 2), (n,))
            or pp.shape != (n, 2)):
        raise UserError(f"{file} has inconsistent shapes gtR {R.shape}, gtT {T.shape}, gtFL "
                        f"{focal.shape}; expected [N, 3, 3], [N, 3], [N, 2]")
    if not all(np.all(np.isfinite(a)) for a in (R, T, focal, pp)):
        raise UserError(f"{file} contains NaN/inf values; regenerate it")
    images = sorted(p for p in file.parent.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if images and len(images) != n:
        raise UserError(f"{file.parent} holds {len(images)} images for {n} cameras; keep only "
                        "the frames of gt_cameras.npz")
    if images:
        sizes = []
        for p in images:
            with Image.open(p) as image:
                sizes.append(image.size)
        wh = np.array(sizes, dtype=np.float64)
    elif image_size is not None:
        wh = np.tile(np.asarray(image_size, dtype=np.float64), (n, 1))
    else:
        raise UserError(f"no images next to {file} to read the image sizes from; pass "
                        "image_size=(width, height)")
    K, T_world_cam = pytorch3d_to_opencv(
        torch.from_numpy(R), torch.from_numpy(T), torch.from_numpy(focal),
        torch.from_numpy(pp), torch.from_numpy(wh[:, ::-1].copy()),  # PyTorch3D wants (H, W)
    )
    return Cameras(
        K=K.to(dtype), T_world_cam=T_world_cam.to(dtype),
        width=torch.from_numpy(wh[:, 0]).long(), height=torch.from_numpy(wh[:, 1]).long(),
        image_paths=[str(p) for p in images] if images else None,
        names=[p.name for p in images] if images else None,
    )


# ------------------------------------------------------------------ CO3D v2 annotations

INTRINSICS_FORMATS = ("ndc_isotropic", "ndc_norm_image_bounds")


@dataclass(eq=False)
class Co3dSequence:
    """One CO3D sequence: its frames (sorted by frame number) and their cameras.

    Attributes:
        name: the sequence name.
        category: the category (folder) it belongs to.
        frame_numbers: ``[N]`` frame numbers.
        cameras: OpenCV :class:`Cameras` ``[N]`` in CO3D's world frame, with
            ``image_paths`` (absolute) and ``names`` (the image file names).
        mask_paths: ``[N]`` absolute mask paths (None where the annotation has none).
        depth_paths: ``[N]`` absolute depth paths (None where the annotation has none).
        viewpoint_quality_score: from ``sequence_annotations.jgz`` (None when absent).
    """

    name: str
    category: str
    frame_numbers: list[int]
    cameras: Cameras
    mask_paths: list[str | None]
    depth_paths: list[str | None]
    viewpoint_quality_score: float | None = None

    def __len__(self) -> int:
        return len(self.frame_numbers)

    @property
    def image_paths(self) -> list[str]:
        return list(self.cameras.image_paths or [])


def _load_jgz(file: Path) -> list:
    try:
        with gzip.open(file, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, EOFError, ValueError) as err:
        raise UserError(f"{file} is not a readable gzipped JSON file ({err}); re-download "
                        "it") from None
    if not isinstance(data, list):
        raise UserError(f"{file} does not hold a JSON list of annotations; it is not a CO3D "
                        "annotation file")
    return data


def _category_folder(root: Path, category: str | None) -> tuple[Path, Path, str]:
    """``(dataset root, category folder, category name)``."""
    if category is None and (root / "frame_annotations.jgz").is_file():
        return root.parent, root, root.name
    if category is None:
        found = sorted(p.parent.name for p in root.glob("*/frame_annotations.jgz"))
        hint = f" (categories here: {', '.join(found)})" if found else ""
        raise UserError(f"{root} has no frame_annotations.jgz; pass a CO3D category folder "
                        f"or the dataset root and a category{hint}")
    folder = root / category
    if not (folder / "frame_annotations.jgz").is_file():
        raise UserError(f"{folder} has no frame_annotations.jgz; point to a CO3D v2 dataset "
                        "root that holds this category")
    return root, folder, category


def _selected_frames(folder: Path, set_list: str | None, split: str | None
                     ) -> set[tuple[str, int]] | None:
    if split is None:
        return None
    files = sorted((folder / "set_lists").glob("set_lists_*.json"))
    names = [f.name[len("set_lists_"):-len(".json")] for f in files]
    if set_list is None:
        if not names:
            raise UserError(f"{folder / 'set_lists'} holds no set_lists_*.json to take the "
                            f"{split!r} split from; drop the split or add the set lists")
        set_list = "fewview_dev" if "fewview_dev" in names else names[0]
        if len(names) > 1 and set_list != "fewview_dev":
            raise UserError(f"{folder / 'set_lists'} holds several set lists ({', '.join(names)}"
                            "); choose one with set_list")
    file = folder / "set_lists" / f"set_lists_{set_list}.json"
    try:
        lists = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{file} does not exist; choose one of {names or 'no set lists'}") \
            from None
    except (OSError, ValueError) as err:
        raise UserError(f"{file} is not readable JSON ({err}); re-download it") from None
    if split not in lists:
        raise UserError(f"{file} has no {split!r} split; it has {', '.join(lists)}")
    return {(str(e[0]), int(e[1])) for e in lists[split]}


def _viewpoint_cameras(entries: list[dict], root: Path, file: Path, dtype: torch.dtype
                       ) -> Cameras:
    """OpenCV cameras of frame annotations (one sequence)."""
    R, T, focal, pp, hw = [], [], [], [], []
    for e in entries:
        vp, image = e.get("viewpoint"), e.get("image")
        if not isinstance(vp, dict) or not isinstance(image, dict):
            raise UserError(f"{file}: frame {e.get('frame_number')} of "
                            f"{e.get('sequence_name')} lacks a viewpoint or an image entry")
        fmt = str(vp.get("intrinsics_format", "ndc_norm_image_bounds")).lower()
        if fmt not in INTRINSICS_FORMATS:
            raise UserError(f"{file}: unknown intrinsics_format {fmt!r}; CO3D uses "
                            f"{' or '.join(INTRINSICS_FORMATS)}")
        h, w = (float(v) for v in image["size"])
        f = np.asarray(vp["focal_length"], np.float64).reshape(-1)
        p = np.asarray(vp["principal_point"], np.float64).reshape(-1)
        f = np.repeat(f, 2) if f.size == 1 else f
        if fmt == "ndc_norm_image_bounds":
            # per-axis half sizes -> the isotropic NDC of pytorch3d_to_opencv
            ratio = np.array([w, h]) / min(w, h)
            f, p = f * ratio, p * ratio
        R.append(np.asarray(vp["R"], np.float64))
        T.append(np.asarray(vp["T"], np.float64))
        focal.append(f)
        pp.append(p)
        hw.append((h, w))
    arrays = [np.stack(a) for a in (R, T, focal, pp)]
    hw_arr = np.asarray(hw, np.float64)
    if (arrays[0].shape[1:] != (3, 3) or arrays[1].shape[1:] != (3,)
            or arrays[2].shape[1:] != (2,) or arrays[3].shape[1:] != (2,)):
        raise UserError(f"{file}: viewpoint R, T, focal_length, principal_point must be 3x3, "
                        "3, 2 and 2 numbers")
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise UserError(f"{file}: a viewpoint holds NaN/inf values; re-download it")
    K, T_world_cam = pytorch3d_to_opencv(*(torch.from_numpy(a) for a in arrays),
                                         torch.from_numpy(hw_arr))
    return Cameras(K=K.to(dtype), T_world_cam=T_world_cam.to(dtype),
                   width=torch.from_numpy(hw_arr[:, 1]).long(),
                   height=torch.from_numpy(hw_arr[:, 0]).long(),
                   image_paths=[str(root / e["image"]["path"]) for e in entries],
                   names=[Path(e["image"]["path"]).name for e in entries])


def read_co3d_sequences(
    root: str | os.PathLike,
    category: str | None = None,
    split: str | None = None,
    set_list: str | None = None,
    sequences: Sequence[str] | None = None,
    min_frames: int = 1,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Co3dSequence]:
    """Read the sequences of one CO3D v2 category (layout in the module docstring).

    Args:
        root: the dataset root (then give ``category``) or the category folder itself.
        category: the category folder name under ``root``.
        split: ``train``/``val``/``test``: only the frames of that split of a set list.
        set_list: the set list ``set_lists/set_lists_<set_list>.json``; None: ``fewview_dev``
            where present, else the only one.
        sequences: only these sequence names (None: all).
        min_frames: drop sequences with fewer (selected) frames.
        dtype: float dtype of the cameras.

    Returns:
        ``{sequence_name: Co3dSequence}`` in name order, frames sorted by frame number.
        Image, mask and depth paths are absolute (``root / annotation path``); the files
        are not opened.

    Raises:
        UserError: no ``frame_annotations.jgz`` (one sentence), unreadable or malformed
            annotations, an unknown split or set list.
    """
    root, folder, category = _category_folder(Path(root), category)
    file = folder / "frame_annotations.jgz"
    frames = _load_jgz(file)
    quality: dict[str, float | None] = {}
    seq_file = folder / "sequence_annotations.jgz"
    if seq_file.is_file():
        for s in _load_jgz(seq_file):
            if isinstance(s, dict) and "sequence_name" in s:
                quality[str(s["sequence_name"])] = s.get("viewpoint_quality_score")
    keep = _selected_frames(folder, set_list, split)
    wanted = None if sequences is None else set(sequences)
    by_sequence: dict[str, list[dict]] = {}
    for e in frames:
        if not isinstance(e, dict) or "sequence_name" not in e or "frame_number" not in e:
            raise UserError(f"{file} holds an entry without sequence_name/frame_number; it is "
                            "not a CO3D frame annotation file")
        name, number = str(e["sequence_name"]), int(e["frame_number"])
        if wanted is not None and name not in wanted:
            continue
        if keep is not None and (name, number) not in keep:
            continue
        by_sequence.setdefault(name, []).append(e)
    out: dict[str, Co3dSequence] = {}
    for name in sorted(by_sequence):
        entries = sorted(by_sequence[name], key=lambda e: int(e["frame_number"]))
        if len(entries) < max(1, min_frames):
            continue

        def path_of(e: dict, key: str, field: str = "path") -> str | None:
            value = e.get(key)
            if isinstance(value, dict) and value.get(field):
                return str(root / value[field])
            return None

        out[name] = Co3dSequence(
            name=name, category=category,
            frame_numbers=[int(e["frame_number"]) for e in entries],
            cameras=_viewpoint_cameras(entries, root, file, dtype),
            mask_paths=[path_of(e, "mask") for e in entries],
            depth_paths=[path_of(e, "depth") for e in entries],
            viewpoint_quality_score=quality.get(name))
    return out


def co3d_categories(root: str | os.PathLike) -> list[str]:
    """The category folders under a CO3D v2 dataset root (those with frame annotations)."""
    return sorted(p.parent.name for p in Path(root).glob("*/frame_annotations.jgz"))


def write_co3d_category(
    root: str | os.PathLike,
    category: str,
    sequences: dict[str, Cameras],
    intrinsics_format: str = "ndc_isotropic",
    set_lists: dict[str, dict[str, list[str]]] | None = None,
) -> Path:
    """Write CO3D v2 annotations of OpenCV cameras (fixtures, exports); the inverse of
    :func:`read_co3d_sequences` (the images themselves are not written).

    Args:
        root: the dataset root; ``root/category`` is created.
        category: the category name.
        sequences: ``{sequence_name: Cameras [N]}`` (frame ``k`` gets frame number ``k``,
            image ``<category>/<seq>/images/frame{k:06d}.jpg`` and a mask path).
        intrinsics_format: ``ndc_isotropic`` (CO3D v2) or ``ndc_norm_image_bounds`` (v1).
        set_lists: ``{name: {split: [sequence_name, ...]}}`` written as
            ``set_lists/set_lists_<name>.json`` with every frame of those sequences.

    Returns:
        The category folder.
    """
    from geometry.io.atomic import atomic_write_bytes, atomic_write_text

    if intrinsics_format not in INTRINSICS_FORMATS:
        raise ValueError(f"intrinsics_format must be one of {INTRINSICS_FORMATS}")
    folder = Path(root) / category
    folder.mkdir(parents=True, exist_ok=True)
    frames, seqs = [], []
    paths: dict[str, list[tuple[int, str]]] = {}
    for name, cams in sequences.items():
        hw = torch.stack((cams.height, cams.width), -1).double()
        R, T, focal, pp = opencv_to_pytorch3d(cams.K.double(), cams.T_world_cam.double(), hw)
        if intrinsics_format == "ndc_norm_image_bounds":
            ratio = hw.flip(-1) / hw.min(-1, keepdim=True).values  # (W, H) / min
            focal, pp = focal / ratio, pp / ratio
        paths[name] = []
        for k in range(len(R)):
            image = f"{category}/{name}/images/frame{k:06d}.jpg"
            paths[name].append((k, image))
            frames.append({
                "sequence_name": name, "frame_number": k, "frame_timestamp": float(k) / 30.0,
                "image": {"path": image, "size": [int(hw[k, 0]), int(hw[k, 1])]},
                "depth": None,
                "mask": {"path": f"{category}/{name}/masks/frame{k:06d}.png", "mass": 0.0},
                "viewpoint": {"R": R[k].tolist(), "T": T[k].tolist(),
                              "focal_length": focal[k].tolist(),
                              "principal_point": pp[k].tolist(),
                              "intrinsics_format": intrinsics_format},
                "meta": {}})
        seqs.append({"sequence_name": name, "category": category,
                     "video": {"path": f"{category}/{name}/video.mp4", "length": len(R)},
                     "point_cloud": None, "viewpoint_quality_score": 1.0})
    atomic_write_bytes(folder / "frame_annotations.jgz",
                       gzip.compress(json.dumps(frames).encode("utf-8"), mtime=0))
    atomic_write_bytes(folder / "sequence_annotations.jgz",
                       gzip.compress(json.dumps(seqs).encode("utf-8"), mtime=0))
    for list_name, splits in (set_lists or {}).items():
        content = {split: [[n, k, p] for n in names for k, p in paths[n]]
                   for split, names in splits.items()}
        (folder / "set_lists").mkdir(exist_ok=True)
        atomic_write_text(folder / "set_lists" / f"set_lists_{list_name}.json",
                          json.dumps(content))
    return folder

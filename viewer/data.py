"""What the viewer shows, and how it is read from disk.

:class:`ViewerScene` gathers the layers of one view: Gaussian splats, cameras (with their
photos as thumbnails), a point cloud and 3D boxes. :func:`load_scene` builds one from

- a standard 3DGS PLY (original 3DGS code, nerfstudio's exporter, gsplat), alone;
- an output folder of ``recon fit``: ``splats.ply``, ``transforms.json`` (cameras and
  photos), ``sparse/0/`` (COLMAP text model; its ``points3D`` is the initial point cloud;
  ``cameras/`` in older outputs) and ``metrics.json``;
- an output folder of the original 3DGS code: ``point_cloud/iteration_N/point_cloud.ply``
  (the last N), ``cameras.json`` and ``input.ply`` (the SfM points);
- the output folder of any other registered reconstruction method (``metrics.json`` names
  it): read through the scene-model protocol, shown as its cameras and a point cloud sampled
  from its renders in those cameras (:func:`points_from_scene_model`).

nuScenes samples are read by :mod:`viewer.nusc`, mmdet3d info keyframes by
:mod:`viewer.mmdet3d`. Everything is in the world frame of the
files; cameras are OpenCV ``T_world_cam``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geometry.errors import UserError

_SOURCE_HINT = ("give the output folder of recon fit (or of the original 3DGS code) or a "
                "3DGS .ply file")


@dataclass
class Boxes3D:
    """B oriented 3D boxes in the world frame (the nuScenes box convention)::

              up (z of the box)
              |   l (length, along the box's x: its heading)
              |  /
              | /
              o ------ w (width, along the box's y)

    Attributes:
        centres: ``[B, 3]`` box centres, metres.
        sizes_wlh: ``[B, 3]`` width, length, height (nuScenes order).
        quats_wxyz: ``[B, 4]`` rotation box-to-world, ``wxyz``.
        labels: B class names.
        scores: ``[B]`` detection scores, or ``None`` for ground truth.
        name: the layer's name in the viewer ("ground truth", "detections").
        color: RGB 0-255 of the layer.
    """

    centres: np.ndarray
    sizes_wlh: np.ndarray
    quats_wxyz: np.ndarray
    labels: list[str]
    scores: np.ndarray | None
    name: str
    color: tuple[int, int, int]

    def __len__(self) -> int:
        return int(self.centres.shape[0])

    def corners(self) -> np.ndarray:
        """``[B, 8, 3]`` world corners: 0-3 the bottom face counter-clockwise seen from
        above, starting front-left (front = +length = the heading), 4-7 the top face in
        the same order. :data:`BOX_EDGES` pairs them."""
        import torch

        from geometry.so3 import quat_to_matrix

        w, l, h = (self.sizes_wlh[:, i : i + 1] / 2.0 for i in range(3))
        sx = np.array([1, -1, -1, 1, 1, -1, -1, 1], dtype=np.float64)
        sy = np.array([1, 1, -1, -1, 1, 1, -1, -1], dtype=np.float64)
        sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1], dtype=np.float64)
        local = np.stack([l * sx, w * sy, h * sz], axis=-1)  # [B, 8, 3]
        R = quat_to_matrix(torch.from_numpy(np.asarray(self.quats_wxyz, np.float64))).numpy()
        return np.einsum("bij,bkj->bki", R, local) + self.centres[:, None, :]


BOX_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
                      [0, 4], [1, 5], [2, 6], [3, 7], [0, 7], [3, 4]])
"""Corner pairs drawn for a box: the 12 edges and a cross on the front face (heading)."""


@dataclass
class ViewerScene:
    """Everything one view shows (any layer may be absent).

    Attributes:
        title: shown in the viewer's panel.
        splats: the Gaussians, or ``None``.
        cameras: a 1-D :class:`~geometry.cameras.Cameras` batch, or ``None``; its
            ``image_paths`` (where the files exist) become the frustums' thumbnails.
        points_world: ``[P, 3]`` a point cloud (the initial SfM points, LiDAR), or ``None``.
        point_colors: ``[P, 3]`` uint8, or ``None``.
        boxes: 3D box layers.
        up: ``[3]`` world up if the source says so (nuScenes: +z), else ``None`` (then it
            is estimated from the cameras).
        stats: extra lines for the statistics panel (label -> value).
    """

    title: str
    splats: object | None = None  # reconstruction.gaussians.GaussianScene
    cameras: object | None = None  # geometry.cameras.Cameras
    points_world: np.ndarray | None = None
    point_colors: np.ndarray | None = None
    boxes: list[Boxes3D] = field(default_factory=list)
    up: np.ndarray | None = None
    stats: dict[str, str] = field(default_factory=dict)

    def content_points(self) -> np.ndarray | None:
        """``[M, 3]`` what the initial view must frame: opaque-enough splat centres,
        points, box corners (cameras are added separately)."""
        parts = []
        if self.splats is not None and self.splats.num_gaussians:
            means = self.splats.means.detach().cpu().double().numpy()
            opacity = self.splats.opacities.detach().cpu().numpy()
            visible = means[opacity > 0.05]
            parts.append(visible if len(visible) else means)
        if self.points_world is not None and len(self.points_world):
            parts.append(np.asarray(self.points_world, dtype=np.float64))
        for boxes in self.boxes:
            if len(boxes):
                parts.append(boxes.corners().reshape(-1, 3))
        return np.concatenate(parts) if parts else None


def read_point_cloud_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(xyz [P, 3] float64, rgb [P, 3] uint8)`` of a coloured point-cloud PLY
    (``x y z`` and optionally ``red green blue``; grey when absent)."""
    from plyfile import PlyData, PlyParseError

    try:
        vertex = PlyData.read(str(path))["vertex"]
    except (PlyParseError, ValueError, OSError, EOFError, IndexError, KeyError) as err:
        raise UserError(f"{path} is not a readable point-cloud PLY ({err}); "
                        "remove or re-export it.") from None
    names = {p.name for p in vertex.properties}
    if not {"x", "y", "z"} <= names:
        raise UserError(f"{path} has no x, y, z vertex properties; remove or re-export it.")
    xyz = np.stack([np.asarray(vertex[k], np.float64) for k in "xyz"], axis=1)
    if {"red", "green", "blue"} <= names:
        rgb = np.stack([np.asarray(vertex[k]) for k in ("red", "green", "blue")], axis=1)
        if np.issubdtype(rgb.dtype, np.floating):
            rgb = np.clip(np.round(rgb * 255.0), 0, 255)
        rgb = rgb.astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 160, np.uint8)
    return xyz, rgb


def read_3dgs_cameras_json(path: str | os.PathLike):
    """The ``cameras.json`` of the original 3DGS code as OpenCV :class:`Cameras`.

    Each entry has ``width, height, fx, fy``, ``position`` (camera centre) and
    ``rotation`` (camera-to-world rotation, COLMAP/OpenCV axes): the code writes
    ``inv([R_cw | t_cw])``. The principal point is the image centre.
    """
    import torch

    from geometry.cameras import Cameras

    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        entries = sorted(entries, key=lambda e: int(e.get("id", 0)))
        T = np.tile(np.eye(4), (len(entries), 1, 1))
        K = np.tile(np.eye(3), (len(entries), 1, 1))
        for i, e in enumerate(entries):
            T[i, :3, :3] = np.asarray(e["rotation"], dtype=np.float64).reshape(3, 3)
            T[i, :3, 3] = np.asarray(e["position"], dtype=np.float64).reshape(3)
            K[i, 0, 0], K[i, 1, 1] = float(e["fx"]), float(e["fy"])
            K[i, 0, 2], K[i, 1, 2] = float(e["width"]) / 2.0, float(e["height"]) / 2.0
        names = [str(e.get("img_name", i)) for i, e in enumerate(entries)]
        widths = [int(e["width"]) for e in entries]
        heights = [int(e["height"]) for e in entries]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} is not a 3DGS cameras.json ({err}); remove or regenerate "
                        "it.") from None
    if not entries:
        return None
    return Cameras(K=torch.from_numpy(K).float(), T_world_cam=torch.from_numpy(T).float(),
                   width=torch.tensor(widths), height=torch.tensor(heights), names=names)


def _find_splats(folder: Path, transforms_extra: dict) -> Path | None:
    """The splat PLY of an output folder (see the module doc), or ``None``."""
    if (folder / "splats.ply").is_file():
        return folder / "splats.ply"
    # nerfstudio's ply_file_path names the initial point cloud (recon fit: sparse_pc.ply);
    # only a 3DGS PLY (with opacities) is splats
    named = transforms_extra.get("ply_file_path")
    if isinstance(named, str) and (folder / named).is_file() and _is_splat_ply(folder / named):
        return folder / named
    iterations = []
    for candidate in (folder / "point_cloud").glob("iteration_*/point_cloud.ply"):
        match = re.fullmatch(r"iteration_(\d+)", candidate.parent.name)
        if match:
            iterations.append((int(match.group(1)), candidate))
    if iterations:
        return max(iterations)[1]
    plys = sorted(p for p in folder.glob("*.ply") if p.name not in ("input.ply", "sparse_pc.ply"))
    if len(plys) == 1:
        return plys[0]
    return None


def _is_splat_ply(path: Path) -> bool:
    """Whether a PLY's header declares 3DGS splats (an ``opacity`` vertex property)."""
    try:
        with open(path, "rb") as f:
            header = f.read(4096)
    except OSError:
        return False
    return b"property float opacity" in header.split(b"end_header", 1)[0]


def _metrics_stats(path: Path) -> dict[str, str]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    stats = {}
    if isinstance(metrics.get("training_psnr_db"), int | float):
        stats["training PSNR"] = f"{metrics['training_psnr_db']:.2f} dB"
    if isinstance(metrics.get("iterations"), int):
        stats["iterations"] = str(metrics["iterations"])
    total = metrics.get("timings_s", {}).get("total") if isinstance(
        metrics.get("timings_s"), dict) else None
    if isinstance(total, int | float):
        stats["fit time"] = f"{total:.0f} s"
    return stats


def _method_of(folder: Path) -> str | None:
    """The method named in ``folder/metrics.json`` (a ``recon fit`` output), if any."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    method = metrics.get("method") if isinstance(metrics, dict) else None
    return method if isinstance(method, str) else None


def _load_scene_model(folder: Path, scene: ViewerScene) -> None:
    """Cameras and sampled points of a registered method's output that has no splats."""
    name = _method_of(folder)
    if name is None:
        return
    from reconstruction.methods import METHODS, method_names

    method_names()  # loads the entry-point methods too
    if name not in METHODS:
        return
    model = METHODS[name].load(folder, "cpu")
    scene.cameras = model.cameras
    scene.points_world, scene.point_colors = points_from_scene_model(model)


def points_from_scene_model(model, max_side: int = 160,
                            min_alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A coloured point cloud of any scene model: every training camera rendered at most
    ``max_side`` pixels wide or high, each pixel with opacity above ``min_alpha`` unprojected
    at its rendered depth. ``(points_world [N, 3] float32, colours [N, 3] uint8)``."""
    import torch

    from geometry.io.images import to_uint8

    points, colours = [], []
    cameras = model.cameras
    for k in range(len(cameras)):
        camera = cameras[k:k + 1]
        w, h = int(torch.as_tensor(camera.width).reshape(-1)[0]), \
            int(torch.as_tensor(camera.height).reshape(-1)[0])
        scale = min(1.0, max_side / max(w, h))
        small = camera.resize(max(1, round(w * scale)), max(1, round(h * scale)))
        with torch.no_grad():
            out = model.render(small, outputs=("rgb", "depth", "alpha"))
        keep = (out.alpha[0] > min_alpha) & torch.isfinite(out.depth[0]) & (out.depth[0] > 0)
        uv = small[0].pixel_centers()  # [h, w, 2]
        pts = small[0].unproject(uv[keep], out.depth[0][keep].to(small.dtype))
        points.append(pts.float().cpu().numpy())
        colours.append(to_uint8(out.rgb[0][keep]))
    if not points:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    return np.concatenate(points), np.concatenate(colours)


def load_scene(path: str | os.PathLike) -> ViewerScene:
    """Read a 3DGS PLY or an output folder (see the module doc).

    Raises:
        UserError: the path does not exist, is a file that is not a PLY, is a PLY without
            3DGS properties, or is a folder with nothing to show.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; {_SOURCE_HINT}.")
    if path.is_file() and path.suffix.lower() != ".ply":
        raise UserError(f"{path} is not a .ply file; {_SOURCE_HINT} (recon view also reads "
                        "nuScenes dataroots and mmdet3d info .pkl files).")
    from reconstruction.gaussians import read_ply  # torch: only once the path looks right

    if path.is_file():
        return ViewerScene(title=path.name, splats=read_ply(path))

    scene = ViewerScene(title=path.resolve().name)
    extra: dict = {}
    cameras = None
    if (path / "transforms.json").is_file():
        from geometry.io.transforms_json import read_transforms_json

        parsed = read_transforms_json(path / "transforms.json", require_images=False)
        cameras, extra = parsed.cameras, parsed.extra
    colmap_dir = None
    from geometry.io.colmap import find_colmap_model, read_colmap_model

    for candidate in (path / "sparse" / "0", path / "cameras", path):
        if find_colmap_model(candidate) is not None:
            colmap_dir = candidate
            break
    if colmap_dir is not None:
        model = read_colmap_model(colmap_dir)
        if cameras is None:
            images = path / "images"
            cameras = model.to_cameras(image_dir=images if images.is_dir() else None)
        if len(model.points3D):
            scene.points_world = model.points3D.xyz
            scene.point_colors = model.points3D.rgb
    if cameras is None and (path / "cameras.json").is_file():
        cameras = read_3dgs_cameras_json(path / "cameras.json")
    if scene.points_world is None and (path / "input.ply").is_file():
        scene.points_world, scene.point_colors = read_point_cloud_ply(path / "input.ply")
    splats_path = _find_splats(path, extra)
    if splats_path is not None:
        scene.splats = read_ply(splats_path)
    scene.cameras = cameras
    if scene.splats is None:
        _load_scene_model(path, scene)
    if scene.splats is None and scene.cameras is None and scene.points_world is None:
        raise UserError(nothing_to_show(path))
    if (path / "metrics.json").is_file():
        scene.stats.update(_metrics_stats(path / "metrics.json"))
    return scene


_SCENE_ENTRIES = ("splats.ply", "transforms.json", "sparse", "cameras", "cameras.json",
                  "input.ply", "point_cloud", "metrics.json")


def holds_scene(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` has any file :func:`load_scene` reads (a recon fit or 3DGS
    output, a .ply): then it is shown as a scene, not as the data next to it."""
    folder = Path(folder)
    return any((folder / name).exists() for name in _SCENE_ENTRIES) or any(
        folder.glob("*.ply"))


def nothing_to_show(folder: str | os.PathLike) -> str:
    """The one-sentence error for a folder that holds no scene, no nuScenes tables and no
    info pickle: what each kind of source needs."""
    folder = Path(folder)
    if (folder / "samples").is_dir() or (folder / "sweeps").is_dir():
        return (f"{folder} holds nuScenes sensor files but no table folder; a nuScenes "
                "dataroot needs its v1.0-*/ tables (with sample.json) next to samples/, or "
                "give the mmdet3d info .pkl made from it.")
    return (f"found nothing to show in {folder}: give the OUT folder of recon fit "
            "(splats.ply, transforms.json, sparse/0/), an original 3DGS output folder "
            "(point_cloud/iteration_*/), a 3DGS .ply, a nuScenes dataroot (with its "
            "v1.0-*/ tables) or an mmdet3d info .pkl.")


def load_thumbnail(path: str | os.PathLike | None, max_side: int = 320) -> np.ndarray | None:
    """The photo at ``path`` as ``[h, w, 3]`` uint8 with its longer side at most
    ``max_side`` (EXIF orientation applied), or ``None`` if it cannot be read."""
    if path is None or not Path(path).is_file():
        return None
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None

"""Fixtures of the viewer tests: tiny splat scenes, rings of cameras, a recon-fit OUT folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from geometry.cameras import Cameras
from geometry.se3 import look_at
from reconstruction.gaussians import GaussianScene

FIXTURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "nuscenes_fixture"


def make_splats(n: int = 300, centre=(0.0, 0.0, 0.0), spread: float = 0.3,
                color=(0.9, 0.35, 0.1), sigma: float = 0.03, opacity: float = 0.8,
                sh_degree: int = 0, seed: int = 0) -> GaussianScene:
    """``n`` isotropic Gaussians of one colour, normally spread around ``centre``."""
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor(centre, dtype=torch.float32) + spread * torch.randn(n, 3, generator=g)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    rgb = torch.tensor(color, dtype=torch.float32).expand(n, 3)
    from reconstruction.splatting.sh import rgb_to_sh

    return GaussianScene(
        means=means, quats=quats,
        log_scales=torch.full((n, 3), math.log(sigma)),
        logit_opacities=torch.full((n,), math.log(opacity / (1.0 - opacity))),
        sh0=rgb_to_sh(rgb)[:, None, :].clone(),
        shN=torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3),
    )


def ring_cameras(n: int = 6, centre=(0.0, 0.0, 0.0), radius: float = 2.0,
                 height: float = 0.5, up=(0.0, -1.0, 0.0), width: int = 64,
                 height_px: int = 48, arc_deg: float = 360.0, start_deg: float = 0.0,
                 image_paths: list[str] | None = None) -> Cameras:
    """``n`` cameras on a circle around ``up`` through ``centre``, looking at it."""
    centre = np.asarray(centre, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    e1 = np.cross(up, np.eye(3)[int(np.argmin(np.abs(up)))])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    poses = []
    for i in range(n):
        step = arc_deg / n if arc_deg >= 360.0 else arc_deg / max(n - 1, 1)
        a = math.radians(start_deg + step * i)
        eye = centre + height * up + radius * (math.cos(a) * e1 + math.sin(a) * e2)
        poses.append(look_at(eye, centre, up))
    f = 0.8 * width
    K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height_px / 2.0], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    return Cameras(K=K.expand(n, 3, 3), T_world_cam=torch.tensor(np.stack(poses)),
                   width=width, height=height_px, image_paths=image_paths)


def write_out_dir(out: Path, splats: GaussianScene, cameras: Cameras,
                  points: np.ndarray | None = None) -> Path:
    """A folder laid out like ``recon fit``'s output (photos rendered from the splats)."""
    from geometry.io.colmap import ColmapModel, write_colmap_model
    from geometry.io.images import write_png
    from geometry.io.transforms_json import write_point_cloud_ply, write_transforms_json
    from reconstruction.gaussians import write_ply
    from viewer.render import render_rgb

    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    names = [f"view_{i:02d}.png" for i in range(len(cameras))]
    for i, name in enumerate(names):
        rgb = render_rgb(splats, cameras.T_world_cam[i].numpy(), cameras.K[i].numpy(),
                         int(cameras.width[i]), int(cameras.height[i]), (1.0, 1.0, 1.0))
        write_png(out / "images" / name, rgb)
    write_ply(out / "splats.ply", splats)
    plain = Cameras(K=cameras.K, T_world_cam=cameras.T_world_cam, width=cameras.width,
                    height=cameras.height, names=names)
    if points is None:
        points = splats.means.double().numpy()[::3]
    write_colmap_model(out / "sparse" / "0", ColmapModel.from_cameras(
        plain, points_xyz=points, points_rgb=np.full((len(points), 3), 200, np.uint8)))
    # as recon fit writes it: ply_file_path names the coloured SfM cloud, not the splats
    write_point_cloud_ply(out / "sparse_pc.ply", points, np.full((len(points), 3), 200, np.uint8))
    write_transforms_json(out / "transforms.json", plain,
                          file_paths=[f"images/{n}" for n in names],
                          extra={"ply_file_path": "sparse_pc.ply"})
    (out / "metrics.json").write_text(json.dumps(
        {"training_psnr_db": 31.25, "iterations": 500, "timings_s": {"total": 42.0}}))
    return out


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recon-fit-like OUT folder: 300 orange splats at (1, -2, 3), six ring cameras."""
    splats = make_splats(centre=(1.0, -2.0, 3.0))
    cameras = ring_cameras(6, centre=(1.0, -2.0, 3.0), arc_deg=150.0)
    return write_out_dir(tmp_path_factory.mktemp("fit") / "out", splats, cameras)


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The builders above, for tests (test modules cannot import conftest)."""
    return SimpleNamespace(make_splats=make_splats, ring_cameras=ring_cameras,
                           write_out_dir=write_out_dir, fixture=FIXTURE)

"""The issue's real-data check: NOCS maps computed from splats fitted to the CO3D apple with
ALL its ground-truth cameras give those cameras back.

1. Gaussian splats are fitted to the real photos (shrunk to ``max_size`` px) with the
   ground-truth cameras fixed (the engine's fit with given cameras,
   :func:`reconstruction.engine.fit.fit`: SfM matches only, the cloud is triangulated with
   the given cameras, poses stay fixed, outputs in their frame).
2. The NOCS frame comes from the splats: the object's centre is the point closest to every
   camera's optical axis (CO3D orbits aim at the object); the foreground is the splats
   within ``radius_share`` of the mean camera distance of it; their robust bounding box
   (``percentile`` .. 100 - ``percentile`` per axis, in axes turned by a fixed random
   rotation: the NOCS frame is not the world's) is normalised to the unit cube (diagonal 1).
3. Every splat is coloured with ``[NOCS, foreground]`` and rendered into every camera
   (:func:`~reconstruction.splatting.rasterization.rasterization`, 4 channels): a pixel is
   the object where the splats are opaque and the foreground's share of the weight is
   high; its NOCS value is the foreground-weighted mean. The fitted splats are wide and
   half transparent (median opacity 0.16 on the apple), so a pixel's blend reaches through
   the surface to points behind it, and differently from every view (the bias
   :mod:`.co3d_check` describes); the foreground splats are therefore rendered sharper and
   more opaque (``scale_factor`` 0.5, ``opacity_gain`` 4), so that the front surface
   dominates. Measured on the apple (500 fit steps at 144x256, foreground radius 0.22):
   median rotation error 4.45 deg with the splats as fitted, 1.88 deg at 0.7 x their size,
   0.65 deg at 0.5 x their size and 4 x their opacity (radius 0.19: 1.01 deg, 0.25:
   0.53 deg).
4. :func:`~pose.camera.sparp.solver.solve_views` gives the cameras; they are compared with the
   ground truth after the similarity alignment (:func:`geometry.pose_metrics.pose_metrics`).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pose.camera.sparp.co3d_check import Co3dCheck
from pose.camera.sparp.solver import NocsView, SolverConfig, solve_views

__all__ = ["Co3dSplatsCheck", "check_from_splats", "fit_splats", "nocs_views_from_splats",
           "run_co3d_splats_check"]


@dataclass
class Co3dSplatsCheck(Co3dCheck):
    """What the check measured: :class:`Co3dCheck`'s figures and the splat fit's."""

    gaussians: int
    foreground_gaussians: int
    object_pixels_median: float
    fit_psnr: float
    fit_s: float


def fit_splats(folder: str | os.PathLike, out: str | os.PathLike, cameras, max_size: int,
               iterations: int, quiet: bool = True, seed: int = 0,
               match_max_size: int = 480) -> dict:
    """Fit splats to the photos of ``folder`` with ``cameras`` fixed (their name order);
    writes ``out`` (``recon fit``'s outputs); returns its metrics. SfM matching runs on
    ``match_max_size`` px photos with plain SIFT (it only links the views and seeds the
    cloud; the cameras are given)."""
    from reconstruction.engine.config import FitConfig
    from reconstruction.engine.fit import fit

    cfg = FitConfig(images=Path(folder), out=Path(out), max_size=max_size,
                    iterations=iterations, threads=1, overwrite=True, quiet=quiet, seed=seed)
    cfg.init_options.sfm.match_max_size = match_max_size
    cfg.init_options.sfm.affine_features = False
    cfg.init_options.sfm.max_features = 2048
    cfg.init_options.sfm.retry = False
    return fit(cfg, cameras=cameras)


def nocs_views_from_splats(scene, T_world_cam: torch.Tensor, K: torch.Tensor, width: int,
                           height: int, centre: np.ndarray, radius: float,
                           R_world_nocs: np.ndarray, percentile: float = 1.0,
                           min_alpha: float = 0.9, min_share: float = 0.9,
                           opacity_gain: float = 1.0, scale_factor: float = 1.0
                           ) -> tuple[list[NocsView], np.ndarray]:
    """Render the NOCS maps of the splats within ``radius`` of ``centre`` (see the module
    doc, steps 2-3); returns the views and the foreground selection ``[N]`` bool.

    Args:
        scene: a :class:`~reconstruction.gaussians.GaussianScene` (world frame).
        T_world_cam: ``[V, 4, 4]``; K: ``[V, 3, 3]`` at ``width x height``.
        R_world_nocs: ``[3, 3]`` the NOCS axes in the world.
        opacity_gain, scale_factor: the foreground splats' opacities and sizes are
            multiplied by these for the rendering (see the module doc).
    """
    from reconstruction.splatting.rasterization import rasterization

    means = scene.means.detach().double().numpy()
    fg = np.linalg.norm(means - centre, axis=1) < radius
    local = (means - centre) @ R_world_nocs  # NOCS axes
    lo = np.percentile(local[fg], percentile, axis=0)
    hi = np.percentile(local[fg], 100.0 - percentile, axis=0)
    nocs = (local - (lo + hi) / 2) / np.linalg.norm(hi - lo) + 0.5
    inside = fg & (nocs >= 0).all(1) & (nocs <= 1).all(1)
    colors = np.concatenate((np.where(inside[:, None], nocs, 0.0), inside[:, None]), 1)
    dt = torch.float32
    gain = torch.where(torch.from_numpy(inside), opacity_gain, 1.0)
    opacities = (scene.opacities.detach().double() * gain).clamp(max=0.999)
    factor = torch.where(torch.from_numpy(inside), scale_factor, 1.0)[:, None]
    rendered, alphas, _ = rasterization(
        scene.means.detach().to(dt), scene.quats.detach().to(dt),
        (scene.scales.detach().double() * factor).to(dt), opacities.to(dt),
        torch.from_numpy(colors).to(dt),
        torch.linalg.inv(T_world_cam).to(dt), K.to(dt), width, height)
    views = []
    for v in range(len(T_world_cam)):
        out = rendered[v].double().numpy()
        alpha = alphas[v, ..., 0].double().numpy()
        weight = out[..., 3]
        mask = (alpha > min_alpha) & (weight > min_share * alpha)
        value = out[..., :3] / np.maximum(weight, 1e-6)[..., None]
        views.append(NocsView(nocs=np.where(mask[..., None], np.clip(value, 0, 1), 0.0),
                              mask=mask, K=K[v].double().numpy()))
    return views, inside


def run_co3d_splats_check(folder: str | os.PathLike, max_size: int = 256,
                          iterations: int = 500, radius_share: float = 0.22,
                          work_dir: str | os.PathLike | None = None, quiet: bool = True,
                          cfg: SolverConfig | None = None) -> Co3dSplatsCheck:
    """Fit, define the NOCS frame, render, solve and compare (see the module doc).

    Args:
        folder: a CO3D sequence folder with ``gt_cameras.npz`` and its photos.
        max_size: longest photo side for the fit and the maps (256: the apple at 144x256).
        iterations: optimisation steps of the fit.
        radius_share: the foreground's radius around the optical axes' centre, as a share
            of the mean camera distance to it (the apple's surface splats lie at 0.10-0.20,
            the table beyond).
        work_dir: where the fit is written (default: a temporary folder, removed).
    """
    from geometry.io.co3d import read_co3d
    from reconstruction.gaussians import read_ply

    cams = read_co3d(folder, dtype=torch.float64)
    with tempfile.TemporaryDirectory(prefix="sparp-co3d-") as tmp:
        out = Path(work_dir) if work_dir is not None else Path(tmp) / "fit"
        t0 = time.perf_counter()
        metrics = fit_splats(folder, out, cams, max_size, iterations, quiet=quiet)
        fit_s = time.perf_counter() - t0
        scene = read_ply(out / "splats.ply")
    psnr = metrics.get("training_psnr_db", float("nan"))
    return check_from_splats(scene, cams, max_size, radius_share, cfg, fit_s=fit_s,
                             fit_psnr=float(psnr))


def check_from_splats(scene, cams, max_size: int, radius_share: float = 0.22,
                      cfg: SolverConfig | None = None, fit_s: float = float("nan"),
                      fit_psnr: float = float("nan"), opacity_gain: float = 4.0,
                      scale_factor: float = 0.5) -> Co3dSplatsCheck:
    """Steps 2-4 of the module doc on fitted ``scene`` for the ground-truth ``cams``."""
    from geometry.errors import UserError
    from geometry.pose_metrics import accuracy_under, pose_metrics
    from geometry.se3 import optical_axes_point
    from geometry.so3 import random_rotation

    t1 = time.perf_counter()
    scale = max_size / float(max(cams.width.max(), cams.height.max()))
    W = int(round(float(cams.width[0]) * scale))
    H = int(round(float(cams.height[0]) * scale))
    K = cams.resize(W, H).K
    T_world_cam = cams.T_world_cam
    centre = optical_axes_point(T_world_cam)
    if centre is None:
        raise UserError("the sequence's optical axes do not converge; give an orbit "
                        "around one object.")
    centre = centre.numpy()
    distance = float(np.linalg.norm(T_world_cam[:, :3, 3].numpy() - centre, axis=1).mean())
    gen = torch.Generator().manual_seed(1)
    R_world_nocs = random_rotation((), generator=gen, dtype=torch.float64).numpy()
    views, inside = nocs_views_from_splats(scene, T_world_cam, K, W, H, centre,
                                           radius_share * distance, R_world_nocs,
                                           opacity_gain=opacity_gain,
                                           scale_factor=scale_factor)
    t2 = time.perf_counter()
    result = solve_views(views, cfg=cfg)
    t3 = time.perf_counter()
    m = pose_metrics(torch.from_numpy(result.T_obj_cam), T_world_cam)
    rra5, rra15 = (float(v) for v in accuracy_under(m.rel_rot_err_deg, (5.0, 15.0)))
    return Co3dSplatsCheck(
        rot_err_median_deg=m.rot_err_median_deg,
        rel_rot_err_median_deg=float(m.rel_rot_err_deg.median()), rra5=rra5, rra15=rra15,
        cca10=float(m.centre_under_10pct), views=len(views), image_size=(W, H),
        gaussians=scene.num_gaussians, foreground_gaussians=int(inside.sum()),
        object_pixels_median=float(np.median([v.mask.sum() for v in views])),
        fit_psnr=fit_psnr, fit_s=fit_s, render_s=t2 - t1, solve_s=t3 - t2, result=result)

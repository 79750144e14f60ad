"""Per-view depth priors of RDG-GS and their refinement.

Coarse priors (camera z-depth ``[H, W]`` per training view, 0 where unknown), all in the
normalised training frame of ``recon fit``:

- ``init``: the dense initial cloud projected into each view with a z-buffer;
- ``stereo``: two-view stereo between neighbouring training views (the SGBM pairs of
  :mod:`reconstruction.init.stereo`, re-run on the training cameras);
- ``fused``: stereo where it measured, the projected cloud elsewhere;
- ``mono``: a monocular network's relative inverse depth (:mod:`reconstruction.depth`),
  brought to metric depth by a scale/shift fit in inverse depth to the sparse SfM depths;
- ``files``: depth maps given per photo (a sensor's, or a network's run elsewhere), any
  scale and shift per view (the refinement's fit removes them).

Refinement (the paper's "refined depth priors"): a robust scale/shift fit of the prior to
the sparse metric depths of the SfM points seen in the view (global scene information),
a smooth multiplicative correction interpolated from the remaining sparse residuals (local
information), and push-pull filling of the holes from the surrounding depths. Pixel
coordinates are gsplat's/COLMAP's: the first pixel's centre is ``(0.5, 0.5)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from geometry.errors import UserError
from geometry.io.depth import read_depth_npy
from reconstruction.rdggs.config import RDGGSConfig


@dataclass
class DepthSamples:
    """Sparse metric depths of one view: pixel rows/cols and camera z."""

    rows: Tensor  # [S] long
    cols: Tensor  # [S] long
    z: Tensor  # [S] float


@dataclass
class DepthPriors:
    """Refined priors of every training view."""

    depth: list[Tensor]  # V x [H, W] camera z (0 where invalid)
    valid: list[Tensor]  # V x [H, W] bool
    source: str
    stats: dict = field(default_factory=dict)


def project_points(points: Tensor, K: Tensor, T_cam_world: Tensor, width: int,
                   height: int, radius: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels hit by world points, nearest point per pixel (a z-buffer).

    Args:
        points: ``[P, 3]`` world points.
        K: ``[3, 3]`` intrinsics (pixels, corner at 0).
        T_cam_world: ``[4, 4]`` world-to-camera (OpenCV).
        radius: each point covers the ``(2 radius + 1)^2`` pixels around its own, so that
            points of a surface close the gaps through which farther, occluded points
            would show.

    Returns:
        ``rows [S]``, ``cols [S]`` (long) and ``z [S]`` of the nearest point in each hit pixel.
    """
    pts = points.double() @ T_cam_world[:3, :3].double().T + T_cam_world[:3, 3].double()
    z = pts[:, 2]
    front = z > 1e-9
    pts, z = pts[front], z[front]
    u = pts[:, 0] / z * float(K[0, 0]) + float(K[0, 2])
    v = pts[:, 1] / z * float(K[1, 1]) + float(K[1, 2])
    cols, rows = torch.floor(u).long(), torch.floor(v).long()
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    rows, cols, z = rows[inside], cols[inside], z[inside]
    zbuf = torch.full((height * width,), math.inf, dtype=torch.float64)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            r, c = rows + dr, cols + dc
            ok = (c >= 0) & (c < width) & (r >= 0) & (r < height)
            zbuf.scatter_reduce_(0, r[ok] * width + c[ok], z[ok], reduce="amin")
    hit = torch.nonzero(torch.isfinite(zbuf))[:, 0]
    return hit // width, hit % width, zbuf[hit].float()


def depth_map(samples: DepthSamples, width: int, height: int) -> Tensor:
    """``[H, W]`` map of the samples (0 elsewhere)."""
    out = torch.zeros(height, width)
    out[samples.rows, samples.cols] = samples.z
    return out


def fit_scale_shift(prior: Tensor, target: Tensor, iterations: int = 4) -> tuple[float, float]:
    """Robust least-squares ``target ~ a * prior + b`` (``[S]`` each); ``(a, b)``.

    Each round drops the samples whose residual exceeds 3 robust standard deviations
    (1.4826 MAD) of the previous fit. A fit with ``a <= 0`` (no usable relation) falls back
    to the median ratio with no shift.
    """
    x, y = prior.double(), target.double()
    keep = torch.ones_like(x, dtype=torch.bool)
    a, b = 1.0, 0.0
    for _ in range(iterations):
        if int(keep.sum()) < 3:
            break
        A = torch.stack([x[keep], torch.ones_like(x[keep])], 1)
        sol = torch.linalg.lstsq(A, y[keep][:, None]).solution[:, 0]
        a, b = float(sol[0]), float(sol[1])
        residual = (y - (a * x + b)).abs()
        mad = float(residual[keep].median()) * 1.4826
        keep = residual <= max(3.0 * mad, 1e-9 * float(y.abs().mean()))
    if not (a > 0 and math.isfinite(a) and math.isfinite(b)):
        ratio = (y / x.clamp_min(1e-12))
        a, b = float(ratio.median()), 0.0
    return a, b


def fill_holes(depth: Tensor, valid: Tensor) -> Tensor:
    """Push-pull filling: ``[H, W]`` depth with every invalid pixel taken from the
    valid-weighted average of coarser and coarser neighbourhoods (valid pixels kept)."""
    if bool(valid.all()) or not bool(valid.any()):
        return depth.clone()
    d = (depth * valid)[None, None].double()
    w = valid[None, None].double()
    levels = []
    while True:
        levels.append((d, w))
        if bool((w > 0).all()) or min(d.shape[-2:]) <= 1:
            break
        d = F.avg_pool2d(d, 2, ceil_mode=True)
        w = F.avg_pool2d(w, 2, ceil_mode=True)
    filled = torch.where(w > 0, d / w.clamp_min(1e-12), float(d.sum() / w.sum()))
    for d, w in reversed(levels[:-1]):
        up = F.interpolate(filled, size=d.shape[-2:], mode="bilinear", align_corners=False)
        mean = d / w.clamp_min(1e-12)
        blend = w.clamp(0, 1)  # 1 where the level has full support
        filled = blend * mean + (1 - blend) * up
    out = filled[0, 0].float()
    return torch.where(valid, depth, out)


def local_correction(depth: Tensor, samples: DepthSamples, sigma_px: float,
                     max_change: float, grid_step: int = 8) -> Tensor:
    """``[H, W]`` multiplicative correction ``exp(c)``: ``c`` is the Gaussian-weighted mean of
    the log ratios ``log(z_sample / depth)`` around each pixel, shrunk towards 0 where few
    samples are near (one sample's weight in the denominator), and bounded by
    ``log(1 + max_change)``. Computed on a ``grid_step`` grid, then bilinearly upsampled."""
    h, w = depth.shape
    d = depth[samples.rows, samples.cols]
    ok = (d > 0) & (samples.z > 0)
    if int(ok.sum()) == 0:
        return torch.ones_like(depth)
    log_ratio = torch.log(samples.z[ok].double() / d[ok].double())
    sy = (samples.rows[ok].double() + 0.5)
    sx = (samples.cols[ok].double() + 0.5)
    gy = torch.arange(0, h, grid_step, dtype=torch.float64) + 0.5
    gx = torch.arange(0, w, grid_step, dtype=torch.float64) + 0.5
    dy2 = (gy[:, None] - sy[None]) ** 2  # [gh, S]
    dx2 = (gx[:, None] - sx[None]) ** 2  # [gw, S]
    ky = torch.exp(-dy2 / (2 * sigma_px**2))
    kx = torch.exp(-dx2 / (2 * sigma_px**2))
    num = torch.einsum("is,js,s->ij", ky, kx, log_ratio)
    den = torch.einsum("is,js->ij", ky, kx)
    c = num / (den + 1.0)
    bound = math.log1p(max_change)
    c = c.clamp(-bound, bound)
    c = F.interpolate(c[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return torch.exp(c).float()


def refine_prior(prior: Tensor, samples: DepthSamples,
                 config: RDGGSConfig) -> tuple[Tensor, Tensor, dict]:
    """Refine one coarse prior ``[H, W]`` (0 = unknown) with sparse metric depths.

    Returns the refined depth ``[H, W]`` (every pixel filled when the prior had any valid
    pixel), the pixels the depth guidance may use ``[H, W]`` bool (measured, or filled
    within ``fill_radius`` of a measurement) and the fit ``{"scale", "shift", "samples"}``.
    """
    h, w = prior.shape
    valid = prior > 0
    d_at = prior[samples.rows, samples.cols]
    use = (d_at > 0) & (samples.z > 0)
    info = {"scale": 1.0, "shift": 0.0, "samples": int(use.sum())}
    depth = prior.clone()
    if int(use.sum()) >= config.min_sparse_points:
        a, b = fit_scale_shift(d_at[use], samples.z[use])
        info.update(scale=a, shift=b)
        depth = torch.where(valid, a * prior + b, 0.0)
        valid = valid & (depth > 0)
        depth = torch.where(valid, depth, 0.0)
        sigma = config.local_sigma * math.hypot(h, w)
        depth = torch.where(valid, depth * local_correction(
            depth, samples, sigma, config.max_local_correction), 0.0)
    if bool(valid.any()):
        measured = valid
        depth = fill_holes(depth, valid)
        valid = depth > 0
        if config.fill_radius >= 0:
            # Guidance only near measured depths: far into a hole the fill is a guess.
            k = 2 * config.fill_radius + 1
            near = F.max_pool2d(measured[None, None].float(), k, stride=1,
                                padding=config.fill_radius)[0, 0] > 0
            valid = valid & near
    return depth, valid, info


def align_inverse_depth(inverse: Tensor, samples: DepthSamples,
                        min_samples: int) -> Tensor:
    """Metric depth ``[H, W]`` from a relative inverse depth ``[H, W]``: ``1/z ~ a inv + b``
    fitted robustly to the sparse depths (a median scale without enough samples); pixels
    whose aligned inverse depth is not positive get 0 (unknown)."""
    inv_at = inverse[samples.rows, samples.cols]
    target = 1.0 / samples.z.clamp_min(1e-9)
    if len(target) >= min_samples:
        a, b = fit_scale_shift(inv_at, target)
    elif len(target) > 0:
        a, b = float((target / inv_at.clamp_min(1e-12)).median()), 0.0
    else:
        raise UserError("no SfM point is seen in a training view, so the monocular depth "
                        "cannot be scaled; use --rdggs.depth-prior init or stereo.")
    aligned = a * inverse.double() + b
    floor = 0.02 * float(target.min()) if len(target) else 1e-6
    return torch.where(aligned > floor, 1.0 / aligned.clamp_min(floor), 0.0).float()


# ---------------------------------------------------------------------- coarse priors


def stereo_depths(images: Sequence, Ks: Tensor, T_cam_world: Tensor,
                  sparse_points: Tensor, stereo_config, min_views: int = 1) -> list[Tensor]:
    """Two-view stereo depth ``[H, W]`` of every view (0 where unknown), from the SGBM pairs
    of :mod:`reconstruction.init.stereo` on the given cameras, kept where at least
    ``min_views`` views' depths agree (:func:`~reconstruction.init.stereo.consistency_counts`;
    1 keeps every two-view depth).

    ``images`` are :class:`reconstruction.images.LoadedImage`; the SfM observations that
    choose the pairs and disparity ranges are the sparse points visible in each view (the
    nearest per pixel).
    """
    from reconstruction.init.base import SparseModel
    from reconstruction.init.stereo import (
        consistency_counts,
        merge_depths,
        pair_views,
        stereo_pair,
    )

    v = len(images)
    obs_point, obs_view, obs_xy = [], [], []
    pts = sparse_points.double()
    for view in range(v):
        im = images[view]
        cam = pts @ T_cam_world[view, :3, :3].double().T + T_cam_world[view, :3, 3].double()
        z = cam[:, 2]
        K = Ks[view].double()
        u = cam[:, 0] / z.clamp_min(1e-9) * K[0, 0] + K[0, 2]
        w_ = cam[:, 1] / z.clamp_min(1e-9) * K[1, 1] + K[1, 2]
        seen = (z > 1e-9) & (u >= 0) & (u < im.width) & (w_ >= 0) & (w_ < im.height)
        idx = torch.nonzero(seen)[:, 0]
        obs_point.append(idx.numpy())
        obs_view.append(np.full(len(idx), view))
        obs_xy.append(torch.stack([u[idx], w_[idx]], 1).numpy())
    model = SparseModel(
        names=[im.path.name for im in images],
        sizes=np.array([[im.width, im.height] for im in images]),
        Ks=Ks.double().numpy(), T_cam_world=T_cam_world.double().numpy(),
        registered=np.ones(v, dtype=bool), points_world=pts.numpy(),
        colors=np.zeros((len(pts), 3)), obs_point=np.concatenate(obs_point),
        obs_view=np.concatenate(obs_view), obs_xy=np.concatenate(obs_xy))
    per_view: dict[int, list[np.ndarray]] = {}
    for i, j in pair_views(model, stereo_config):
        depth_i, depth_j = stereo_pair(model, images, i, j, stereo_config)
        per_view.setdefault(i, []).append(depth_i)
        per_view.setdefault(j, []).append(depth_j)
    merged = {view: merge_depths(maps, stereo_config.depth_tolerance)
              for view, maps in per_view.items()}
    if min_views > 1:
        counts = consistency_counts(model, merged, stereo_config.depth_tolerance)
        merged = {view: np.where(counts[view] >= min_views, depth, 0.0)
                  for view, depth in merged.items()}
    return [torch.from_numpy(merged[view]).float() if view in merged
            else torch.zeros(im.height, im.width) for view, im in enumerate(images)]


def _check_checkpoint(checkpoint: Path) -> None:
    if not Path(checkpoint).is_file():
        raise UserError(f"--rdggs.mono-checkpoint {checkpoint} is not a file; give the path "
                        "of a local Depth-Anything/DPT state_dict (nothing is downloaded).")


def check_prior_inputs(config: RDGGSConfig, images: Sequence) -> None:
    """The option and file errors :func:`build_priors` would raise, without the work:
    ``recon fit`` calls it before the initialisation."""
    source = resolve_source(config)
    if source == "files":
        file_depths(images, config.prior_dir)
    elif source == "mono":
        _check_checkpoint(config.mono_checkpoint)


def mono_inverse_depths(rgbs: Sequence[Tensor], checkpoint: Path,
                        device: str = "cpu") -> list[Tensor]:
    """Relative inverse depth ``[H, W]`` of every image ``[H, W, 3]`` from a local
    monocular checkpoint (:func:`reconstruction.depth.load_mono_depth`)."""
    _check_checkpoint(checkpoint)
    try:
        from reconstruction.depth import load_mono_depth
    except ImportError:
        raise UserError("the monocular depth network (reconstruction.depth) is not part of "
                        "this installation; use --rdggs.depth-prior init or stereo.") from None
    model = load_mono_depth(Path(checkpoint), device=device)
    out = []
    with torch.no_grad():
        for rgb in rgbs:
            inv = model.predict(rgb.to(device)).detach().float().cpu()
            if inv.shape != rgb.shape[:2] or not bool(torch.isfinite(inv).all()):
                raise UserError(f"the monocular network from {checkpoint} returned a depth "
                                f"map of shape {tuple(inv.shape)} or non-finite values for "
                                f"an image of {rgb.shape[1]}x{rgb.shape[0]}; check the "
                                "checkpoint.")
            out.append(inv)
    return out


def file_depths(images: Sequence, folder: Path) -> list[Tensor]:
    """The depth map of every photo from ``folder/<stem>.npy`` (see ``RDGGSConfig.prior_dir``),
    at the photo's size (nearest resampling), 0 where unknown."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--rdggs.prior-dir {folder} is not a folder; give the folder of "
                        "<photo stem>.npy depth maps.")
    out = []
    for im in images:
        path = folder / f"{im.path.stem}.npy"
        if not path.is_file():
            raise UserError(f"{folder} has no depth map for {im.path.name} (expected "
                            f"{path.name}); give one per photo.")
        d = read_depth_npy(path, im.width, im.height, "write it with numpy.save")
        d = torch.where(torch.isfinite(d) & (d > 0), d, 0.0)
        out.append(d)
    return out


def resolve_source(config: RDGGSConfig) -> str:
    """The prior source ``config`` asks for: ``mono``, ``init``, ``stereo``, ``fused`` or
    ``files``."""
    if (config.depth_prior == "files") != (config.prior_dir is not None):
        raise UserError("--rdggs.depth-prior files and --rdggs.prior-dir go together; give "
                        "both or neither.")
    if config.depth_prior == "mono" and config.mono_checkpoint is None:
        raise UserError("--rdggs.depth-prior mono needs --rdggs.mono-checkpoint PATH (a local "
                        "Depth-Anything/DPT state_dict).")
    if config.mono_checkpoint is not None and config.depth_prior in ("init", "stereo", "fused",
                                                                     "files"):
        raise UserError(f"--rdggs.mono-checkpoint is unused with --rdggs.depth-prior "
                        f"{config.depth_prior}; drop it or use --rdggs.depth-prior mono.")
    if config.depth_prior == "auto":
        return "mono" if config.mono_checkpoint is not None else "stereo"
    return config.depth_prior


def build_priors(images: Sequence, rgbs: Sequence[Tensor], init_state: dict[str, Tensor],
                 config: RDGGSConfig, stereo_config, device: str = "cpu") -> DepthPriors:
    """Coarse priors from ``config.depth_prior``, refined when ``config.refine_prior``.

    Args:
        images: ``LoadedImage`` of the training views (for stereo).
        rgbs: ``[H, W, 3]`` training images in [0, 1].
        init_state: the pipeline's normalised-frame tensors (``init.Ks``,
            ``init.T_cam_world``, ``init.points``, ``init.sparse_points``).
    """
    source = resolve_source(config)
    Ks, T = init_state["init.Ks"].float(), init_state["init.T_cam_world"].float()
    sizes = [(int(im.shape[1]), int(im.shape[0])) for im in rgbs]
    cloud = []
    for v, (w, h) in enumerate(sizes):
        rows, cols, z = project_points(init_state["init.points"], Ks[v], T[v], w, h,
                                       radius=config.splat_radius)
        cloud.append(depth_map(DepthSamples(rows, cols, z), w, h))
    samples = []
    for v, (w, h) in enumerate(sizes):
        rows, cols, z = project_points(init_state["init.sparse_points"], Ks[v], T[v], w, h)
        # Sparse points hidden behind the dense cloud's surfaces are not seen by the view.
        front = cloud[v][rows, cols]
        seen = (front <= 0) | (z <= front * (1.0 + config.visibility_tolerance))
        samples.append(DepthSamples(rows[seen], cols[seen], z[seen]))

    def cloud_depths() -> list[Tensor]:
        return [c.clone() for c in cloud]

    if source == "mono":
        inverse = mono_inverse_depths(rgbs, config.mono_checkpoint, device)
        coarse = [align_inverse_depth(inv, s, config.min_sparse_points)
                  for inv, s in zip(inverse, samples, strict=True)]
    elif source == "files":
        coarse = file_depths(images, config.prior_dir)
    elif source == "init":
        coarse = cloud_depths()
    elif source == "stereo":
        coarse = stereo_depths(images, Ks, T, init_state["init.sparse_points"], stereo_config,
                               config.prior_min_views)
    else:  # fused: stereo where it measured, the init cloud elsewhere
        stereo = stereo_depths(images, Ks, T, init_state["init.sparse_points"], stereo_config,
                               config.prior_min_views)
        coarse = [torch.where(s > 0, s, c) for s, c in zip(stereo, cloud, strict=True)]
    coverage = [float((c > 0).float().mean()) for c in coarse]
    depth, valid, fits = [], [], []
    for prior, s in zip(coarse, samples, strict=True):
        if config.refine_prior:
            d, ok, info = refine_prior(prior, s, config)
        else:
            d, ok, info = prior, prior > 0, {"scale": 1.0, "shift": 0.0, "samples": 0}
        depth.append(d)
        valid.append(ok)
        fits.append(info)
    stats = {"source": source, "coverage": coverage,
             "scale": [f["scale"] for f in fits], "shift": [f["shift"] for f in fits],
             "sparse_samples": [int(len(s.z)) for s in samples],
             "sparse_absrel": [_absrel(d, s) for d, s in zip(depth, samples, strict=True)]}
    return DepthPriors(depth=depth, valid=valid, source=source, stats=stats)


def _absrel(depth: Tensor, samples: DepthSamples) -> float | None:
    """Mean ``|d - z| / z`` of a prior at the sparse depths it covers (None: none)."""
    d = depth[samples.rows, samples.cols]
    ok = (d > 0) & (samples.z > 0)
    if not bool(ok.any()):
        return None
    return float(((d[ok] - samples.z[ok]).abs() / samples.z[ok]).mean())

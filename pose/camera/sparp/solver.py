"""NOCS maps -> camera poses: PnP + RANSAC per view, robust Gauss-Newton refinement, symmetry
hypotheses chosen by cross-view consistency (SpaRP, Xu et al. ECCV 2024, Sec. 3.3).

NOCS convention (normalised object coordinates, as :mod:`reconstruction.procedural.objects`
writes them): a pixel's NOCS value ``nocs in [0, 1]^3`` is the object point it sees, in the
object frame, scaled and shifted into the unit cube::

    p_obj = (nocs - 0.5) * nocs_scale          (metres; nocs_scale: the object's size)

The solver works in NOCS units (``nocs_scale = 1``, the object centred at the origin): the
scale of a similarity ``x_cam = s R p + t`` is unobservable from one view's PnP, so the object
is fixed to the unit NOCS cube and every camera translation is reported in NOCS units
(consistently across the views). Multiply translations by ``nocs_scale`` for metres.

Frames (OpenCV cameras, :mod:`geometry.cameras`)::

    object (NOCS - 0.5)       camera i (OpenCV)
      any axes, origin          z forward, x right, y down
      at the cube centre        pixel (row r, col c) has its centre at (u, v) = (c + .5, r + .5)

    x_cam_i = R_cam_obj[i] @ p_obj + t_cam_obj[i]
    T_world_cam[i] = T_obj_cam[i] (world = object)   or   T_cam0_cam[i] (world = first camera)

Symmetric objects: a network predicts NOCS of a symmetric object in one of its equivalent
frames, independently per view, so view ``i``'s maps may be ``X'_i = S_i X`` for an unknown
symmetry ``S_i`` of the object. PnP on ``X'_i`` gives ``R'_i = R_i S_i^-1``; the hypotheses
of view ``i`` are ``R'_i S`` for every ``S`` of the symmetry group (rotations about the
symmetry axis). View 0 fixes the gauge (``S_0 = I``); every other view takes the hypothesis
most consistent with the views already chosen: where its object points meet object points
those views saw (the same cell of a grid over the NOCS cube), their colours must agree.
Comparing in object space needs no visibility reasoning, so hypotheses that would hide a
view's points behind the others' surfaces gain nothing. A hypothesis replaces the view's
own frame only when clearly better: objects symmetric in shape AND texture (all tie) keep
the maps' frames; without colours the maps' frames are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from geometry.errors import UserError

__all__ = [
    "NocsView",
    "SolverConfig",
    "Symmetry",
    "ViewPose",
    "MultiViewPoses",
    "intrinsics_from_fov",
    "nocs_to_correspondences",
    "project",
    "refine_pnp",
    "solve_pnp",
    "solve_view",
    "solve_views",
]


@dataclass
class SolverConfig:
    """Options of the NOCS -> pose solver."""

    max_points: int = 3000
    """Pixels used per view (a random subset of the valid ones; PnP needs few)."""
    min_points: int = 16
    """Fewest valid NOCS pixels a view must have."""
    ransac_iterations: int = 300
    """RANSAC hypotheses per view (minimal 4-point AP3P samples, OpenCV)."""
    ransac_threshold: float = 0.02
    """RANSAC inlier threshold as a share of the image diagonal (the refinement then
    re-estimates the inlier band from the residuals)."""
    refine_iterations: int = 15
    """Iteratively reweighted Gauss-Newton steps on the reprojection error."""
    inlier_sigmas: float = 3.0
    """Final inliers: residual under this many robust standard deviations (at least
    ``min_inlier_px``)."""
    min_inlier_px: float = 1.0
    """Lower bound of the final inlier band (pixels): pixel quantisation of exact maps."""
    denoise_window: int = 5
    """Side of the window of the spatial median filter applied to the NOCS map before PnP
    (within the mask; 1: off). Object coordinates vary smoothly over the image, so the
    median removes most per-pixel noise and gross outliers of a predicted map."""
    smooth_window: int = 7
    """Side of the window of the local linear fit that denoises noisy maps before the final
    refinement (1: off). Noise on the 3D side of the correspondences biases a least-squares
    pose (errors in variables, worst along an object's thin directions); averaging each
    pixel's neighbours reduces it, and a local PLANE fit (not a mean) keeps smoothly varying
    coordinates unbiased also at silhouettes."""
    noise_px: float = 0.5
    """Maps whose robust reprojection noise (pixels) after the first fit is below this are
    taken as exact and not smoothed."""
    seed: int = 0
    """Seed of the pixel subsets and RANSAC."""


@dataclass
class Symmetry:
    """Rotational symmetry of an object about an axis through the NOCS cube centre."""

    order: int = 1
    """Discrete order n (rotations by 2 pi k / n); 1: none; 0: continuous (sampled)."""
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    """Symmetry axis in the object (NOCS) frame (z: the up axis of the generated objects)."""
    continuous_steps: int = 36
    """Hypotheses for a continuous symmetry (every 360 / steps degrees)."""

    def rotations(self) -> np.ndarray:
        """``[K, 3, 3]`` the symmetry rotations tried (the identity first)."""
        steps = self.continuous_steps if self.order == 0 else max(self.order, 1)
        axis = np.asarray(self.axis, dtype=np.float64)
        axis = axis / np.linalg.norm(axis)
        return np.stack([axis_angle(axis * (2 * math.pi * k / steps)) for k in range(steps)])

    @staticmethod
    def from_tag(tag: str | None) -> Symmetry:
        """Parse a symmetry tag: ``none`` (also ``near``: a small feature breaks the
        symmetry), ``axis``/``cylinder`` (continuous about z, the tags of
        :mod:`reconstruction.procedural.objects`), ``z4``/``x2``/... (axis letter + order)
        or an integer order about z."""
        if tag is None:
            return Symmetry()
        tag = str(tag).strip().lower()
        if tag in ("", "none", "near", "1"):
            return Symmetry()
        if tag in ("axis", "cylinder", "continuous", "0"):
            return Symmetry(order=0)
        axes = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}
        if tag[:1] in axes and tag[1:].isdigit():
            return Symmetry(order=int(tag[1:]), axis=axes[tag[0]])
        if tag.isdigit():
            return Symmetry(order=int(tag))
        raise UserError(f"unknown symmetry {tag!r}; use none, axis, or an axis letter and "
                        "order such as z2 or z4.")


@dataclass
class NocsView:
    """One view: its NOCS map, validity mask, intrinsics and (optionally) its colours."""

    nocs: np.ndarray  # [H, W, 3] in [0, 1]
    mask: np.ndarray  # [H, W] bool, True where the map holds the object
    K: np.ndarray  # [3, 3]
    rgb: np.ndarray | None = None  # [H, W, 3] in [0, 1], for symmetry disambiguation

    @property
    def height(self) -> int:
        return int(self.nocs.shape[0])

    @property
    def width(self) -> int:
        return int(self.nocs.shape[1])


@dataclass
class ViewPose:
    """The pose of the object in one camera (NOCS units)."""

    R_cam_obj: np.ndarray  # [3, 3]
    t_cam_obj: np.ndarray  # [3], NOCS units
    num_points: int
    """Valid NOCS pixels used."""
    num_inliers: int
    rms_px: float
    """Root-mean-square reprojection error of the inliers (pixels)."""
    symmetry_index: int = 0
    """Which symmetry rotation was applied (0: identity)."""

    @property
    def T_cam_obj(self) -> np.ndarray:
        """``[4, 4]``."""
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.R_cam_obj, self.t_cam_obj
        return T

    @property
    def T_obj_cam(self) -> np.ndarray:
        """``[4, 4]`` camera-to-object (the camera pose in the object frame)."""
        T = np.eye(4)
        T[:3, :3] = self.R_cam_obj.T
        T[:3, 3] = -self.R_cam_obj.T @ self.t_cam_obj
        return T


@dataclass
class MultiViewPoses:
    """Poses of all views (NOCS units), in the object frame and relative to view 0."""

    views: list[ViewPose]
    symmetry_scores: list[list[float]] = field(default_factory=list)
    """Per view, the inconsistency of each symmetry hypothesis (lower is better)."""

    @property
    def T_obj_cam(self) -> np.ndarray:
        """``[V, 4, 4]`` camera-to-object poses."""
        return np.stack([v.T_obj_cam for v in self.views])

    @property
    def T_cam0_cam(self) -> np.ndarray:
        """``[V, 4, 4]`` camera-to-first-camera poses (view 0 is the identity)."""
        return self.views[0].T_cam_obj @ self.T_obj_cam


def axis_angle(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: ``[3]`` axis * angle -> ``[3, 3]``."""
    theta = float(np.linalg.norm(aa))
    if theta < 1e-12:
        W = _hat(aa)
        return np.eye(3) + W
    k = aa / theta
    W = _hat(k)
    return np.eye(3) + math.sin(theta) * W + (1 - math.cos(theta)) * (W @ W)


def _hat(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> np.ndarray:
    """``[3, 3]`` pinhole K with the field of view ``fov_deg`` across the LONGER image side,
    square pixels and the principal point at the image centre (pixel-corner convention)."""
    if not 0.0 < fov_deg < 180.0:
        raise UserError(f"--fov-deg {fov_deg} is not a field of view; give degrees in (0, 180).")
    f = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def nocs_to_correspondences(view: NocsView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels and object points of the valid NOCS pixels.

    Returns:
        ``uv [N, 2]`` pixel centres ``(col + 0.5, row + 0.5)``, ``pts_obj [N, 3]``
        (``nocs - 0.5``, NOCS units) and the flat pixel indices ``[N]``.
    """
    rows, cols = np.nonzero(view.mask)
    uv = np.stack((cols + 0.5, rows + 0.5), -1).astype(np.float64)
    pts = view.nocs[rows, cols].astype(np.float64) - 0.5
    return uv, pts, rows * view.width + cols


def median_filter_nocs(nocs: np.ndarray, mask: np.ndarray, window: int) -> np.ndarray:
    """Per-channel median of the valid NOCS values in a ``window x window`` neighbourhood of
    every valid pixel (``[H, W, 3]``; invalid pixels unchanged)."""
    if window <= 1:
        return nocs
    r = window // 2
    h, w = mask.shape
    padded = np.full((h + 2 * r, w + 2 * r, 3), np.nan)
    padded[r:r + h, r:r + w] = np.where(mask[..., None], nocs, np.nan)
    stack = np.stack([padded[dy:dy + h, dx:dx + w] for dy in range(window)
                      for dx in range(window)])
    rows, cols = np.nonzero(mask)
    out = nocs.astype(np.float64).copy()
    out[rows, cols] = np.nanmedian(stack[:, rows, cols], axis=0)
    return out


def smooth_nocs(nocs: np.ndarray, mask: np.ndarray, window: int, min_count: int = 6
                ) -> tuple[np.ndarray, np.ndarray]:
    """Local linear regression of the NOCS map: at every pixel, the plane
    ``nocs ~ a + b u + c v`` fitted (per channel) to the valid pixels of its
    ``window x window`` neighbourhood, evaluated at the pixel.

    Returns:
        ``smoothed [H, W, 3]`` and ``ok [H, W]`` (valid pixels with at least ``min_count``
        valid neighbours and a well-posed fit).
    """
    from scipy.ndimage import uniform_filter

    h, w = mask.shape
    weight = mask.astype(np.float64)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)

    def box(a: np.ndarray) -> np.ndarray:
        return uniform_filter(a, size=window, mode="constant", cval=0.0) * window * window

    # Coordinates relative to each window's centre pixel: sums of (u - u0)^k from sums of u^k.
    n = box(weight)
    su, sv = box(weight * cols), box(weight * rows)
    suu, svv, suv = (box(weight * cols * cols), box(weight * rows * rows),
                     box(weight * cols * rows))
    du_sum, dv_sum = su - n * cols, sv - n * rows
    duu = suu - 2 * cols * su + n * cols * cols
    dvv = svv - 2 * rows * sv + n * rows * rows
    duv = suv - cols * sv - rows * su + n * cols * rows
    A = np.stack((np.stack((n, du_sum, dv_sum), -1), np.stack((du_sum, duu, duv), -1),
                  np.stack((dv_sum, duv, dvv), -1)), -2)  # [H, W, 3, 3]
    out = nocs.astype(np.float64).copy()
    ok = mask & (n >= min_count)
    A_ok = A[ok] + np.diag([0.0, 1e-6, 1e-6])
    det = np.linalg.det(A_ok)
    good = np.abs(det) > 1e-6 * np.maximum(n[ok], 1.0) ** 3
    for c in range(3):
        f = np.where(mask, nocs[..., c], 0.0) * weight
        sf = box(f)
        sfu = box(f * cols) - cols * sf
        sfv = box(f * rows) - rows * sf
        b = np.stack((sf, sfu, sfv), -1)[ok]
        coef = np.zeros_like(b)
        coef[good] = np.linalg.solve(A_ok[good], b[good][..., None])[..., 0]
        vals = out[..., c][ok]
        vals[good] = coef[good, 0]
        out[..., c][ok] = vals
    ok_idx = np.nonzero(ok)
    keep = np.zeros_like(ok)
    keep[ok_idx[0][good], ok_idx[1][good]] = True
    return out, keep


def project(K: np.ndarray, R: np.ndarray, t: np.ndarray, pts: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[N, 2]`` and depths ``[N]`` of object points ``[N, 3]``."""
    cam = pts @ R.T + t
    z = cam[:, 2]
    zs = np.where(np.abs(z) < 1e-12, 1e-12, z)
    uv = cam[:, :2] / zs[:, None] @ K[:2, :2].T + K[:2, 2]
    return uv, z


def _gauss_newton(K, R, t, pts, uv, weights_fn, iterations):
    """Weighted Gauss-Newton on the reprojection error; left-multiplied rotation update."""
    fx, fy, s = K[0, 0], K[1, 1], K[0, 1]
    for _ in range(iterations):
        cam = pts @ R.T + t
        x, y, z = cam[:, 0], cam[:, 1], np.maximum(cam[:, 2], 1e-9)
        pred, _ = project(K, R, t, pts)
        res = (pred - uv)  # [N, 2]
        w = weights_fn(np.linalg.norm(res, axis=1))
        # d(u, v)/d(cam): rows of the projection Jacobian.
        iz, iz2 = 1.0 / z, 1.0 / (z * z)
        J_cam = np.zeros((len(pts), 2, 3))
        J_cam[:, 0, 0] = fx * iz
        J_cam[:, 0, 1] = s * iz
        J_cam[:, 0, 2] = -(fx * x + s * y) * iz2
        J_cam[:, 1, 1] = fy * iz
        J_cam[:, 1, 2] = -fy * y * iz2
        # cam = exp(w) R p + t + dt: d cam/d w = -[cam - t]_x, d cam / d t = I.
        rp = cam - t
        J_rot = np.zeros((len(pts), 3, 3))
        J_rot[:, 0, 1], J_rot[:, 0, 2] = rp[:, 2], -rp[:, 1]
        J_rot[:, 1, 0], J_rot[:, 1, 2] = -rp[:, 2], rp[:, 0]
        J_rot[:, 2, 0], J_rot[:, 2, 1] = rp[:, 1], -rp[:, 0]
        J = np.concatenate((J_cam @ J_rot, J_cam), -1).reshape(-1, 6)
        W = np.repeat(w, 2)
        A = J.T @ (J * W[:, None]) + 1e-9 * np.eye(6)
        b = J.T @ (W * res.reshape(-1))
        try:
            delta = -np.linalg.solve(A, b)
        except np.linalg.LinAlgError:  # degenerate points (e.g. a collapsed map): keep R, t
            break
        if not np.isfinite(delta).all():
            break
        R = axis_angle(delta[:3]) @ R
        t = t + delta[3:]
        if np.linalg.norm(delta) < 1e-12:
            break
    U, _, Vt = np.linalg.svd(R)
    return U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt, t


def _robust_sigma(res: np.ndarray) -> float:
    """Standard deviation of isotropic 2-D Gaussian noise from residual norms (Rayleigh
    median = sigma sqrt(2 ln 2)); the median stays in the inliers under 50 % outliers."""
    return float(np.median(res)) / math.sqrt(2 * math.log(2))


def solve_pnp(uv: np.ndarray, pts_obj: np.ndarray, K: np.ndarray,
              image_size: tuple[int, int], cfg: SolverConfig | None = None,
              rng: np.random.Generator | None = None) -> ViewPose:
    """Pose of the object in one camera from 2D-3D correspondences.

    RANSAC over minimal samples (OpenCV's ``solvePnPRansac`` with AP3P) gives a hypothesis and
    its inliers; iteratively reweighted Gauss-Newton (Cauchy weights at the robust noise
    scale) refines it on all points; the final inliers lie within ``inlier_sigmas`` robust
    standard deviations.

    Args:
        uv: ``[N, 2]`` pixel positions.
        pts_obj: ``[N, 3]`` object points (NOCS units, centred).
        K: ``[3, 3]`` intrinsics.
        image_size: ``(width, height)`` (scales the RANSAC threshold).
        cfg: options.
        rng: random generator (subsets).

    Raises:
        UserError: fewer than ``min_points`` correspondences or no pose found.
    """
    import cv2

    cfg = cfg or SolverConfig()
    rng = rng or np.random.default_rng(cfg.seed)
    n = len(uv)
    if n < max(cfg.min_points, 6):
        raise UserError(f"a NOCS map has only {n} valid pixels; at least {cfg.min_points} are "
                        "needed to solve its camera.")
    if n > cfg.max_points:
        pick = rng.choice(n, cfg.max_points, replace=False)
        uv, pts_obj = uv[pick], pts_obj[pick]
    diag = math.hypot(*image_size)
    thr = max(cfg.ransac_threshold * diag, 1.0)
    cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        pts_obj.astype(np.float64), uv.astype(np.float64), K.astype(np.float64), None,
        iterationsCount=cfg.ransac_iterations, reprojectionError=thr, confidence=0.999,
        flags=cv2.SOLVEPNP_AP3P)
    if not ok or inl is None or len(inl) < 6:
        raise UserError("no camera pose fits a NOCS map (PnP + RANSAC found no consistent "
                        "set of pixels); check that the map holds object coordinates.")
    R = cv2.Rodrigues(rvec)[0]
    t = tvec[:, 0].astype(np.float64)
    # Refit on the RANSAC inliers (least squares) before the robust refinement on all points.
    R, t = _gauss_newton(K, R, t, pts_obj[inl[:, 0]], uv[inl[:, 0]], np.ones_like, 10)
    return refine_pnp(uv, pts_obj, K, R, t, cfg)


def refine_pnp(uv: np.ndarray, pts_obj: np.ndarray, K: np.ndarray, R: np.ndarray,
               t: np.ndarray, cfg: SolverConfig | None = None) -> ViewPose:
    """Robust refinement of a pose on all correspondences: iteratively reweighted
    Gauss-Newton (Cauchy weights at 2.5 robust noise scales), then least squares on the
    inliers (within ``inlier_sigmas`` robust standard deviations, at least
    ``min_inlier_px``).

    Args:
        uv: ``[N, 2]`` pixels; pts_obj: ``[N, 3]`` object points; K: ``[3, 3]``;
        R, t: the initial ``R_cam_obj [3, 3]``, ``t_cam_obj [3]``.
    """
    cfg = cfg or SolverConfig()
    for _ in range(3):
        res = np.linalg.norm(project(K, R, t, pts_obj)[0] - uv, axis=1)
        sigma = max(_robust_sigma(res), 0.25 * cfg.min_inlier_px)
        R, t = _gauss_newton(K, R, t, pts_obj, uv,
                             lambda r, c=2.5 * sigma: 1.0 / (1.0 + (r / c) ** 2),
                             cfg.refine_iterations)
    res = np.linalg.norm(project(K, R, t, pts_obj)[0] - uv, axis=1)
    band = max(cfg.inlier_sigmas * _robust_sigma(res), cfg.min_inlier_px)
    inliers = res < band
    if inliers.sum() >= 6:  # least squares on the inliers: the ML fit under Gaussian noise
        R, t = _gauss_newton(K, R, t, pts_obj[inliers], uv[inliers], np.ones_like,
                             cfg.refine_iterations)
        res = np.linalg.norm(project(K, R, t, pts_obj)[0] - uv, axis=1)
        inliers = res < band
    rms = float(np.sqrt(np.mean(res[inliers] ** 2))) if inliers.any() else float("inf")
    return ViewPose(R_cam_obj=R, t_cam_obj=t, num_points=len(uv),
                    num_inliers=int(inliers.sum()), rms_px=rms)


def solve_view(view: NocsView, cfg: SolverConfig | None = None,
               rng: np.random.Generator | None = None) -> ViewPose:
    """The object's pose in one view from its NOCS map.

    PnP + RANSAC runs on the median-filtered map at the pixels whose whole filter window
    lies on the object (there the median of the smoothly varying coordinates is nearly
    unbiased and most noise and outliers are gone); the pose is then refined robustly on
    the raw map (:func:`refine_pnp`), so exact maps give exact poses.

    Raises:
        UserError: too few valid pixels or no pose found.
    """
    cfg = cfg or SolverConfig()
    rng = rng or np.random.default_rng(cfg.seed)
    uv, pts, _ = nocs_to_correspondences(view)
    n = len(uv)
    if n < max(cfg.min_points, 6):
        raise UserError(f"a NOCS map has only {n} valid pixels; at least {cfg.min_points} are "
                        "needed to solve its camera.")
    size = (view.width, view.height)
    window = cfg.denoise_window
    if window > 1:
        filtered = median_filter_nocs(view.nocs, view.mask, window)
        interior = _erode(view.mask, window // 2)
        if interior.sum() >= max(cfg.min_points, 6):
            rows, cols = np.nonzero(interior)
            uv_f = np.stack((cols + 0.5, rows + 0.5), -1).astype(np.float64)
            init = solve_pnp(uv_f, filtered[rows, cols] - 0.5, K=view.K, image_size=size,
                             cfg=cfg, rng=rng)
        else:
            init = solve_pnp(uv, pts, view.K, size, cfg, rng)
    else:
        init = solve_pnp(uv, pts, view.K, size, cfg, rng)
    raw_uv, raw_pts = uv, pts
    if n > cfg.max_points:
        pick = rng.choice(n, cfg.max_points, replace=False)
        uv, pts = uv[pick], pts[pick]
    pose = refine_pnp(uv, pts, view.K, init.R_cam_obj, init.t_cam_obj, cfg)
    if cfg.smooth_window <= 1 or pose.rms_px < cfg.noise_px:
        return pose
    # A noisy map: drop the pixels far from their neighbours' median in NOCS space (gross
    # errors), fit local planes to the rest, refine on the smoothed coordinates.
    del raw_uv, raw_pts
    median = median_filter_nocs(view.nocs, view.mask, max(cfg.denoise_window, 3))
    dist = np.linalg.norm(view.nocs - median, axis=-1)
    d_valid = dist[view.mask]
    sigma3 = float(np.median(d_valid)) / 1.5382  # median of a chi(3) variable / sigma
    clean = view.mask & (dist < max(3.5 * sigma3, 1e-6))
    smoothed, ok = smooth_nocs(view.nocs, clean, cfg.smooth_window)
    if ok.sum() < max(cfg.min_points, 6):
        return pose
    rows, cols = np.nonzero(ok)
    uv_s = np.stack((cols + 0.5, rows + 0.5), -1).astype(np.float64)
    pts_s = smoothed[rows, cols] - 0.5
    if len(uv_s) > cfg.max_points:
        pick = rng.choice(len(uv_s), cfg.max_points, replace=False)
        uv_s, pts_s = uv_s[pick], pts_s[pick]
    final = refine_pnp(uv_s, pts_s, view.K, pose.R_cam_obj, pose.t_cam_obj, cfg)
    final.num_points = n
    return final


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose ``(2 radius + 1)^2`` neighbourhood lies inside ``mask``."""
    h, w = mask.shape
    padded = np.zeros((h + 2 * radius, w + 2 * radius), dtype=bool)
    padded[radius:radius + h, radius:radius + w] = mask
    out = np.ones_like(mask, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out &= padded[dy:dy + h, dx:dx + w]
    return out


def _colour_grid(pts: np.ndarray, rgb: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour ``[res^3, 3]`` and point count ``[res^3]`` of object points ``[N, 3]``
    (NOCS units, centred) binned in a ``res^3`` grid of the NOCS cube."""
    cells = _cells(pts, res)
    count = np.bincount(cells, minlength=res ** 3).astype(np.float64)
    sums = np.stack([np.bincount(cells, rgb[:, c], minlength=res ** 3) for c in range(3)], -1)
    return sums / np.maximum(count, 1.0)[:, None], count


def _cells(pts: np.ndarray, res: int) -> np.ndarray:
    idx = np.clip(np.floor((pts + 0.5) * res).astype(np.int64), 0, res - 1)
    return (idx[:, 0] * res + idx[:, 1]) * res + idx[:, 2]


def _colour_disagreement(pts: np.ndarray, rgb: np.ndarray, grid: tuple[np.ndarray, np.ndarray],
                         res: int) -> tuple[float, int]:
    """Sum of mean absolute colour differences between points and the grid's colours where
    the grid has points (both views saw that part of the surface), and how many."""
    mean, count = grid
    cells = _cells(pts, res)
    seen = count[cells] > 0
    if not seen.any():
        return 0.0, 0
    return float(np.abs(rgb[seen] - mean[cells[seen]]).mean(1).sum()), int(seen.sum())


def solve_views(views: list[NocsView], symmetry: Symmetry | None = None,
                cfg: SolverConfig | None = None, score_points: int = 1500,
                names: list[str] | None = None, symmetry_margin: float = 0.02,
                grid_res: int = 24, min_overlap: int = 20) -> MultiViewPoses:
    """Solve every view's pose from its NOCS map; choose symmetry hypotheses across views.

    Args:
        views: the views (view 0 fixes the frame and, for symmetric objects, the gauge).
        symmetry: the object's rotational symmetry (default none).
        cfg: solver options.
        grid_res: cells per side of the NOCS-cube grid in which the colours of the views
            are compared (symmetry scoring).
        min_overlap: fewest points of a view in cells the other views saw for a hypothesis
            to be scored.
        score_points: object points per view used to score the hypotheses.
        names: view names for the error messages.
        symmetry_margin: a symmetry hypothesis replaces the view's own PnP solution only
            when its colour disagreement is lower by more than this (mean absolute
            difference, colours in [0, 1]): for an object symmetric in shape AND texture all
            hypotheses tie, and the maps' own frame is the answer to keep.

    Raises:
        UserError: a view without enough valid pixels or without a pose.
    """
    cfg = cfg or SolverConfig()
    symmetry = symmetry or Symmetry()
    rng = np.random.default_rng(cfg.seed)
    raw: list[ViewPose] = []
    samples: list[tuple[np.ndarray, np.ndarray | None]] = []
    for view in views:
        uv, pts, flat = nocs_to_correspondences(view)
        try:
            raw.append(solve_view(view, cfg, rng))
        except UserError as err:
            if names is None:
                raise
            raise UserError(f"{names[len(raw)]}: {err}") from None
        pick = rng.choice(len(pts), min(score_points, len(pts)), replace=False)
        rgb = None if view.rgb is None else view.rgb.reshape(-1, 3)[flat[pick]]
        samples.append((pts[pick], rgb))
    rotations = symmetry.rotations()
    if len(rotations) == 1 or len(views) == 1:
        return MultiViewPoses(views=raw)
    if any(v.rgb is None for v in views):
        return MultiViewPoses(views=raw)  # nothing tells the hypotheses apart
    # Hypothesis k of view i: R = R'_i S_k and points X = S_k^T X'_i (see the module doc).
    # Its cost: how much its points' colours differ from those the views already chosen saw
    # at the same object points (binned in a grid of the NOCS cube: no visibility test).
    grids = [_colour_grid(samples[0][0], samples[0][1], grid_res)]
    chosen: list[ViewPose] = [raw[0]]
    all_scores: list[list[float]] = [[0.0] * len(rotations)]
    for i in range(1, len(views)):
        scores = []
        for S in rotations:
            pts_i = samples[i][0] @ S  # rows: S^T x
            total, count = 0.0, 0
            for grid in grids:
                cost, n = _colour_disagreement(pts_i, samples[i][1], grid, grid_res)
                total, count = total + cost, count + n
            scores.append(total / count if count >= min_overlap else math.inf)
        k = int(np.argmin(scores))
        if not scores[k] < scores[0] - symmetry_margin:
            k = 0
        S = rotations[k]
        chosen.append(ViewPose(raw[i].R_cam_obj @ S, raw[i].t_cam_obj, raw[i].num_points,
                               raw[i].num_inliers, raw[i].rms_px, symmetry_index=k))
        grids.append(_colour_grid(samples[i][0] @ S, samples[i][1], grid_res))
        all_scores.append([float(x) for x in scores])
    return MultiViewPoses(views=chosen, symmetry_scores=all_scores)



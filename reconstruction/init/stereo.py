"""Dense initial cloud from rectified-pair stereo (OpenCV SGBM), fused with consistency checks.

InstantSplat's observation is that a dense, globally aligned initial cloud makes few-view
optimisation fast and stable. Without a learned point-map model we get one from the SfM
poses:

1. each view is paired with its best-overlapping registered neighbours (shared points);
2. each pair is rectified (a common frame with x along the baseline), matched with
   semi-global block matching in both directions over the disparity range that the
   shared sparse points span, and left-right checked;
3. disparities become depth maps in each view's own pixel grid (several neighbours agree
   or the pixel is dropped);
4. every depth pixel is back-projected and kept only where at least one other view's depth
   map sees the same surface (relative depth within ``depth_tolerance``);
5. the fused cloud is averaged on a voxel grid down to ``max_points``.

Pixel coordinates outside this module are COLMAP's (corner at 0); OpenCV's pixel-centre
convention (centre at integers) is used inside, converted at the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reconstruction.images import LoadedImage
from reconstruction.init.base import SparseModel
from reconstruction.init.config import StereoConfig


def _to_cv(K: np.ndarray) -> np.ndarray:
    """COLMAP/gsplat intrinsics (corner at 0) -> OpenCV's (pixel centre at integers)."""
    K = K.copy()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def _grey(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb @ np.array([0.299, 0.587, 0.114]), 0, 1) * 255).astype(np.uint8)


def pair_views(model: SparseModel, config: StereoConfig) -> list[tuple[int, int]]:
    """Unordered view pairs ``(i, j)``, ``i < j``: each view's ``neighbours`` best partners."""
    views = np.flatnonzero(model.registered)
    seen = {}
    for p, v in zip(model.obs_point, model.obs_view, strict=True):
        seen.setdefault(int(v), set()).add(int(p))
    pairs = set()
    for i in views:
        scores = []
        for j in views:
            if i == j:
                continue
            shared = len(seen.get(int(i), set()) & seen.get(int(j), set()))
            if shared >= config.min_shared_points:
                scores.append((shared, int(j)))
        for _, j in sorted(scores, reverse=True)[:config.neighbours]:
            pairs.add((min(int(i), j), max(int(i), j)))
    return sorted(pairs)


def _shared_points(model: SparseModel, i: int, j: int) -> np.ndarray:
    pts_i = set(model.obs_point[model.obs_view == i].tolist())
    pts_j = set(model.obs_point[model.obs_view == j].tolist())
    return model.points_world[sorted(pts_i & pts_j)]


def _rectification(model: SparseModel, images: Sequence[LoadedImage], i: int, j: int):
    """A common rectified frame for views ``i`` and ``j`` (OpenCV pixel convention).

    The rectified x axis runs along the baseline from ``i`` to ``j`` (so ``i`` is the left
    image and disparities are positive), z is the mean viewing direction made orthogonal to
    it. Both views share the focal length and rows; each keeps its own ``cx`` so that its
    warped image fits. Returns ``R_rect_world [3, 3]``, ``f``, ``cy``, ``(cx_i, cx_j)``,
    ``(H_i, H_j)`` (homographies original -> rectified pixels) and ``(width, height)``, or
    None when the views share no rows.
    """
    T_i, T_j = model.T_cam_world[i], model.T_cam_world[j]
    c_i = -T_i[:3, :3].T @ T_i[:3, 3]
    c_j = -T_j[:3, :3].T @ T_j[:3, 3]
    x_axis = c_j - c_i
    x_axis /= np.linalg.norm(x_axis)
    z_mean = T_i[2, :3] + T_j[2, :3]  # optical axes in the world: third rows of R_cam_world
    z_axis = z_mean - (z_mean @ x_axis) * x_axis
    z_axis /= np.linalg.norm(z_axis)
    y_axis = np.cross(z_axis, x_axis)
    R_rect_world = np.stack([x_axis, y_axis, z_axis])
    f = float(np.mean([model.Ks[i][0, 0], model.Ks[i][1, 1], model.Ks[j][0, 0],
                       model.Ks[j][1, 1]]))
    limit = 2 * max(images[i].width, images[i].height, images[j].width, images[j].height)

    rotations, boxes = [], []
    for view in (i, j):
        K = _to_cv(model.Ks[view])
        R = R_rect_world @ model.T_cam_world[view, :3, :3].T  # camera -> rectified
        w, h = images[view].width, images[view].height
        corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float)
        rays = (R @ np.linalg.solve(K, corners.T)).T
        if np.any(rays[:, 2] <= 1e-6):
            return None  # a corner looks away from the common direction: too wide a pair
        xy = f * rays[:, :2] / rays[:, 2:3]
        rotations.append((K, R))
        boxes.append((xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max()))
    y_lo = max(boxes[0][2], boxes[1][2], -limit)
    y_hi = min(boxes[0][3], boxes[1][3], limit)
    if y_hi - y_lo < 16:
        return None
    height = int(np.ceil(y_hi - y_lo)) + 1
    cy = -y_lo
    cxs, width = [], 0
    for x_lo, x_hi, _, _ in boxes:
        x_lo, x_hi = max(x_lo, -limit), min(x_hi, limit)
        cxs.append(-x_lo)
        width = max(width, int(np.ceil(x_hi - x_lo)) + 1)
    homographies = []
    for (K, R), cx in zip(rotations, cxs, strict=True):
        K_rect = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
        homographies.append(K_rect @ R @ np.linalg.inv(K))
    return R_rect_world, f, cy, tuple(cxs), tuple(homographies), (width, height)


@dataclass(frozen=True)
class _PairGeometry:
    """The rectified frame of a view pair, as :func:`stereo_pair` uses it."""

    R_rect_world: np.ndarray  # [3, 3] world -> rectified rotation
    f: float  # shared focal length of the rectified images, pixels
    baseline: float  # distance between the two camera centres, world units
    shift: float  # cx_i - cx_j: measured disparity = f * baseline / z_rect + shift


def stereo_pair(model: SparseModel, images: Sequence[LoadedImage], i: int, j: int,
                config: StereoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Left-right-checked depth maps of views ``i`` and ``j`` from one rectified pair.

    Returns ``depth_i [H_i, W_i]`` and ``depth_j [H_j, W_j]`` (z in each camera, in the
    model's world units; 0 where unknown).
    """
    empty = (np.zeros((images[i].height, images[i].width)),
             np.zeros((images[j].height, images[j].width)))
    rect = _rectification(model, images, i, j)
    pts = _shared_points(model, i, j)
    if rect is None or len(pts) < 3:
        return empty
    R_rect_world, f, _cy, cxs, homographies, size = rect
    T_i, T_j = model.T_cam_world[i], model.T_cam_world[j]
    c_i = -T_i[:3, :3].T @ T_i[:3, 3]
    c_j = -T_j[:3, :3].T @ T_j[:3, 3]
    geometry = _PairGeometry(R_rect_world, f, float(np.linalg.norm(c_j - c_i)), cxs[0] - cxs[1])
    search = _disparity_search(geometry, pts, c_i, size[0], config)
    if search is None:
        return empty
    min_disp, num_disp = search
    (left, right), (valid_left, valid_right) = _rectify(images, (i, j), homographies, size)
    disparities = _sgbm_both_ways(left, right, min_disp, num_disp, config.block_size)
    if disparities is None:
        return empty
    disp_left, disp_right = disparities
    disps = (
        _left_right_checked(disp_left, disp_right, 1.0, _textured(left, valid_left, config),
                            min_disp, config.lr_tolerance),
        _left_right_checked(disp_right, disp_left, -1.0, _textured(right, valid_right, config),
                            min_disp, config.lr_tolerance),
    )
    depth_i, depth_j = (
        _depth_from_disparity(model, view, images[view], disp, H, geometry, pts, config)
        for view, disp, H in zip((i, j), disps, homographies, strict=True)
    )
    return depth_i, depth_j


def _disparity_search(geometry: _PairGeometry, pts: np.ndarray, c_i: np.ndarray, width: int,
                      config: StereoConfig) -> tuple[int, int] | None:
    """SGBM's ``(min_disp, num_disp)``: the disparity range spanned by the shared sparse
    points ``pts [P, 3]`` (world) with a margin, seen from the left camera centre ``c_i``;
    None when too few points lie in front or the search does not fit in ``width`` pixels."""
    z_rect = (pts - c_i) @ geometry.R_rect_world[2]
    ok = z_rect > 0
    if ok.sum() < 3:
        return None
    d_sparse = geometry.f * geometry.baseline / z_rect[ok] + geometry.shift
    lo, hi = np.percentile(d_sparse, [2, 98])
    margin = max(8.0, 0.25 * (hi - lo))
    min_disp = int(np.floor(lo - margin))
    num_disp = int(np.clip(np.ceil((hi + margin - min_disp) / 16.0) * 16, 16,
                           config.max_disparities))
    # SGBM needs the search to fit in the image (it fails to allocate otherwise).
    num_disp = min(num_disp, ((width - config.block_size) // 16) * 16)
    if num_disp < 16 or abs(min_disp) >= width:
        return None
    return min_disp, num_disp


def _rectify(images: Sequence[LoadedImage], views: tuple[int, int],
             homographies: tuple[np.ndarray, np.ndarray], size: tuple[int, int]
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The two views warped to the rectified frame (uint8 grey ``[h, w]``), and where each
    has image content (bool ``[h, w]``); ``size`` is ``(w, h)``."""
    import cv2

    rectified, valid = [], []
    for view, H in zip(views, homographies, strict=True):
        grey = _grey(images[view].rgb.numpy())
        rectified.append(cv2.warpPerspective(grey, H, size, flags=cv2.INTER_LINEAR))
        valid.append(cv2.warpPerspective(np.full_like(grey, 255), H, size,
                                         flags=cv2.INTER_NEAREST) > 0)
    return rectified, valid


def _sgbm_both_ways(left: np.ndarray, right: np.ndarray, min_disp: int, num_disp: int,
                    block_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """SGBM disparities ``[h, w]`` (pixels) with the left and with the right image as the
    reference, both positive; None when OpenCV rejects the pair."""
    import cv2

    bs = block_size
    sgbm = cv2.StereoSGBM_create(
        minDisparity=min_disp, numDisparities=num_disp, blockSize=bs,
        P1=8 * bs * bs, P2=32 * bs * bs, disp12MaxDiff=-1, uniquenessRatio=10,
        speckleWindowSize=100, speckleRange=2, mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
    try:
        disp_left = sgbm.compute(left, right).astype(np.float32) / 16.0
        # The right view as reference: mirror both, so that its disparities are positive
        # too (mirrored x' = w - 1 - x turns x_l - x_r into x'_r - x'_l).
        disp_right = sgbm.compute(np.ascontiguousarray(right[:, ::-1]),
                                  np.ascontiguousarray(left[:, ::-1])).astype(np.float32) / 16.0
    except cv2.error:  # a degenerate pair geometry: the other pairs still densify
        return None
    return disp_left, disp_right[:, ::-1]


def _left_right_checked(disp_ref: np.ndarray, disp_other: np.ndarray, direction: float,
                        mask: np.ndarray, min_disp: int, tolerance: float) -> np.ndarray:
    """``disp_ref [h, w]`` where the other view's disparity at the matched pixel agrees
    within ``tolerance`` pixels (``direction``: +1 left reference, -1 right), else 0."""
    h, w = disp_ref.shape
    xs = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    ok = (disp_ref >= min_disp) & mask
    target = np.round(xs - direction * disp_ref).astype(np.int64)
    ok &= (target >= 0) & (target < w)
    rows, cols = np.nonzero(ok)
    good = np.zeros_like(ok)
    good[rows, cols] = np.abs(disp_other[rows, target[rows, cols]]
                              - disp_ref[rows, cols]) <= tolerance
    return np.where(good, disp_ref, 0.0)


def _textured(grey: np.ndarray, mask: np.ndarray, config: StereoConfig) -> np.ndarray:
    """Where the block has contrast: on flat areas (sky, walls) SGBM's left-right
    consistent answers are still guesses."""
    import cv2

    g = grey.astype(np.float32)
    k = (config.block_size, config.block_size)
    std = np.sqrt(np.maximum(cv2.blur(g * g, k) - cv2.blur(g, k) ** 2, 0))
    return mask & (std >= config.min_texture)


def _depth_from_disparity(model: SparseModel, view: int, image: LoadedImage, disp: np.ndarray,
                          H: np.ndarray, geometry: _PairGeometry, pts: np.ndarray,
                          config: StereoConfig) -> np.ndarray:
    """Camera-z depth ``[H_view, W_view]`` of ``view`` from its rectified disparity
    ``disp`` (``H``: original -> rectified pixels); 0 where unknown or out of the range of
    the shared sparse points ``pts [P, 3]``."""
    import cv2

    # Inverse warp: each original pixel looks up the disparity at its rectified position
    # (nearest, so that depth edges are not blurred), which leaves no holes.
    us, vs = np.meshgrid(np.arange(image.width, dtype=np.float64),
                         np.arange(image.height, dtype=np.float64))
    pix = np.stack([us, vs, np.ones_like(us)], -1) @ H.T
    map_x = (pix[..., 0] / pix[..., 2]).astype(np.float32)
    map_y = (pix[..., 1] / pix[..., 2]).astype(np.float32)
    d = cv2.remap(disp.astype(np.float32), map_x, map_y, cv2.INTER_NEAREST,
                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    d_true = np.where(d != 0, d - geometry.shift, 0.0)
    z_rect = np.where(d_true > 1e-3,
                      geometry.f * geometry.baseline / np.maximum(d_true, 1e-3), 0.0)
    # Rectified z -> camera z along the same ray: z_cam = z_rect * (ray_cam_z / ray_rect_z).
    K = _to_cv(model.Ks[view])
    ray_cam = np.stack([(us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1],
                        np.ones_like(us)], -1)
    R = geometry.R_rect_world @ model.T_cam_world[view, :3, :3].T  # camera -> rectified
    ray_rect_z = ray_cam @ R[2]
    depth = np.where((z_rect > 0) & (ray_rect_z > 1e-6),
                     z_rect / np.maximum(ray_rect_z, 1e-6), 0.0)
    # Keep depths near the range of the shared sparse points: beyond it lie the sky and
    # other far, flat regions whose consistent matches are near-infinite depths.
    T = model.T_cam_world[view]
    z_sparse = (pts @ T[:3, :3].T + T[:3, 3])[:, 2]
    z_lo, z_hi = np.percentile(z_sparse[z_sparse > 0], [2, 98])
    depth[(depth < config.depth_range_margin ** -1 * z_lo)
          | (depth > config.depth_range_margin * z_hi)] = 0.0
    return depth


def merge_depths(maps: list[np.ndarray], tolerance: float) -> np.ndarray:
    """One depth map from several of the same view: mean where they agree, 0 where not."""
    stack = np.stack(maps)
    valid = stack > 0
    count = valid.sum(0)
    mean = np.where(count > 0, stack.sum(0) / np.maximum(count, 1), 0.0)
    lo = np.where(valid, stack, np.inf).min(0)
    hi = np.where(valid, stack, -np.inf).max(0)
    agree = (count > 0) & ((count == 1) | ((hi - lo) <= tolerance * mean))
    return np.where(agree, mean, 0.0)


def backproject(K: np.ndarray, T_cam_world: np.ndarray, u: np.ndarray, v: np.ndarray,
                z: np.ndarray) -> np.ndarray:
    """World points ``[..., 3]`` of pixels ``(u, v)`` (integer indices: the centre is at
    +0.5) at camera depths ``z``, all broadcast together."""
    z = np.broadcast_to(z, np.broadcast_shapes(np.shape(u), np.shape(z)))
    pts_cam = np.stack([(u + 0.5 - K[0, 2]) * z / K[0, 0],
                        (v + 0.5 - K[1, 2]) * z / K[1, 1], z], -1)
    T_world_cam = np.linalg.inv(T_cam_world)
    return pts_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]


def _pixels_to_world(model: SparseModel, view: int, depth: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, cols and world points ``[P, 3]`` of the pixels of ``depth`` that have one."""
    v, u = np.nonzero(depth > 0)
    return v, u, backproject(model.Ks[view], model.T_cam_world[view], u, v, depth[v, u])


def consistency_counts(model: SparseModel, depths: dict[int, np.ndarray],
                       tolerance: float) -> dict[int, np.ndarray]:
    """Per view, ``[H, W]`` how many depth maps (its own included) agree with each pixel.

    A pixel's point counts as seen by view ``k`` when it projects inside ``k`` in front of
    it and ``k``'s depth there is within ``tolerance`` (relative) of the point's depth in
    ``k``; 0 where the view has no depth.
    """
    counts = {}
    for i, depth in depths.items():
        count = np.zeros(depth.shape, np.int64)
        v, u, pts_world = _pixels_to_world(model, i, depth)
        if len(v) == 0:
            counts[i] = count
            continue
        agree = np.ones(len(v), dtype=np.int64)
        for k, depth_k in depths.items():
            if k == i:
                continue
            T = model.T_cam_world[k]
            pk = pts_world @ T[:3, :3].T + T[:3, 3]
            zk = pk[:, 2]
            front = zk > 1e-9
            uv = pk[:, :2] / np.where(front, zk, 1.0)[:, None] * np.array(
                [model.Ks[k][0, 0], model.Ks[k][1, 1]]) + model.Ks[k][:2, 2]
            col = np.floor(uv[:, 0]).astype(np.int64)
            row = np.floor(uv[:, 1]).astype(np.int64)
            h, w = depth_k.shape
            inside = front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
            seen = np.zeros(len(v))
            seen[inside] = depth_k[row[inside], col[inside]]
            agree += (seen > 0) & (np.abs(seen - zk) <= tolerance * zk)
        count[v, u] = agree
        counts[i] = count
    return counts


def fuse_depth_maps(model: SparseModel, images: Sequence[LoadedImage],
                    depths: dict[int, np.ndarray],
                    config: StereoConfig) -> tuple[np.ndarray, np.ndarray]:
    """World points ``[P, 3]`` and colours ``[P, 3]`` confirmed by ``min_views`` depth maps."""
    points, colors = [], []
    counts = consistency_counts(model, depths, config.depth_tolerance)
    for i, depth in depths.items():
        v, u, pts_world = _pixels_to_world(model, i, depth)
        if len(v) == 0:
            continue
        keep = counts[i][v, u] >= config.min_views
        points.append(pts_world[keep])
        colors.append(images[i].rgb.numpy()[v[keep], u[keep]].astype(np.float64))
    if not points:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(points), np.concatenate(colors)


def voxel_average(points: np.ndarray, colors: np.ndarray,
                  max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Average points and colours per voxel, the voxel grown until at most ``max_points``."""
    if len(points) <= max_points:
        return points, colors
    extent = np.percentile(points, 99, axis=0) - np.percentile(points, 1, axis=0)
    voxel = float(np.max(extent)) / np.sqrt(max_points)  # a surface: ~ extent^2 / voxel^2
    origin = points.min(0)
    while True:
        keys = np.floor((points - origin) / voxel).astype(np.int64)
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        if len(counts) <= max_points:
            break
        voxel *= 1.15 * np.sqrt(len(counts) / max_points)
    inverse = inverse.ravel()
    merged = np.zeros((len(counts), 3))
    merged_colors = np.zeros((len(counts), 3))
    np.add.at(merged, inverse, points)
    np.add.at(merged_colors, inverse, colors)
    return merged / counts[:, None], merged_colors / counts[:, None]


def _pixels(K: np.ndarray, T_cam_world: np.ndarray,
            points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera z, pixel column and row (floored; corner at 0) of ``points [..., 3]`` in a
    view; points not in front (z <= 1e-9) get the pixel of z = 1 (mask them with z)."""
    cam = points @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
    z = cam[..., 2]
    safe = np.where(z > 1e-9, z, 1.0)
    col = np.floor(cam[..., 0] / safe * K[0, 0] + K[0, 2]).astype(np.int64)
    row = np.floor(cam[..., 1] / safe * K[1, 1] + K[1, 2]).astype(np.int64)
    return z, col, row


def _observed_depth(model: SparseModel, view: int, fused: np.ndarray,
                    shape: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` camera z of the nearest fused point per pixel of ``view`` (0: none)."""
    h, w = shape
    z, col, row = _pixels(model.Ks[view], model.T_cam_world[view], fused)
    inside = (z > 1e-9) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    known = np.zeros((h, w))
    order = np.argsort(-z[inside])  # nearest last: it wins
    known[row[inside][order], col[inside][order]] = z[inside][order]
    return known


def _grown(known: np.ndarray, grow: int) -> np.ndarray:
    """``known`` (0: none) with every depth grown to a ``2 grow + 1`` pixel square
    (nearest wins)."""
    from scipy.ndimage import grey_erosion

    if grow <= 0:
        return known
    near = grey_erosion(np.where(known > 0, known, np.inf), size=(2 * grow + 1,) * 2)
    return np.where(np.isfinite(near), near, 0.0)


def consistent_depths(model: SparseModel, view: int, u: np.ndarray, v: np.ndarray,
                      z: np.ndarray, colors: np.ndarray, observed: dict[int, np.ndarray],
                      blurred: dict[int, np.ndarray], config: StereoConfig,
                      grid: tuple[int, int] | None = None) -> np.ndarray:
    """Depths ``[P]`` along the rays of pixels ``u, v`` (corner at 0) of ``view`` that the
    other views agree with best (0: every depth hides a surface another view observes).

    A guessed depth ``z [P]`` (a textureless pixel's) is only a starting point: the depths
    ``z`` times :data:`FILL_DEPTH_STEPS` factors spread geometrically over
    ``fill_depth_range`` (and 1) are tried, and each is scored in every other view ``k`` it
    projects into (``observed[k]``: the camera z that view observes, 0 where none):
    *violated* where that view observes a surface behind the candidate (it would hide
    it), *occluded* where the view observes one in front of it, else *seen*, scored by the
    colour difference between the pixel (``colors [P, 3]``) and what the view shows there
    (``blurred[k]``: its photo smoothed). A candidate costs the mean colour difference over
    the views that see it, ``fill_unseen_cost`` where none does, plus ``fill_depth_prior``
    per unit of ``|log factor|``; violated candidates are excluded.
    With ``grid`` (the pixels are a row-major ``[gh, gw]`` lattice), the costs are averaged
    over ``fill_window`` x ``fill_window`` neighbours first (one pixel's colour is no match).
    So a black backdrop guessed at the object's depth, where another view shows the
    object, moves back until that view shows the backdrop too (or hides the point), and
    a white table guess stays where another view shows white.
    """
    lo, hi = config.fill_depth_range
    factors = np.unique(np.concatenate([np.geomspace(lo, hi, FILL_DEPTH_STEPS), [1.0]]))
    zc = z[:, None] * factors[None, :]  # [P, C]
    pts = backproject(model.Ks[view], model.T_cam_world[view], u[:, None], v[:, None],
                      zc)  # [P, C, 3]
    diff_sum = np.zeros(zc.shape)
    seen_count = np.zeros(zc.shape)
    violated = np.zeros(zc.shape, dtype=bool)
    margin = config.fill_margin
    for k, depth_k in observed.items():
        if k == view:
            continue
        zk, col, row = _pixels(model.Ks[k], model.T_cam_world[k], pts)
        h, w = depth_k.shape
        inside = (zk > 1e-9) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        r, c = np.where(inside, row, 0), np.where(inside, col, 0)
        z_obs = np.where(inside, depth_k[r, c], 0.0)
        violated |= inside & (z_obs > 0) & (zk < (1.0 - margin) * z_obs)
        occluded = (z_obs > 0) & (zk > (1.0 + margin) * z_obs)
        seen = inside & ~occluded
        diff = np.abs(blurred[k][r, c] - colors[:, None, :]).mean(-1)
        diff_sum += np.where(seen, diff, 0.0)
        seen_count += seen
    cost = np.where(seen_count > 0, diff_sum / np.maximum(seen_count, 1),
                    config.fill_unseen_cost)
    cost = np.where(violated, VIOLATION_COST, cost)
    if grid is not None and config.fill_window > 1:  # aggregate over neighbouring pixels
        from scipy.ndimage import uniform_filter

        cost = uniform_filter(cost.reshape(*grid, -1), size=(config.fill_window,) * 2 + (1,),
                              mode="nearest").reshape(cost.shape)
    cost = cost + config.fill_depth_prior * np.abs(np.log(factors))[None, :]
    cost = np.where(violated, np.inf, cost)
    best = np.argmin(cost, axis=1)
    ok = np.isfinite(cost[np.arange(len(z)), best])
    return np.where(ok, zc[np.arange(len(z)), best], 0.0)


#: The cost (before aggregation) of a candidate that hides an observed surface.
VIOLATION_COST = 2.0
#: Depth factors :func:`consistent_depths` tries: this many, geometric over the range.
FILL_DEPTH_STEPS = 16


def fill_points(model: SparseModel, images: Sequence[LoadedImage],
                depths: dict[int, np.ndarray], fused: np.ndarray,
                config: StereoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Guessed points ``[F, 3]`` (+ colours) for the pixels no fused point explains.

    Textureless areas (a white table, a plain wall) get no stereo depth, and 3DGS cannot
    grow Gaussians where there are none nearby; a learned point-map initialiser covers
    every pixel. Here each uncovered pixel (on a ``fill_stride`` grid) borrows the depth of
    the nearest pixel with a fused point, then (``fill_consistent``) moves along its ray to
    the depth the other views agree with best (:func:`consistent_depths`), and is
    back-projected: a guess, but with the right colour near the right place, which the
    joint optimisation then refines.
    """
    from scipy.ndimage import distance_transform_edt, uniform_filter

    points, colors = [], []
    # Which pixels the fused cloud covers (its points seen from each view).
    known_of = {i: _observed_depth(model, i, fused, d.shape) for i, d in depths.items()}
    observed = {i: _grown(known, config.fill_stride // 2) for i, known in known_of.items()} \
        if config.fill_consistent else {}
    blurred = {i: uniform_filter(images[i].rgb.numpy().astype(np.float64), size=(5, 5, 1),
                                 mode="nearest") for i in depths} if config.fill_consistent else {}
    for i, depth in depths.items():
        K, T = model.Ks[i], model.T_cam_world[i]
        h, w = depth.shape
        known = known_of[i]
        covered = known > 0
        if covered.mean() < 0.01:
            continue
        # Grow the coverage by a few pixels: splats there are a stride apart anyway.
        _, (near_r, near_c) = distance_transform_edt(~covered, return_indices=True)
        grid = np.zeros_like(covered)
        first, step = config.fill_stride // 2, config.fill_stride
        grid[first::step, first::step] = True
        distance = np.hypot(near_r - np.arange(h)[:, None], near_c - np.arange(w)[None, :])
        need = grid & (distance > config.fill_stride)
        if not need.any():
            continue
        v, u = np.nonzero(grid)  # row-major lattice
        shape = (len(range(first, h, step)), len(range(first, w, step)))
        z = known[near_r[v, u], near_c[v, u]]
        if config.fill_consistent:
            z = consistent_depths(model, i, u.astype(np.float64), v.astype(np.float64), z,
                                  blurred[i][v, u], observed, blurred, config, grid=shape)
        keep = need[v, u] & (z > 0)
        v, u, z = v[keep], u[keep], z[keep]
        if len(v) == 0:
            continue
        colour = images[i].rgb.numpy()[v, u].astype(np.float64)
        points.append(backproject(K, T, u, v, z))
        colors.append(colour)
    if not points:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(points), np.concatenate(colors)


def densify(model: SparseModel, images: Sequence[LoadedImage],
            config: StereoConfig) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The fused dense cloud ``[P, 3]`` with colours ``[P, 3]`` and counts for the metrics."""
    per_view: dict[int, list[np.ndarray]] = {}
    pairs = pair_views(model, config)
    for i, j in pairs:
        depth_i, depth_j = stereo_pair(model, images, i, j, config)
        per_view.setdefault(i, []).append(depth_i)
        per_view.setdefault(j, []).append(depth_j)
    depths = {v: merge_depths(maps, config.depth_tolerance) for v, maps in per_view.items()}
    points, colors = fuse_depth_maps(model, images, depths, config)
    fused = len(points)
    pixels = sum(im.width * im.height for im in images)
    limit = max(1, min(config.max_points, int(config.points_per_pixel * pixels)))
    points, colors = voxel_average(points, colors, limit)
    stats = {"stereo_pairs": len(pairs), "fused_points": int(fused),
             "dense_points": int(len(points)), "fill_points": 0}
    if config.fill_stride > 0 and len(points):
        filled, filled_colors = fill_points(model, images, depths, points, config)
        # Guesses get at most half the budget of the measured points (CPU time).
        keep = max(1, len(filled) // max(1, limit // 2) + (len(filled) > limit // 2))
        filled, filled_colors = filled[::keep], filled_colors[::keep]
        stats["fill_points"] = int(len(filled))
        points = np.concatenate([points, filled])
        colors = np.concatenate([colors, filled_colors])
    return points, colors, stats

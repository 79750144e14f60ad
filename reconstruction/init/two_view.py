"""The fallback pose solver for 2-3 wide-baseline views, where incremental mapping stalls.

1. tracks: verified matches joined across views (union-find), inconsistent ones dropped;
2. the initial pair: essential matrix (RANSAC, on normalised coordinates) and its pose,
   chosen among the best-matched pairs for a large enough triangulation angle;
3. triangulation of every track seen by two posed views (multi-view DLT, cheirality,
   reprojection and angle checks);
4. each further view: PnP (RANSAC) on its tracks that have a 3D point, then triangulation;
5. bundle adjustment (Levenberg-Marquardt on the sparse normal equations, Huber loss) of
   poses, points and one focal length per camera (from three views on), after each new
   view and at the end.

Pixel coordinates are COLMAP's (image corner at 0), as in the match graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reconstruction.init.base import SparseModel
from reconstruction.init.match_graph import MatchGraph, image_file_name


@dataclass
class TwoViewConfig:
    max_reprojection_error: float = 4.0
    """Pixels."""
    min_inliers: int = 15
    """Fewest essential-matrix or PnP inliers that register a view."""
    init_min_angle_deg: float = 3.0
    """Median triangulation angle wanted of the initial pair."""
    min_angle_deg: float = 1.0
    """Smallest triangulation angle of a kept point."""
    shared_intrinsics: bool = True
    """Refine one focal length for all views (else one per COLMAP camera)."""
    refine_focal: bool = True
    """Refine the focal lengths at all (from three registered views on)."""
    seed: int = 0


def build_tracks(graph: MatchGraph) -> list[dict[int, int]]:
    """Tracks ``{view: keypoint index}`` of at least two views, from pairwise matches.

    A connected component with two keypoints in one view is ambiguous and dropped.
    """
    offsets = np.cumsum([0] + [len(k) for k in graph.keypoints])
    parent = np.arange(offsets[-1])

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for (i, j), m in graph.matches.items():
        for a, b in zip(offsets[i] + m[:, 0], offsets[j] + m[:, 1], strict=True):
            ra, rb = find(int(a)), find(int(b))
            if ra != rb:
                parent[ra] = rb
    components: dict[int, dict[int, int]] = {}
    bad: set[int] = set()
    nodes = np.unique(np.concatenate(
        [np.concatenate([offsets[i] + m[:, 0], offsets[j] + m[:, 1]])
         for (i, j), m in graph.matches.items()] or [np.zeros(0, np.int64)]))
    for node in nodes.tolist():
        view = int(np.searchsorted(offsets, node, side="right") - 1)
        root = find(node)
        track = components.setdefault(root, {})
        if view in track:
            bad.add(root)
        track[view] = node - int(offsets[view])
    return [t for r, t in components.items() if r not in bad and len(t) >= 2]


def _normalised(K: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``[M, 2]`` pixels -> ``[M, 2]`` normalised image coordinates."""
    return (xy - K[:2, 2]) / np.array([K[0, 0], K[1, 1]])


def _rotate(rotvec: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Rodrigues: rotate ``pts [M, 3]`` by per-row axis-angle ``rotvec [M, 3]``."""
    theta = np.linalg.norm(rotvec, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(theta > 1e-12, rotvec / theta, 0.0)
    cos, sin = np.cos(theta), np.sin(theta)
    return (pts * cos + np.cross(k, pts) * sin
            + k * np.sum(k * pts, axis=1, keepdims=True) * (1 - cos))


def _rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.asarray(rotvec, np.float64).reshape(3, 1))[0]


def _matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.asarray(R, np.float64))[0].ravel()


def triangulate(T_cam_world: np.ndarray, rays: np.ndarray) -> np.ndarray:
    """Multi-view DLT of one point from ``T_cam_world [k, 4, 4]`` and normalised rays ``[k, 2]``."""
    P = T_cam_world[:, :3, :]
    A = np.concatenate([rays[:, 0:1] * P[:, 2] - P[:, 0], rays[:, 1:2] * P[:, 2] - P[:, 1]])
    _, _, vt = np.linalg.svd(A)
    X = vt[-1]
    return X[:3] / X[3] if abs(X[3]) > 1e-12 else np.full(3, np.nan)


class _State:
    """The growing reconstruction: poses, points and which track owns which point."""

    def __init__(self, graph: MatchGraph, tracks: list[dict[int, int]], config: TwoViewConfig):
        self.graph = graph
        self.tracks = tracks
        self.config = config
        n = len(graph.keypoints)
        self.Ks = graph.Ks.copy()
        self.T = np.tile(np.eye(4), (n, 1, 1))
        self.registered = np.zeros(n, dtype=bool)
        self.points = np.full((len(tracks), 3), np.nan)  # one slot per track
        self.fixed_view = -1

    def xy(self, view: int, kp: int) -> np.ndarray:
        return self.graph.keypoints[view][kp]

    def observations(self, registered_only: bool = True):
        """``(track, view, xy)`` arrays of the observations of triangulated tracks."""
        t_idx, views, xys = [], [], []
        for t, track in enumerate(self.tracks):
            if not np.isfinite(self.points[t, 0]):
                continue
            for view, kp in track.items():
                if registered_only and not self.registered[view]:
                    continue
                t_idx.append(t)
                views.append(view)
                xys.append(self.xy(view, kp))
        return (np.asarray(t_idx, np.int64), np.asarray(views, np.int64),
                np.asarray(xys, np.float64).reshape(-1, 2))

    def project(self, views: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``[M, 2]`` and depths ``[M]`` of ``pts`` in ``views``."""
        T = self.T[views]
        pts_cam = np.einsum("mij,mj->mi", T[:, :3, :3], pts) + T[:, :3, 3]
        uvw = np.einsum("mij,mj->mi", self.Ks[views], pts_cam)
        return uvw[:, :2] / uvw[:, 2:3], pts_cam[:, 2]

    def try_triangulate(self, t: int) -> None:
        track = self.tracks[t]
        views = np.array([v for v in track if self.registered[v]])
        if len(views) < 2:
            return
        xy = np.stack([self.xy(v, track[v]) for v in views])
        rays = np.stack([_normalised(self.Ks[v], xy[k:k + 1])[0] for k, v in enumerate(views)])
        X = triangulate(self.T[views], rays)
        if not np.all(np.isfinite(X)):
            return
        uv, depth = self.project(views, np.repeat(X[None], len(views), 0))
        err = np.linalg.norm(uv - xy, axis=1)
        if np.any(depth <= 0) or np.any(err > self.config.max_reprojection_error):
            return
        R = self.T[views, :3, :3]
        centres = -np.einsum("kji,kj->ki", R, self.T[views, :3, 3])  # -R^T t
        dirs = X - centres
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        cos = np.clip(dirs @ dirs.T, -1, 1)
        if np.degrees(np.arccos(cos.min())) < self.config.min_angle_deg:
            return
        self.points[t] = X


def _initial_pair(state: _State) -> tuple[int, int] | None:
    """Register the best-matched pair with a wide enough baseline; its two view indices."""
    import cv2

    graph, config = state.graph, state.config
    best = None
    for (i, j), m in sorted(graph.matches.items(), key=lambda kv: -len(kv[1]))[:6]:
        xi = _normalised(graph.Ks[i], graph.keypoints[i][m[:, 0]])
        xj = _normalised(graph.Ks[j], graph.keypoints[j][m[:, 1]])
        focal = float(np.mean([graph.Ks[i][0, 0], graph.Ks[j][0, 0]]))
        threshold = config.max_reprojection_error / focal
        E, mask = cv2.findEssentialMat(xi, xj, np.eye(3), method=cv2.RANSAC, prob=0.9999,
                                       threshold=threshold)
        if E is None or E.shape != (3, 3):
            continue
        count, R, t, mask = cv2.recoverPose(E, xi, xj, np.eye(3), mask=mask)
        if count < config.min_inliers:
            continue
        inl = mask.ravel() > 0
        T_j = np.eye(4)
        T_j[:3, :3], T_j[:3, 3] = R, t.ravel()
        pts4 = cv2.triangulatePoints(np.eye(3, 4), T_j[:3], xi[inl].T, xj[inl].T)
        pts = (pts4[:3] / pts4[3]).T
        d_i = pts / np.linalg.norm(pts, axis=1, keepdims=True)
        c_j = -R.T @ t.ravel()
        d_j = pts - c_j
        d_j /= np.linalg.norm(d_j, axis=1, keepdims=True)
        angle = float(np.degrees(np.median(np.arccos(np.clip((d_i * d_j).sum(1), -1, 1)))))
        score = count * min(angle / config.init_min_angle_deg, 1.0)
        if best is None or score > best[0]:
            best = (score, i, j, T_j)
    if best is None:
        return None
    _, i, j, T_j = best
    state.T[i], state.T[j] = np.eye(4), T_j
    state.registered[[i, j]] = True
    state.fixed_view = i
    return i, j


def _register_next(state: _State) -> bool:
    """PnP on the unregistered view with most 2D-3D matches; False when none succeeds."""
    import cv2

    candidates = []
    for view in np.flatnonzero(~state.registered):
        idx = [t for t, track in enumerate(state.tracks)
               if view in track and np.isfinite(state.points[t, 0])]
        if len(idx) >= max(state.config.min_inliers, 6):
            candidates.append((len(idx), int(view), idx))
    for _, view, idx in sorted(candidates, reverse=True):
        pts = state.points[idx]
        xy = np.stack([state.xy(view, state.tracks[t][view]) for t in idx])
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            pts, xy, state.Ks[view], None, iterationsCount=2000,
            reprojectionError=state.config.max_reprojection_error, confidence=0.9999,
            flags=cv2.SOLVEPNP_EPNP)
        if not ok or inliers is None or len(inliers) < state.config.min_inliers:
            continue
        inl = inliers.ravel()
        rvec, tvec = cv2.solvePnPRefineLM(pts[inl], xy[inl], state.Ks[view], None, rvec, tvec)
        state.T[view] = np.eye(4)
        state.T[view, :3, :3] = _rotvec_to_matrix(rvec)
        state.T[view, :3, 3] = tvec.ravel()
        state.registered[view] = True
        return True
    return False


def _skew(v: np.ndarray) -> np.ndarray:
    """``[M, 3] -> [M, 3, 3]`` cross-product matrices."""
    z = np.zeros(len(v))
    return np.stack([np.stack([z, -v[:, 2], v[:, 1]], 1),
                     np.stack([v[:, 2], z, -v[:, 0]], 1),
                     np.stack([-v[:, 1], v[:, 0], z], 1)], 1)


def levenberg_marquardt(residuals, jacobian, x0: np.ndarray, max_iterations: int = 50,
                        huber: float = 1.0) -> np.ndarray:
    """Minimise ``sum huber(residuals(x))`` by Levenberg-Marquardt on the sparse normal
    equations (``scipy.sparse`` direct solve), with IRLS weights for the Huber loss.

    Marquardt's scaling (``lambda * diag(J^T W J)``) makes the step invariant to the units
    of the parameters (pixels, metres, log-focal), which plain gradient steps are not.
    """
    from scipy.sparse import diags
    from scipy.sparse.linalg import spsolve

    def cost_and_weights(r: np.ndarray) -> tuple[float, np.ndarray]:
        a = np.abs(r)
        weights = np.where(a <= huber, 1.0, huber / np.maximum(a, 1e-12))
        cost = np.where(a <= huber, 0.5 * r * r, huber * (a - 0.5 * huber)).sum()
        return float(cost), weights

    x = x0.copy()
    r = residuals(x)
    cost, weights = cost_and_weights(r)
    lam = 1e-3
    for _ in range(max_iterations):
        J = jacobian(x)
        JtW = J.T.multiply(weights[None, :]).tocsr()
        A = (JtW @ J).tocsc()
        g = JtW @ r
        diag = A.diagonal()
        diag = np.where(diag > 0, diag, 1.0)
        improved = False
        for _ in range(10):
            step = spsolve((A + diags(lam * diag)).tocsc(), -g)
            if not np.all(np.isfinite(step)):
                lam *= 10
                continue
            r_new = residuals(x + step)
            cost_new, weights_new = cost_and_weights(r_new)
            if cost_new < cost:
                x, r, weights = x + step, r_new, weights_new
                improved = cost - cost_new > 1e-9 * max(cost, 1e-12)
                cost = cost_new
                lam = max(lam / 3, 1e-9)
                break
            lam *= 10
        if not improved:
            break
    return x


def bundle_adjust(state: _State, max_nfev: int = 50) -> None:
    """Refine registered poses (all but the fixed view), focal lengths and points in place.

    Rotations are updated on the left, ``R = exp(delta) @ R0``; the rotation Jacobian is
    ``-[R p]_x``, exact at ``delta = 0`` and close over the small steps of one call (each
    step is accepted only if the cost drops). Residuals are pixels, Huber-weighted at 1 px.
    """
    t_idx, views, xy = state.observations()
    if len(t_idx) == 0:
        return
    problem = _BundleProblem(state, t_idx, views, xy)
    x = levenberg_marquardt(problem.residuals, problem.jacobian, problem.x0,
                            max_iterations=max_nfev)
    problem.write_back(x)


class _BundleProblem:
    """Bundle adjustment of a :class:`_State` as a least-squares problem in a flat vector.

    Layout of ``x``: per free view ``(rotvec delta [3], translation [3])``, then the log
    focal length of each intrinsics group, then the points ``[P, 3]`` (world).
    """

    def __init__(self, state: _State, t_idx: np.ndarray, views: np.ndarray,
                 xy: np.ndarray) -> None:
        self.state, self.views, self.xy = state, views, xy  # observations [M], [M], [M, 2]
        self.tracks_used, self.p_idx = np.unique(t_idx, return_inverse=True)
        self.free_views = [int(v) for v in np.flatnonzero(state.registered)
                           if v != state.fixed_view]
        view_slot = np.full(len(state.registered), -1)
        view_slot[self.free_views] = np.arange(len(self.free_views))
        cam_ids = state.graph.camera_ids
        self.groups = (np.zeros(len(cam_ids), np.int64) if state.config.shared_intrinsics
                       else np.unique(cam_ids, return_inverse=True)[1])
        self.n_focal = int(self.groups.max()) + 1
        self.n_pose = 6 * len(self.free_views)
        self.R0 = state.T[:, :3, :3].copy()
        # Two views leave the focal length all but unobservable (it drifts): fix it until a
        # third view is registered.
        self.refine_focal = state.config.refine_focal and int(state.registered.sum()) >= 3
        self.x0 = self._initial_vector()
        self.obs_slot = view_slot[views]
        self.has_pose = self.obs_slot >= 0
        self.pp = state.Ks[views][:, :2, 2]
        self.obs_group = self.groups[views]
        self.m = len(t_idx)

    def _initial_vector(self) -> np.ndarray:
        state, n_pose, n_focal = self.state, self.n_pose, self.n_focal
        x0 = np.zeros(n_pose + n_focal + 3 * len(self.tracks_used))
        for k, v in enumerate(self.free_views):
            x0[6 * k + 3:6 * k + 6] = state.T[v, :3, 3]
        focal0 = np.array([np.mean([state.Ks[v][0, 0] for v in np.flatnonzero(self.groups == g)])
                           for g in range(n_focal)])
        x0[n_pose:n_pose + n_focal] = np.log(focal0)  # log: positive and well scaled
        x0[n_pose + n_focal:] = state.points[self.tracks_used].ravel()
        return x0

    def unpack(self, x: np.ndarray):
        """Per observation: the rotated point ``[M, 3]``, the point in the camera ``[M, 3]``,
        the focal length ``[M]`` and the rotation delta ``[M, 3]``."""
        n_pose, n_focal, has_pose = self.n_pose, self.n_focal, self.has_pose
        poses = x[:n_pose].reshape(-1, 6)
        delta = np.where(has_pose[:, None], poses[self.obs_slot, :3], 0.0)
        trans = np.where(has_pose[:, None], poses[self.obs_slot, 3:],
                         self.state.T[self.views, :3, 3])
        focal = np.exp(x[n_pose:n_pose + n_focal])[self.obs_group]
        pts = x[n_pose + n_focal:].reshape(-1, 3)[self.p_idx]
        rotated = _rotate(delta, np.einsum("mij,mj->mi", self.R0[self.views], pts))
        return rotated, rotated + trans, focal, delta

    def residuals(self, x: np.ndarray) -> np.ndarray:
        """Reprojection errors ``[2 M]`` in pixels (u, v per observation)."""
        _, pc, focal, _ = self.unpack(x)
        z = np.maximum(pc[:, 2], 1e-9)
        return (focal[:, None] * pc[:, :2] / z[:, None] + self.pp - self.xy).ravel()

    def jacobian(self, x: np.ndarray):
        """``d residuals / d x``, a sparse ``[2 M, len(x)]`` matrix."""
        from scipy.sparse import csr_matrix

        m, n_pose, n_focal = self.m, self.n_pose, self.n_focal
        rotated, pc, focal, _ = self.unpack(x)
        z = np.maximum(pc[:, 2], 1e-9)
        d_proj = np.zeros((m, 2, 3))  # d uv / d pc
        d_proj[:, 0, 0] = d_proj[:, 1, 1] = focal / z
        d_proj[:, :, 2] = -focal[:, None] * pc[:, :2] / (z * z)[:, None]
        R_views = self.R0.copy()
        poses = x[:n_pose].reshape(-1, 6)
        for k, v in enumerate(self.free_views):
            R_views[v] = _rotvec_to_matrix(poses[k, :3]) @ self.R0[v]
        R = R_views[self.views]
        blocks_rot = d_proj @ -_skew(rotated)  # [m, 2, 3]
        blocks_t = d_proj  # [m, 2, 3]
        blocks_f = (focal[:, None] * pc[:, :2] / z[:, None])[:, :, None]  # [m, 2, 1]
        if not self.refine_focal:
            blocks_f = np.zeros_like(blocks_f)  # a zero column: LM leaves the focal alone
        blocks_p = d_proj @ R  # [m, 2, 3]
        everyone = np.ones(m, dtype=bool)
        entries = [
            _jacobian_entries(blocks_rot, 6 * self.obs_slot, self.has_pose),
            _jacobian_entries(blocks_t, 6 * self.obs_slot + 3, self.has_pose),
            _jacobian_entries(blocks_f, n_pose + self.obs_group, everyone),
            _jacobian_entries(blocks_p, n_pose + n_focal + 3 * self.p_idx, everyone),
        ]
        rows, cols, vals = (np.concatenate(parts) for parts in zip(*entries, strict=True))
        return csr_matrix((vals, (rows, cols)), shape=(2 * m, self.x0.size))

    def write_back(self, x: np.ndarray) -> None:
        """Store the poses, focal lengths and points of ``x`` in the state."""
        state, n_pose, n_focal = self.state, self.n_pose, self.n_focal
        for k, v in enumerate(self.free_views):
            state.T[v, :3, :3] = _rotvec_to_matrix(x[6 * k:6 * k + 3]) @ self.R0[v]
            state.T[v, :3, 3] = x[6 * k + 3:6 * k + 6]
        focal = np.exp(x[n_pose:n_pose + n_focal])
        for v in range(len(state.Ks)):
            state.Ks[v][0, 0] = state.Ks[v][1, 1] = focal[self.groups[v]]
        state.points[self.tracks_used] = x[n_pose + n_focal:].reshape(-1, 3)


def _jacobian_entries(block: np.ndarray, col0: np.ndarray, sel: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO ``(rows, cols, values)`` of the ``[M, 2, k]`` Jacobian blocks of the observations
    ``sel`` (bool ``[M]``), whose parameters start at column ``col0 [M]``; observation
    ``i`` owns rows ``2 i`` and ``2 i + 1``."""
    m = len(sel)
    k = block.shape[2]
    r = np.stack([2 * np.arange(m), 2 * np.arange(m) + 1], 1)  # [m, 2]
    rows = np.repeat(r[sel][:, :, None], k, 2).ravel()
    cols = np.broadcast_to(col0[sel][:, None, None] + np.arange(k),
                           (int(sel.sum()), 2, k)).ravel()
    return rows, cols, block[sel].ravel()


def _filter(state: _State) -> None:
    """Drop points with a large reprojection error or behind a camera."""
    t_idx, views, xy = state.observations()
    if len(t_idx) == 0:
        return
    uv, depth = state.project(views, state.points[t_idx])
    bad = (np.linalg.norm(uv - xy, axis=1) > state.config.max_reprojection_error) | (depth <= 0)
    state.points[np.unique(t_idx[bad])] = np.nan


def run_two_view(graph: MatchGraph, config: TwoViewConfig) -> SparseModel:
    """Register as many views as possible (see the module doc); check ``registered``."""
    import cv2

    cv2.setRNGSeed(config.seed)
    tracks = build_tracks(graph)
    state = _State(graph, tracks, config)
    if _initial_pair(state) is not None:
        for t in range(len(tracks)):
            state.try_triangulate(t)
        bundle_adjust(state)
        _filter(state)
        while not state.registered.all() and _register_next(state):
            for t in range(len(tracks)):
                if not np.isfinite(state.points[t, 0]):
                    state.try_triangulate(t)
            bundle_adjust(state)
            _filter(state)
        bundle_adjust(state, max_nfev=100)
        _filter(state)

    t_idx, views, xy = state.observations()
    used, p_idx = np.unique(t_idx, return_inverse=True)
    # Points seen by fewer than two registered views after filtering carry no geometry.
    keep_obs = np.bincount(p_idx, minlength=len(used))[p_idx] >= 2 if len(used) else p_idx >= 0
    t_idx, views, xy = t_idx[keep_obs], views[keep_obs], xy[keep_obs]
    used, p_idx = np.unique(t_idx, return_inverse=True)
    n = len(graph.keypoints)
    return SparseModel(
        names=[image_file_name(i) for i in range(n)],
        sizes=graph.sizes.copy(),
        Ks=state.Ks,
        T_cam_world=state.T,
        registered=state.registered,
        points_world=state.points[used].reshape(-1, 3),
        colors=np.full((len(used), 3), 0.5),
        obs_point=p_idx.astype(np.int64),
        obs_view=views,
        obs_xy=xy,
        mapper="two-view",
    )

"""SparseAGS outlier correction: a discrete search over pose hypotheses, then refinement.

A view whose pose is grossly wrong (an object seen "from the other side") cannot be fixed
by gradient descent: the render-and-compare loss has no slope across 90 or 180 degrees.
SparseAGS (Zhao et al., NeurIPS 2024, Sec. 3.3) instead searches: with a scene built from
the inlier views, it places hypotheses all around the object, refines each briefly by
render-and-compare, and keeps the best. :func:`correct_outlier` does this in three stages,
every one batched over hypotheses through :func:`reconstruction.pose_opt.optimise_poses`
(one render call per step for a chunk of ``batch_size`` hypotheses)::

    stage      hypotheses                                     image size  steps
    search     elevations x azimuths (15 deg) x radii x rolls  ~48 px     search_iterations
               (+ the view's current pose, if given)
    refine     best top_fraction, each + jitter_count jittered ~96 px     refine_iterations
    final      best final_keep                                 ~192 px    final_iterations

Hypotheses (the object frame)::

            up (from the inlier cameras)
             ^      * eye = centre + r (cos e (cos a e1 + sin a e2) + sin e up)
             |     /
             |  e /       e: elevation, in a band around the inliers' elevations
             |   /        a: azimuth, the full circle in azimuth_step_deg steps
           centre ---> e1 r: radius, the inliers' median distance times radius_factors

The search and refine stages render a voxel-merged copy of a Gaussian scene
(:func:`decimated`; render cost on the CPU grows with Gaussians x cameras, not pixels), the
final stage the scene itself. Every refinement turns the camera about a pivot near the
object centre (:class:`_Pivoted`), which makes orbiting one direction instead of a valley.

Each hypothesis looks at the object centre (``model.centre()``) with its image up along
``up`` (then turned by each of ``roll_deg``); with a mask, the camera is turned so that the
centre lands on the mask's centroid instead of the principal point (photos seldom centre
the object exactly). Jitter orbits a pose about the centre by a random rotation (Gaussian
angle of ``jitter_deg``) and scales its distance (``jitter_radius``), so the jittered
camera still sees the object.

Ranking (each stage): the sum of two ranks, the photometric loss of
:func:`~reconstruction.pose_opt.optimise_poses` (``0.8 L1 + 0.2 (1 - SSIM)``, plus
``mask_weight * |alpha - mask|`` with a mask) and a perceptual distance: LPIPS when the
caller passes a network loaded from local weights (:func:`reconstruction.eval.lpips.load_lpips`),
else ``1 - SSIM`` (no weights are ever downloaded; the result says which was used), plus,
with feature matches, a third rank: the view's epipolar cost against the inliers. Ties go to
the lower photometric loss. The chosen pose is that of the final stage.

Torch is imported inside the functions so that :class:`CorrectionConfig` stays light for
the command line's ``--help``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn

    from geometry.cameras import Cameras
    from reconstruction.scene_model import SceneModel

__all__ = ["CorrectionConfig", "CorrectionResult", "StageReport", "correct_outlier",
           "planned_steps", "pose_hypotheses", "up_direction"]


@dataclass
class CorrectionConfig:
    """Options of the outlier correction (hypothesis search, then refinement)."""

    azimuth_step_deg: float = 15.0
    """Azimuth spacing of the hypotheses (the full circle; the paper's 15 degrees)."""
    elevation_margin_deg: float = 15.0
    """The elevation band reaches this far below the lowest and above the highest inlier."""
    elevation_step_deg: float = 15.0
    """Largest elevation spacing inside the band (the band's ends are always tried)."""
    radius_factors: tuple[float, ...] = (1.0,)
    """Hypothesis distances to the centre, as multiples of the inliers' median distance.
    The paper tries a few; one is the CPU default (each radius costs as much as the whole
    grid): the search's steps move a camera by up to search iterations times
    the search translation step (0.12 of the distance) and the refine stage 30 steps more, which
    took 10-20 % distance errors to within 1 % on a test object."""
    roll_deg: tuple[float, ...] = (0.0,)
    """In-plane rotations tried for every position (0: image up along the scene's up)."""
    search_size: int = 48
    """Longest image side (pixels) of the search stage's renders."""
    search_iterations: int = 12
    """Render-and-compare steps per hypothesis in the search stage."""
    search_lr_rotation: float = 1e-2
    """Adam step of the rotation (radians) in the search and refine stages: wide enough to
    cover half the azimuth spacing in the steps given."""
    search_lr_translation: float = 1e-2
    """Adam step of the translation in the search and refine stages, times scene_scale."""
    top_fraction: float = 0.08
    """Share of the search stage's hypotheses kept for the refine stage."""
    top_min: int = 4
    """Hypotheses kept at least (when there are that many)."""
    jitter_count: int = 3
    """Jittered copies of each kept hypothesis (the kept pose itself is refined too)."""
    jitter_deg: float = 8.0
    """Standard deviation of the jitter's orbit about the centre (degrees)."""
    jitter_radius: float = 0.05
    """Standard deviation of the jitter's relative change of the distance to the centre."""
    refine_size: int = 96
    """Longest image side of the refine stage (low resolution first)."""
    refine_iterations: int = 30
    final_keep: int = 3
    """Hypotheses refined in the final stage."""
    final_size: int = 192
    """Longest image side of the final stage (capped at the image's own size)."""
    final_iterations: int = 40
    final_lr_rotation: float = 3e-3
    final_lr_translation: float = 3e-3
    mask_weight: float = 1.0
    """Weight of the silhouette term mean |alpha - mask| (when a mask is given)."""
    merge_pixels: float = 1.0
    """The search and refine stages render a copy of a Gaussian scene whose Gaussians are
    merged per voxel of this many pixels' footprint at the stage's resolution and the
    hypotheses' distance (0: the full scene everywhere; the final stage always uses it)."""
    batch_size: int = 32
    """Hypotheses rendered together (bounds the memory of one render call)."""
    perceptual_min_size: int = 64
    """LPIPS inputs are upsampled to at least this shorter side (its trunk downsamples 16x)."""
    seed: int = 0
    """Seed of the jitter (results are deterministic for a seed and thread count)."""

    def __post_init__(self) -> None:
        if self.azimuth_step_deg <= 0 or self.azimuth_step_deg > 360:
            raise ValueError("azimuth_step_deg must be in (0, 360]")
        if self.elevation_step_deg <= 0:
            raise ValueError("elevation_step_deg must be positive")
        if not self.radius_factors or min(self.radius_factors) <= 0:
            raise ValueError("radius_factors must be positive and not empty")
        if not self.roll_deg:
            raise ValueError("roll_deg needs at least one value (0 for none)")
        if not 0 < self.top_fraction <= 1:
            raise ValueError("top_fraction must be in (0, 1]")
        if min(self.search_size, self.refine_size, self.final_size) < 8:
            raise ValueError("stage image sizes must be at least 8 pixels")
        if self.batch_size < 1 or self.final_keep < 1 or self.top_min < 1:
            raise ValueError("batch_size, final_keep and top_min must be at least 1")


@dataclass
class StageReport:
    """How one stage of the search went."""

    name: str
    hypotheses: int
    width: int
    height: int
    iterations: int
    seconds: float
    best_loss: float
    """Lowest photometric(+mask) loss of the stage, at its resolution."""


@dataclass
class CorrectionResult:
    """The corrected pose of an outlier view and how the search went."""

    T_world_cam: Tensor  # [4, 4] float64 CPU: the best pose, in the model's frame
    loss: float
    """Photometric(+mask) loss of that pose at the final stage's resolution."""
    perceptual: float
    """Its perceptual distance (LPIPS or 1 - SSIM, see ``perceptual_kind``)."""
    perceptual_kind: str
    """``lpips`` or ``1-ssim`` (no LPIPS weights were given)."""
    hypotheses: int
    """Hypotheses refined over all stages (search + refine + final)."""
    seconds: float
    initial_loss: float | None = None
    """Loss of the view's current pose at the final resolution, if it was given (not
    refined; the chosen pose's loss may still be higher than this)."""
    from_initial: bool = False
    """Whether the chosen pose descends from the view's current pose."""
    stages: list[StageReport] = field(default_factory=list)
    search_T_world_cam: Tensor | None = None
    """``[S, 4, 4]`` the search stage's hypotheses after refinement, best first (float64)."""
    search_loss: Tensor | None = None  # [S] their photometric losses, same order


def up_direction(cameras: Cameras) -> Tensor:
    """``[3]`` float64 unit vector: the scene's up as the inlier cameras suggest it.

    The mean of the cameras' image-up axes (``-y`` in OpenCV) gives the sign; when the
    camera centres spread over a plane (an orbit), that plane's normal, which a tilted
    capture does not bias, is used instead if it lies within 45 degrees of the mean.
    """
    import torch

    T = cameras.T_world_cam.detach().double().cpu().reshape(-1, 4, 4)
    mean_up = -T[:, :3, 1].mean(0)
    if float(mean_up.norm()) < 1e-9:
        mean_up = -T[0, :3, 1]
    mean_up = mean_up / mean_up.norm()
    centres = T[:, :3, 3]
    if len(centres) >= 3:
        spread = centres - centres.mean(0)
        _, s, vh = torch.linalg.svd(spread, full_matrices=False)
        if s[0] > 0 and float(s[1] / s[0]) > 0.2:
            normal = vh[2] * torch.sign(vh[2] @ mean_up)
            if float(normal @ mean_up) > math.cos(math.radians(45.0)):
                return normal / normal.norm()
    return mean_up


def _basis(up: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors completing ``up`` to a right-handed frame ``(e1, e2, up)``."""
    import torch

    axis = torch.zeros(3, dtype=torch.float64)
    axis[int(torch.argmin(up.abs()))] = 1.0
    e1 = axis - (axis @ up) * up
    e1 = e1 / e1.norm()
    return e1, torch.linalg.cross(up, e1)


def _look_at(eyes: Tensor, centre: Tensor, up: Tensor, ray_cam: Tensor,
             roll_rad: Tensor) -> Tensor:
    """``[N, 4, 4]`` camera-to-world poses at ``eyes [N, 3]`` whose pixel ray ``ray_cam [3]``
    (camera frame) passes through ``centre``, image up along ``up``, turned by ``roll_rad
    [N]`` about the ray."""
    import torch

    from geometry.so3 import axis_angle_to_matrix

    z = torch.nn.functional.normalize(centre - eyes, dim=-1)
    y = -(up - (z @ up)[:, None] * z)
    degenerate = y.norm(dim=-1) < 1e-9
    if bool(degenerate.any()):  # looking along up: any perpendicular
        e1, _ = _basis(up)
        y[degenerate] = e1 - (z[degenerate] @ e1)[:, None] * z[degenerate]
    y = torch.nn.functional.normalize(y, dim=-1)
    x = torch.linalg.cross(y, z)
    R0 = torch.stack((x, y, z), -1)  # world-from-camera, columns x, y, z
    # Turn the camera so that its ray ``ray_cam`` (not the optical axis) meets the centre:
    # R_off maps ray_cam onto the optical axis (shortest rotation), the roll turns about it.
    d = ray_cam / ray_cam.norm()
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    axis = torch.linalg.cross(d, ez)
    angle = torch.atan2(axis.norm(), d @ ez)
    R_off = axis_angle_to_matrix(axis / axis.norm().clamp_min(1e-12) * angle)
    R_roll = axis_angle_to_matrix(ez[None] * roll_rad[:, None])
    T = torch.eye(4, dtype=torch.float64).repeat(len(eyes), 1, 1)
    T[:, :3, :3] = R0 @ R_roll @ R_off
    T[:, :3, 3] = eyes
    return T


def pose_hypotheses(cameras_inliers: Cameras, centre: Tensor, config: CorrectionConfig,
                    ray_cam: Tensor | None = None) -> Tensor:
    """``[N, 4, 4]`` float64 camera-to-world poses of the search stage (see the module doc).

    Args:
        cameras_inliers: the inlier cameras (their up, elevations and distances).
        centre: ``[3]`` the object centre.
        config: the grid.
        ray_cam: ``[3]`` camera-frame ray that should pass through the centre (default the
            optical axis).
    """
    import torch

    T = cameras_inliers.T_world_cam.detach().double().cpu().reshape(-1, 4, 4)
    centre = centre.detach().double().cpu()
    up = up_direction(cameras_inliers)
    e1, e2 = _basis(up)
    offsets = T[:, :3, 3] - centre
    distance = offsets.norm(dim=-1).clamp_min(1e-9)
    elevations = torch.asin((offsets @ up / distance).clamp(-1.0, 1.0))
    margin = math.radians(config.elevation_margin_deg)
    low = max(float(elevations.min()) - margin, -math.radians(85.0))
    high = min(float(elevations.max()) + margin, math.radians(85.0))
    count = max(1, math.ceil((high - low) / math.radians(config.elevation_step_deg)) + 1)
    elev = torch.linspace(low, high, count, dtype=torch.float64) if count > 1 \
        else torch.tensor([0.5 * (low + high)], dtype=torch.float64)
    n_az = max(1, round(360.0 / config.azimuth_step_deg))
    azim = torch.arange(n_az, dtype=torch.float64) * (2.0 * math.pi / n_az)
    radii = float(distance.median()) * torch.tensor(config.radius_factors, dtype=torch.float64)
    rolls = torch.deg2rad(torch.tensor(config.roll_deg, dtype=torch.float64))
    grid = torch.cartesian_prod(elev, azim, radii, rolls)  # [N, 4]
    e, a, r, roll = grid.unbind(-1)
    direction = (torch.cos(e) * torch.cos(a))[:, None] * e1 \
        + (torch.cos(e) * torch.sin(a))[:, None] * e2 + torch.sin(e)[:, None] * up
    eyes = centre + r[:, None] * direction
    ray = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) if ray_cam is None \
        else ray_cam.double().cpu()
    return _look_at(eyes, centre, up, ray, roll)


def _jitter(T_world_cam: Tensor, centre: Tensor, count: int, config: CorrectionConfig,
            generator) -> Tensor:
    """``[M * count, 4, 4]``: each pose orbited about ``centre`` by a random rotation and
    moved along its line to the centre by a random relative amount."""
    import torch

    from geometry.so3 import axis_angle_to_matrix

    m = len(T_world_cam)
    if count <= 0 or m == 0:
        return T_world_cam.new_zeros(0, 4, 4)
    axis = torch.randn(m * count, 3, generator=generator, dtype=torch.float64)
    axis = torch.nn.functional.normalize(axis, dim=-1)
    angle = torch.randn(m * count, 1, generator=generator, dtype=torch.float64) \
        * math.radians(config.jitter_deg)
    scale = 1.0 + config.jitter_radius * torch.randn(m * count, 1, generator=generator,
                                                      dtype=torch.float64)
    R = axis_angle_to_matrix(axis * angle)
    T = T_world_cam.repeat_interleave(count, 0).clone()
    offset = (T[:, :3, 3] - centre) * scale.clamp_min(0.2)
    T[:, :3, 3] = centre + (R @ offset[..., None])[..., 0]
    T[:, :3, :3] = R @ T[:, :3, :3]
    return T


class _Pivoted:
    """A scene model seen through cameras whose frame origin sits ``depth`` ahead of the
    real camera, on its optical axis (near the object centre).

    :func:`~reconstruction.pose_opt.optimise_poses` applies its twist in the camera frame,
    so its rotation turns a camera about its own centre; orbiting an object then needs a
    rotation and a translation in a fixed ratio, a narrow valley that Adam descends slowly
    (on a test object, 60 steps took a camera 6 degrees off only to 4). In this frame the
    rotation orbits the object and the translation shifts it in the image: both directions
    are well separated, and 40 steps recover the same 6 degrees to 0.2.
    """

    differentiable_cameras = True

    def __init__(self, model: SceneModel, depth: float) -> None:
        self.model, self.depth = model, float(depth)
        self.cameras, self.background = model.cameras, model.background

    @staticmethod
    def shift(depth: float, like: Tensor) -> Tensor:
        """``[4, 4]`` translation by ``depth`` along the camera's z axis."""
        import torch

        T = torch.eye(4, dtype=like.dtype, device=like.device)
        T[2, 3] = depth
        return T

    def real(self, cameras: Cameras) -> Cameras:
        """The real cameras of pivot-frame ``cameras``."""
        from geometry.cameras import Cameras

        T = cameras.T_world_cam @ self.shift(-self.depth, cameras.T_world_cam)
        return Cameras(K=cameras.K, T_world_cam=T, width=cameras.width, height=cameras.height)

    def render(self, cameras: Cameras, outputs=("rgb", "depth", "alpha")):
        return self.model.render(self.real(cameras), outputs)

    def near(self, cameras: Cameras) -> _Pivoted:
        return _Pivoted(self.model.near(self.real(cameras)), self.depth)

    def info(self) -> dict:
        return self.model.info()

    @property
    def device(self):
        return self.model.device


def decimated(model: SceneModel, voxel: float) -> SceneModel:
    """A cheaper copy of a Gaussian scene for low-resolution renders: the Gaussians of each
    cubic voxel of side ``voxel`` merged into one (opacity-weighted moments: mean, the
    covariance of the merged parts, degree-0 colour; the highest opacity). Other models,
    or ``voxel <= 0``, come back unchanged.

    Render cost on the CPU grows with Gaussians x cameras, hardly with pixels; a search
    renders hundreds of hypotheses at ~48 pixels, where a voxel of one pixel's footprint
    loses nothing visible.
    """
    import torch

    from geometry.so3 import matrix_to_quat
    from reconstruction.gaussians import GaussianScene
    from reconstruction.scene_model import GaussianSceneModel

    if voxel <= 0 or not isinstance(model, GaussianSceneModel):
        return model
    s = model.scene.to(dtype=torch.float32).detach()
    keys = torch.floor(s.means / voxel).long()
    _, group = torch.unique(keys, dim=0, return_inverse=True)
    m = int(group.max()) + 1 if len(group) else 0
    if m >= 0.8 * s.num_gaussians:
        return model
    w = s.opacities.double().clamp_min(1e-6)
    means = s.means.double()

    def pooled(x: Tensor) -> Tensor:
        total = torch.zeros(m, *x.shape[1:], dtype=torch.float64).index_add_(0, group, x)
        return total

    weight = pooled(w)
    mean = pooled(w[:, None] * means) / weight[:, None]
    R = _quat_matrix(s.quats.double())
    cov_i = R @ torch.diag_embed(s.scales.double() ** 2) @ R.transpose(-1, -2)
    d = means - mean[group]
    cov = pooled(w[:, None, None] * (cov_i + d[:, :, None] * d[:, None, :])) / weight[:, None, None]
    eigval, eigvec = torch.linalg.eigh(cov)
    eigvec = eigvec * torch.sign(torch.linalg.det(eigvec))[:, None, None]  # a rotation
    colour_dc = pooled(w[:, None] * s.sh0[:, 0].double()) / weight[:, None]
    opacity = torch.zeros(m, dtype=torch.float64).scatter_reduce_(
        0, group, s.opacities.double(), "amax", include_self=False)
    opacity = opacity.clamp(1e-4, 1 - 1e-4)
    scene = GaussianScene(
        means=mean.float(), quats=matrix_to_quat(eigvec).float(),
        log_scales=0.5 * torch.log(eigval.clamp_min(1e-12)).float(),
        logit_opacities=torch.logit(opacity).float(), sh0=colour_dc[:, None].float(),
        shN=torch.zeros(m, 0, 3))
    return GaussianSceneModel(scene.to(s.means.device), model.cameras, model.background)


def _quat_matrix(q: Tensor) -> Tensor:
    from geometry.so3 import quat_normalize, quat_to_matrix

    return quat_to_matrix(quat_normalize(q))


class _Stage:
    """The target image, mask and intrinsics at one stage's resolution."""

    def __init__(self, image: Tensor, mask: Tensor | None, K: Tensor, longest: int) -> None:
        import torch

        h, w = image.shape[:2]
        scale = min(1.0, longest / max(w, h))
        self.width, self.height = max(8, round(w * scale)), max(8, round(h * scale))
        self.K = K.double().cpu().clone()
        self.K[0] *= self.width / w
        self.K[1] *= self.height / h

        def resize(x: Tensor) -> Tensor:
            if (self.height, self.width) == (h, w):
                return x.float()
            return torch.nn.functional.interpolate(
                x.float().permute(2, 0, 1)[None], size=(self.height, self.width),
                mode="area")[0].permute(1, 2, 0).contiguous()

        self.image = resize(image)
        self.mask = None if mask is None else resize(mask[..., None])[..., 0]


def _ranks(values: Tensor) -> Tensor:
    """``[N]`` rank of each value (0 for the smallest; NaN last)."""
    import torch

    order = torch.argsort(torch.nan_to_num(values.double(), nan=math.inf), stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order))
    return ranks


class _Search:
    """One :func:`correct_outlier` call: runs the stages over chunks of hypotheses."""

    def __init__(self, model: SceneModel, centre: Tensor, image: Tensor, mask: Tensor | None,
                 K: Tensor, config: CorrectionConfig, scene_scale: float,
                 lpips: nn.Module | None, on_step: Callable[[], None] | None,
                 epipolar: Callable[[Tensor], Tensor] | None = None) -> None:
        self.model, self.centre = model, centre
        self.epipolar = epipolar
        self.image, self.mask, self.K = image, mask, K
        self.config, self.scene_scale = config, scene_scale
        self.lpips, self.on_step = lpips, on_step
        self.stages: list[StageReport] = []
        self.refined = 0
        self.order: Tensor | None = None
        """The permutation the last :meth:`run` sorted its poses by."""

    def perceptual(self, T_world_cam: Tensor, stage: _Stage, model: SceneModel) -> Tensor:
        """``[N]`` perceptual distance of each pose's render to the target (no gradients)."""
        import torch

        from geometry.cameras import Cameras
        from reconstruction.engine.losses import ssim

        values = []
        device = self.model.device
        target = stage.image.to(device)
        with torch.no_grad():
            for start in range(0, len(T_world_cam), self.config.batch_size):
                T = T_world_cam[start:start + self.config.batch_size]
                cams = Cameras(K=stage.K.float(), T_world_cam=T.float(), width=stage.width,
                               height=stage.height).to(device)
                rgb = model.render(cams, ("rgb",)).rgb.float()
                if self.lpips is not None:
                    values.append(self._lpips(rgb, target).double().cpu())
                else:
                    values.append(torch.stack([1.0 - ssim(rgb[k], target) for k in
                                               range(len(rgb))]).double().cpu())
        return torch.cat(values)

    def _lpips(self, rgb: Tensor, target: Tensor) -> Tensor:
        import torch

        short = min(rgb.shape[1:3])
        if short < self.config.perceptual_min_size:
            factor = self.config.perceptual_min_size / short
            size = (round(rgb.shape[1] * factor), round(rgb.shape[2] * factor))

            def up(x: Tensor) -> Tensor:
                return torch.nn.functional.interpolate(
                    x.permute(0, 3, 1, 2), size=size, mode="bilinear",
                    align_corners=False).permute(0, 2, 3, 1)

            rgb, target = up(rgb), up(target[None])[0]
        dtype = next(self.lpips.parameters()).dtype
        return self.lpips(rgb.to(dtype), target.expand_as(rgb).to(dtype))

    def run(self, name: str, T_world_cam: Tensor, longest: int, iterations: int,
            lr_rotation: float, lr_translation: float,
            merge: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Refine every pose at one resolution; ``(poses, photometric, perceptual)`` sorted
        by combined rank (best first)."""
        import torch

        from geometry.cameras import Cameras
        from reconstruction.pose_opt import PoseOptConfig, optimise_poses

        start_time = time.perf_counter()
        config = self.config
        stage = _Stage(self.image, self.mask, self.K, longest)
        opt = PoseOptConfig(iterations=iterations, lr_rotation=lr_rotation,
                            lr_translation=lr_translation, coarse_fraction=0.0,
                            mask_weight=config.mask_weight if stage.mask is not None else 0.0)
        device = self.model.device
        model = self.model
        if merge and self.config.merge_pixels > 0:
            distance = float((T_world_cam[:, :3, 3] - self.centre).norm(dim=-1).median())
            focal = float(stage.K[0, 0] + stage.K[1, 1]) / 2
            model = decimated(model, self.config.merge_pixels * distance / focal)
        refined, losses = [], []
        step = None if self.on_step is None else (lambda _k: self.on_step())
        for start in range(0, len(T_world_cam), config.batch_size):
            T = T_world_cam[start:start + config.batch_size]
            b = len(T)
            # Pivot about the point at the chunk's median distance to the object centre.
            depth = float((T[:, :3, 3] - self.centre).norm(dim=-1).median())
            pivoted = _Pivoted(model, depth)
            T_pivot = T @ _Pivoted.shift(depth, T)
            cams = Cameras(K=stage.K.float(), T_world_cam=T_pivot.float(), width=stage.width,
                           height=stage.height).to(device)
            targets = stage.image[None].expand(b, -1, -1, -1)
            masks = None if stage.mask is None else stage.mask[None].expand(b, -1, -1)
            result = optimise_poses(pivoted, cams, targets, opt, self.scene_scale,
                                    masks=masks, on_step=step)
            T_real = result.T_world_cam.double()
            refined.append(T_real @ _Pivoted.shift(-depth, T_real))
            losses.append(result.final_loss.double())
        T_out, photometric = torch.cat(refined), torch.cat(losses)
        perceptual = self.perceptual(T_out, stage, model)
        rank = (_ranks(photometric) + _ranks(perceptual)).double()
        if self.epipolar is not None:
            rank = rank + _ranks(self.epipolar(T_out).double()).double()
        order = torch.argsort(rank + 1e-3 * _ranks(photometric).double() / len(photometric),
                              stable=True)
        self.refined += len(T_world_cam)
        self.order = order
        self.stages.append(StageReport(name, len(T_world_cam), stage.width, stage.height,
                                       iterations, time.perf_counter() - start_time,
                                       float(photometric.min())))
        return T_out[order], photometric[order], perceptual[order]


    def loss_of(self, T_world_cam: Tensor, longest: int) -> float:
        """Photometric(+mask) loss of one pose as it is, at a stage's resolution."""
        from geometry.cameras import Cameras
        from reconstruction.pose_opt import PoseOptConfig, optimise_poses

        stage = _Stage(self.image, self.mask, self.K, longest)
        opt = PoseOptConfig(iterations=0, mask_weight=self.config.mask_weight
                            if stage.mask is not None else 0.0)
        cams = Cameras(K=stage.K.float(), T_world_cam=T_world_cam.detach().float()[None],
                       width=stage.width, height=stage.height).to(self.model.device)
        masks = None if stage.mask is None else stage.mask[None]
        result = optimise_poses(self.model, cams, stage.image[None], opt, self.scene_scale,
                                masks=masks)
        return float(result.final_loss[0])


def _num_kept(num: int, config: CorrectionConfig) -> int:
    """Search hypotheses kept for the refine stage."""
    return min(num, max(config.top_min, math.ceil(config.top_fraction * num)))


def planned_steps(num_hypotheses: int, config: CorrectionConfig) -> int:
    """Render-and-compare steps (``on_step`` calls) of a search over ``num_hypotheses``
    (``len(pose_hypotheses(...))``, plus one with an initial pose): chunks times steps."""
    chunks = math.ceil
    kept = _num_kept(num_hypotheses, config)
    refine = kept * (1 + config.jitter_count)
    final = min(refine, config.final_keep)
    b = config.batch_size
    return (chunks(num_hypotheses / b) * config.search_iterations
            + chunks(refine / b) * config.refine_iterations
            + chunks(final / b) * config.final_iterations)


def _mask_ray(mask: Tensor | None, K: Tensor) -> Tensor | None:
    """``[3]`` camera-frame ray through the mask's centroid (None without a usable mask)."""
    import torch

    if mask is None:
        return None
    weights = mask.double().cpu()
    total = float(weights.sum())
    if total < 4.0:
        return None
    h, w = weights.shape
    v = (torch.arange(h, dtype=torch.float64) + 0.5)[:, None]
    u = (torch.arange(w, dtype=torch.float64) + 0.5)[None, :]
    pixel = torch.tensor([float((weights * u).sum()) / total,
                          float((weights * v).sum()) / total, 1.0], dtype=torch.float64)
    return torch.linalg.solve(K.double().cpu(), pixel)


def correct_outlier(model: SceneModel, cameras_inliers: Cameras, image: Tensor,
                    mask: Tensor | None, K: Tensor, width: int, height: int,
                    config: CorrectionConfig, scene_scale: float,
                    initial_T_world_cam: Tensor | None = None,
                    on_step: Callable[[], None] | None = None,
                    lpips: nn.Module | None = None,
                    epipolar: Callable[[Tensor], Tensor] | None = None) -> CorrectionResult:
    """Find the pose of an outlier view by hypothesis search and refinement.

    Args:
        model: the scene built from the inlier views (not modified); its renders must be
            differentiable w.r.t. the cameras.
        cameras_inliers: ``[k]`` the inlier cameras in the model's frame (their up
            direction, elevations and distances to the centre place the hypotheses).
        image: ``[H, W, 3]`` the outlier's photo in [0, 1], as the model was fit to (e.g.
            composited on the model's background outside the mask).
        mask: optional ``[H, W]`` object mask (bool or [0, 1]); adds the silhouette term
            and aims the hypotheses at its centroid.
        K: ``[3, 3]`` the outlier's intrinsics for ``width x height`` pixels.
        width, height: the image size (must match ``image``).
        config: the search (see :class:`CorrectionConfig`).
        scene_scale: typical camera distance to the scene (sets the translation steps).
        initial_T_world_cam: optional ``[4, 4]`` the view's current pose, added to the
            search as one more hypothesis.
        on_step: called after every render-and-compare step (progress bars; the number
            of steps is that of :func:`planned_steps`).
        lpips: optional LPIPS network (:func:`reconstruction.eval.lpips.load_lpips`) for
            the perceptual rank; without it ``1 - SSIM`` is used.
        epipolar: optional ``[N, 4, 4] poses -> [N]`` cost of the view's feature matches to
            the inliers (:func:`~.matches.view_residual`); its rank joins the ranking.

    Returns:
        :class:`CorrectionResult` with the best pose (float64, CPU, the model's frame).
    """
    import torch

    if tuple(image.shape) != (height, width, 3):
        raise ValueError(f"image must be [H, W, 3] = {(height, width, 3)}, "
                         f"got {tuple(image.shape)}")
    if mask is not None and tuple(mask.shape) != (height, width):
        raise ValueError(f"mask must be [H, W] = {(height, width)}, got {tuple(mask.shape)}")
    if len(cameras_inliers) < 1:
        raise ValueError("correct_outlier needs at least one inlier camera")
    start_time = time.perf_counter()
    image = image.detach().float().cpu()
    mask = None if mask is None else mask.detach().float().cpu()
    K = K.detach().double().cpu()
    centre = model.centre().detach().double().cpu()
    hypotheses = pose_hypotheses(cameras_inliers, centre, config, _mask_ray(mask, K))
    num_grid = len(hypotheses)
    if initial_T_world_cam is not None:
        hypotheses = torch.cat((hypotheses, initial_T_world_cam.detach().double().cpu()[None]))
    search = _Search(model, centre, image, mask, K, config, scene_scale, lpips, on_step,
                     epipolar)
    # Which hypotheses descend from the view's current pose (followed through the sorts).
    from_initial = torch.zeros(len(hypotheses), dtype=torch.bool)
    from_initial[num_grid:] = True
    T, photometric, _ = search.run("search", hypotheses, config.search_size,
                                   config.search_iterations, config.search_lr_rotation,
                                   config.search_lr_translation, merge=True)
    from_initial = from_initial[search.order]
    search_T, search_loss = T.clone(), photometric.clone()
    keep = _num_kept(len(T), config)
    kept = T[:keep]
    generator = torch.Generator().manual_seed(config.seed)
    T_refine = torch.cat((kept, _jitter(kept, centre, config.jitter_count, config, generator)))
    from_initial = torch.cat((from_initial[:keep],
                              from_initial[:keep].repeat_interleave(config.jitter_count)))
    T, photometric, _ = search.run("refine", T_refine, config.refine_size,
                                   config.refine_iterations, config.search_lr_rotation,
                                   config.search_lr_translation, merge=True)
    from_initial = from_initial[search.order]
    final_n = min(len(T), config.final_keep)
    T, photometric, perceptual = search.run(
        "final", T[:final_n], config.final_size, config.final_iterations,
        config.final_lr_rotation, config.final_lr_translation)
    from_initial = from_initial[:final_n][search.order]
    initial_loss = None
    if initial_T_world_cam is not None:
        initial_loss = search.loss_of(initial_T_world_cam, config.final_size)
    return CorrectionResult(
        T_world_cam=T[0].clone(), loss=float(photometric[0]), perceptual=float(perceptual[0]),
        perceptual_kind="lpips" if lpips is not None else "1-ssim",
        hypotheses=search.refined, seconds=time.perf_counter() - start_time,
        initial_loss=initial_loss, from_initial=bool(from_initial[0]),
        stages=search.stages, search_T_world_cam=search_T, search_loss=search_loss)

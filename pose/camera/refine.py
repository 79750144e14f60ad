"""Render-and-compare camera refinement against a reconstructed scene.

:class:`RenderCompareRefiner` is a :class:`~pose.camera.CameraPoseEstimator` that needs
initial cameras: it renders the scene model from them and moves each camera until the
render matches its photo (and, with masks and ``mask_weight``, its silhouette), through
:func:`reconstruction.pose_opt.optimise_poses` (the optimisation ``recon eval`` uses for
test views). Views of one image size are refined together, in one batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pose.camera import CameraPoseResult
from reconstruction.pose_opt import PoseOptConfig

if TYPE_CHECKING:
    from torch import Tensor

    from geometry.cameras import Cameras
    from reconstruction.scene_model import SceneModel

__all__ = ["RenderCompareRefiner"]

#: Rendered opacity above which a pixel's depth counts for the default scene scale.
_MIN_ALPHA = 0.5


class RenderCompareRefiner:
    """Refine initial cameras against a frozen scene model (see the module doc).

    Args:
        model: the scene; its renders must be differentiable w.r.t. the cameras.
        config: schedule, learning rates and loss weights of the optimisation.
        scene_scale: typical camera distance to the scene in the model's units (sets the
            translation step); None: the median rendered depth seen from the initial
            cameras.
    """

    def __init__(self, model: SceneModel, config: PoseOptConfig | None = None,
                 scene_scale: float | None = None) -> None:
        self.model = model
        self.config = config if config is not None else PoseOptConfig()
        self.scene_scale = scene_scale

    def _scene_scale(self, cameras: Cameras) -> float:
        import torch

        if self.scene_scale is not None:
            return float(self.scene_scale)
        with torch.no_grad():
            out = self.model.render(cameras, ("depth", "alpha"))
        seen = (out.alpha > _MIN_ALPHA) & torch.isfinite(out.depth) & (out.depth > 0)
        if not bool(seen.any()):
            raise ValueError("the scene model renders nothing from the initial cameras; "
                             "give cameras that look at the scene")
        return float(out.depth[seen].median())

    def estimate(self, images: list[Tensor], masks: list[Tensor] | None = None,
                 initial: Cameras | None = None) -> CameraPoseResult:
        """Refined cameras of the views (see :class:`~pose.camera.CameraPoseEstimator`).

        The confidence of a view is ``1 - final loss`` clamped to [0, 1]: the photometric
        agreement of its render with its photo (1 is a perfect match).

        Raises:
            ValueError: no initial cameras, or their number or sizes do not match the images.
        """
        import torch

        from geometry.cameras import Cameras
        from reconstruction.pose_opt import optimise_poses

        if initial is None:
            raise ValueError("RenderCompareRefiner refines cameras: give initial cameras")
        if len(initial) != len(images) or (masks is not None and len(masks) != len(images)):
            raise ValueError(f"{len(images)} images need as many initial cameras and masks, "
                             f"got {len(initial)} cameras")
        sizes = [(int(im.shape[1]), int(im.shape[0])) for im in images]
        for k, (w, h) in enumerate(sizes):
            if (int(initial.width[k]), int(initial.height[k])) != (w, h):
                raise ValueError(f"image {k} is {w}x{h} but its initial camera is "
                                 f"{int(initial.width[k])}x{int(initial.height[k])}")
        T_world_cam = initial.T_world_cam.detach().clone()
        confidence = torch.zeros(len(images), dtype=torch.float64)
        use_masks = masks is not None and self.config.mask_weight > 0
        for size in dict.fromkeys(sizes):
            rows = [k for k, s in enumerate(sizes) if s == size]
            cameras = initial[rows]
            targets = torch.stack([images[k].float() for k in rows])
            group_masks = torch.stack([masks[k].float() for k in rows]) if use_masks else None
            result = optimise_poses(self.model, cameras, targets, self.config,
                                    self._scene_scale(cameras), masks=group_masks)
            T_world_cam[rows] = result.T_world_cam.to(T_world_cam)
            confidence[rows] = (1.0 - result.final_loss).clamp(0.0, 1.0)
        refined = Cameras(K=initial.K, T_world_cam=T_world_cam, width=initial.width,
                          height=initial.height, dist=initial.dist,
                          image_paths=initial.image_paths, names=initial.names)
        return CameraPoseResult(cameras=refined, confidence=confidence)

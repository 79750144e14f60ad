"""ADen as a camera-pose estimator, and ``pose aden predict``.

:class:`AdenEstimator` follows :class:`pose.camera.CameraPoseEstimator`: photos in, cameras
out (world = the object-centred frame of :func:`~pose.camera.aden.data.poses_from_relative`,
the first camera at distance 1 from the object; intrinsics from the checkpoint's assumed
focal length, principal point at the image centre; confidence = the softmax probability of
the chosen hypothesis, 1 for the first view).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor

from geometry.cameras import Cameras
from geometry.errors import UserError
from pose.camera import CameraPoseResult
from pose.camera.aden.config import check_selection
from pose.camera.aden.data import load_photos, poses_from_relative, prepare_images
from pose.camera.aden.model import AdenNet

__all__ = ["AdenEstimator", "run_predict"]


class AdenEstimator:
    """``estimate(images) -> CameraPoseResult`` with a trained :class:`AdenNet`."""

    def __init__(self, model: AdenNet | str | Path, seed: int = 0,
                 device: str = "cpu", select: str = "argmax",
                 mirror_views: bool = False) -> None:
        check_selection(select, "--select")
        if not isinstance(model, AdenNet):
            from pose.camera.aden.train import load_model

            model = load_model(model, device)
        self.model = model.eval()
        self.seed = seed
        self.select = select
        self.mirror_views = mirror_views
        self.last_scores: Tensor | None = None

    def estimate(self, images: list[Tensor], masks: list[Tensor] | None = None,
                 initial: Cameras | None = None) -> CameraPoseResult:
        """Cameras of ``V >= 2`` photos ``[H, W, 3]`` in [0, 1] (``masks`` and ``initial``
        are not used: ADen estimates from scratch).

        Raises:
            UserError: fewer than 2 photos, or photos of different sizes.
        """
        if len(images) < 2:
            raise UserError(f"ADen needs at least 2 views of the object, got {len(images)}.")
        sizes = {(int(im.shape[1]), int(im.shape[0])) for im in images}
        if len(sizes) > 1:
            raise UserError("ADen needs photos of one size; these have "
                            f"{', '.join(f'{w}x{h}' for w, h in sorted(sizes))}.")
        device = next(self.model.parameters()).device
        x = prepare_images(images, self.model.config.image_size).float().div(255.0)
        R, t, prob = self.model.predict(x[None].to(device), seed=self.seed,
                                        select=self.select, mirror_views=self.mirror_views)
        T = poses_from_relative(R[0].cpu(), t[0].cpu())
        (w, h), = sizes
        f = self.model.config.focal_ndc * min(w, h) / 2.0
        K = torch.tensor([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]],
                         dtype=torch.float64).expand(len(images), 3, 3)
        cameras = Cameras(K=K, T_world_cam=T, width=w, height=h)
        self.last_scores = prob[0].cpu()
        return CameraPoseResult(cameras=cameras, confidence=prob[0].cpu().double())


def run_predict(checkpoint: Path, images: Path, out: Path, seed: int = 0,
                quiet: bool = False, overwrite: bool = False, device: str = "cpu",
                select: str = "argmax", mirror_views: bool = False) -> dict:
    """Estimate the cameras of the photos in ``images``; write ``out/transforms.json``,
    ``out/sparse/0/`` (COLMAP text) and ``out/scores.json``. Returns the scores dict.

    ``out`` may be an earlier output of this command (it is replaced); another non-empty
    folder only with ``overwrite``."""
    from geometry.device import check_device
    from geometry.io.atomic import atomic_directory, check_output_folder, check_replaceable
    from geometry.io.colmap import write_colmap_model
    from geometry.io.transforms_json import write_transforms_json
    from geometry.progress import log_stage

    check_output_folder(out)
    check_replaceable(out, "scores.json", overwrite)
    check_device(device)
    estimator = AdenEstimator(checkpoint, seed=seed, device=device, select=select,
                              mirror_views=mirror_views)
    files, photos = load_photos(images)
    start = time.perf_counter()
    result = estimator.estimate(photos)
    seconds = time.perf_counter() - start
    cams = result.cameras
    out = Path(out)
    with atomic_directory(out) as tmp:
        cams_named = Cameras(K=cams.K, T_world_cam=cams.T_world_cam, width=cams.width,
                             height=cams.height, image_paths=[str(p.resolve()) for p in files],
                             names=[p.name for p in files])
        write_transforms_json(tmp / "transforms.json", cams_named,
                              file_paths=[str(p.resolve()) for p in files])
        write_colmap_model(tmp / "sparse" / "0", cams_named)
        scores = {"model": estimator.model.config.mode, "select": select,
                  "mirror_views": mirror_views, "seconds": seconds,
                  "views": [{"name": p.name, "score": float(s)}
                            for p, s in zip(files, result.confidence, strict=True)]}
        (tmp / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    log_stage(f"wrote {out}: {len(files)} cameras in {seconds:.2f} s", quiet=quiet)
    return scores

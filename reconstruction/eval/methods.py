"""The reconstruction methods ``recon eval`` can measure, each behind one adapter function.

An adapter takes the training images (and, with ``--known-poses``, their ground-truth
cameras) and returns the fitted Gaussian scene with the method's training cameras in the
scene's frame. To add a method, write a :data:`Method` function and add it to
:data:`METHODS` and to :data:`MethodName`.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from geometry.cameras import Cameras
from reconstruction.eval.config import MethodName
from reconstruction.gaussians import GaussianScene


@dataclass
class MethodInput:
    """What eval gives a method."""

    images: list[Path]
    """The training images, in training-view order."""
    out: Path
    """Folder for the method's own outputs (kept in the eval output)."""
    cameras: Cameras | None = None
    """Ground-truth training cameras (``--known-poses``); the method must then return its
    scene in their frame. None: the method estimates the cameras."""
    iterations: int | None = None
    """Optimisation steps; None: the method's default schedule."""
    init: str | None = None
    """Coarse initialiser, for methods that offer several (InstantSplat: ``sfm``,
    ``sfm-sparse``); None: the method's default."""
    seed: int = 0
    device: str = "cpu"
    quiet: bool = False


@dataclass
class MethodOutput:
    """What a method returns."""

    scene: GaussianScene
    cameras: Cameras
    """``[k]`` the training cameras as the method ended with them, in the scene's frame,
    same order as the input images (intrinsics for the images' resolution)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Colour the method renders behind the Gaussians."""
    timings: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


#: ``(inputs) -> outputs``; raises UserError on bad input.
Method = Callable[[MethodInput], MethodOutput]


def _stage_images(images: list[Path], folder: Path) -> None:
    """Copy the training images into ``folder`` so that their name order is the input order."""
    folder.mkdir(parents=True)
    for k, path in enumerate(images):
        shutil.copyfile(path, folder / f"{k:03d}_{path.name}")


def run_instantsplat(inputs: MethodInput) -> MethodOutput:
    """InstantSplat (``recon fit``) on the training images.

    Pose-free: :func:`reconstruction.instantsplat.pipeline.fit` (SfM initialisation, joint
    optimisation of Gaussians and poses) on a folder holding only the training images, at
    their full resolution. With known cameras: the same initialisation supplies the point
    cloud, which is moved into the ground-truth frame by the similarity between the SfM
    cameras and the given ones; then the Gaussians are optimised with the given poses
    fixed (``optimise_poses=False``).
    """
    from reconstruction.instantsplat.config import FitConfig

    config = FitConfig(images=inputs.out / "_images", out=inputs.out / "fit", max_size=None,
                       seed=inputs.seed, device=inputs.device, quiet=inputs.quiet)
    if inputs.init is not None:
        config.init = inputs.init
    if inputs.iterations is not None:
        config.iterations = inputs.iterations
    if inputs.cameras is None:
        return _instantsplat_pose_free(inputs, config)
    return _instantsplat_known_poses(inputs, config)


def _instantsplat_pose_free(inputs: MethodInput, config) -> MethodOutput:
    import torch

    from geometry.io.transforms_json import read_transforms_json
    from reconstruction.gaussians import read_ply
    from reconstruction.instantsplat.pipeline import fit

    _stage_images(inputs.images, config.images)
    try:
        metrics = fit(config)
    finally:
        shutil.rmtree(config.images, ignore_errors=True)
    scene = read_ply(config.out / "splats.ply")
    cameras = read_transforms_json(config.out / "transforms.json", dtype=torch.float64).cameras
    order = sorted(range(len(cameras)), key=lambda i: Path(cameras.names[i]).name)
    cameras = cameras[order]
    return MethodOutput(scene=scene, cameras=cameras, background=config.train.background,
                        timings=dict(metrics.get("timings_s", {})),
                        info={"training_psnr_db": metrics.get("training_psnr_db"),
                              "num_gaussians": metrics.get("num_gaussians"),
                              "iterations": config.iterations, "init": config.init})


def _instantsplat_known_poses(inputs: MethodInput, config) -> MethodOutput:
    import numpy as np
    import torch

    from geometry.errors import UserError
    from geometry.sim3 import align_poses, sim3_apply
    from reconstruction.gaussians import write_ply
    from reconstruction.images import load_images
    from reconstruction.init.registry import INITIALISERS
    from reconstruction.instantsplat.trainer import TrainData, Trainer

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _stage_images(inputs.images, config.images)
    try:
        images = load_images(config.images, None, config.train.background)
    finally:
        shutil.rmtree(config.images, ignore_errors=True)
    timings["load_images"] = time.perf_counter() - t0
    given = inputs.cameras.to(dtype=torch.float64)
    for k, im in enumerate(images):
        if (im.width, im.height) != (int(given.width[k]), int(given.height[k])):
            raise UserError(f"training image {inputs.images[k]} is {im.width}x{im.height} but "
                            "its camera describes another size; use matching cameras.")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparseview-eval-init-") as work:
        init = INITIALISERS[config.init](images, Path(work), config.init_options, config.seed)
    timings.update({f"init_{k}": v for k, v in init.timings.items()})
    timings["init"] = time.perf_counter() - t0
    # Move the SfM cloud into the given frame: the similarity taking SfM camera centres
    # (and orientations where the centres are collinear) onto the given ones.
    T_sfm = torch.from_numpy(np.linalg.inv(init.model.T_cam_world))
    try:
        s, R, t = align_poses(T_sfm, given.T_world_cam)
    except ValueError:
        s, R, t = align_poses(T_sfm, given.T_world_cam, use_orientations=True)
    points = sim3_apply(s, R, t, torch.from_numpy(init.points_world))
    # Train in a normalised world (centre at the cloud's median, mean camera distance 1)
    # as recon fit does, then map the Gaussians back.
    centre = points.median(0).values
    distance = float((given.centers - centre).norm(dim=-1).mean())
    scale = 1.0 / distance if math.isfinite(distance) and distance > 0 else 1.0
    T_cam_world = given.T_cam_world.clone()
    T_cam_world[:, :3, 3] = scale * (T_cam_world[:, :3, 3]
                                     + (T_cam_world[:, :3, :3] @ centre[:, None])[..., 0])
    train_config = replace(config.train, iterations=config.iterations, optimise_poses=False)
    data = TrainData(images=[im.rgb for im in images], Ks=given.K.float(),
                     T_cam_world_init=T_cam_world.float(), scene_scale=1.0)
    seed_scene = GaussianScene.from_points(
        ((points - centre) * scale).float(), torch.from_numpy(init.colors).float().clamp(0, 1),
        sh_degree=train_config.sh_degree, initial_opacity=train_config.initial_opacity)
    trainer = Trainer(data, seed_scene, train_config, seed=config.seed, device=config.device)
    t0 = time.perf_counter()
    trainer.train()
    timings["train"] = time.perf_counter() - t0
    fitted = trainer.scene().to(dtype=torch.float64)
    scene = GaussianScene(
        means=fitted.means / scale + centre, quats=fitted.quats,
        log_scales=fitted.log_scales - math.log(scale), logit_opacities=fitted.logit_opacities,
        sh0=fitted.sh0, shN=fitted.shN).to(dtype=torch.float32)
    config.out.mkdir(parents=True, exist_ok=True)
    write_ply(config.out / "splats.ply", scene)
    psnrs = trainer.evaluate()
    return MethodOutput(scene=scene, cameras=given, background=train_config.background,
                        timings=timings,
                        info={"training_psnr_db": float(np.mean(psnrs)),
                              "num_gaussians": trainer.num_gaussians,
                              "iterations": config.iterations, "init": config.init,
                              "known_poses": True})


METHODS: dict[str, Method] = {
    "instantsplat": run_instantsplat,
}

assert tuple(METHODS) == typing.get_args(MethodName), "MethodName and METHODS differ"

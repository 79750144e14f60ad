"""The reconstruction methods ``recon eval`` can measure, each behind one adapter function.

An adapter takes the training images (and, with ``--known-poses``, their ground-truth
cameras) and returns the fitted Gaussian scene with the method's training cameras in the
scene's frame. To add a method, write a :data:`Method` function and add it to
:data:`METHODS` and to :data:`MethodName`.
"""

from __future__ import annotations

import shutil
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from geometry.cameras import Cameras
from reconstruction.eval.config import MethodName
from reconstruction.gaussians import GaussianScene
from reconstruction.rdggs.config import RDGGSConfig


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
    threads: int | None = None
    """CPU threads (None: all cores)."""
    rdggs: RDGGSConfig | None = None
    """RDG-GS options (None: its defaults)."""
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


def _stage_priors(images: list[Path], folder: Path, staged: Path) -> Path:
    """The depth maps ``folder/<stem>.npy`` of the training images, under the staged image
    names (:func:`_stage_images`), in ``staged``."""
    from geometry.errors import UserError

    if not Path(folder).is_dir():
        raise UserError(f"--rdggs.prior-dir {folder} is not a folder; give the folder of "
                        "<photo stem>.npy depth maps.")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for k, path in enumerate(images):
        source = Path(folder) / f"{path.stem}.npy"
        if not source.is_file():
            raise UserError(f"{folder} has no depth map for {path.name} (expected "
                            f"{source.name}); give one per training view.")
        shutil.copyfile(source, staged / f"{k:03d}_{path.stem}.npy")
    return staged


def _run_fit(inputs: MethodInput, method: str) -> MethodOutput:
    """``recon fit --method METHOD`` on a folder holding only the training images.

    Pose-free: the whole pipeline (SfM initialisation, joint optimisation of Gaussians and
    poses) at the images' full resolution. With known cameras: the initialisation
    triangulates its cloud with the ground-truth cameras; the poses stay fixed and the scene
    comes back in that frame.
    """
    import torch

    from geometry.io.transforms_json import read_transforms_json
    from reconstruction.gaussians import read_ply
    from reconstruction.instantsplat.config import FitConfig
    from reconstruction.instantsplat.pipeline import fit

    config = FitConfig(images=inputs.out / "_images", out=inputs.out / "fit", max_size=None,
                       method=method, seed=inputs.seed, device=inputs.device,
                       threads=inputs.threads, quiet=inputs.quiet)
    if inputs.rdggs is not None:
        config.rdggs = replace(inputs.rdggs)
        if config.rdggs.prior_dir is not None:
            config.rdggs.prior_dir = _stage_priors(inputs.images, config.rdggs.prior_dir,
                                                   inputs.out / "_priors")
    if inputs.init is not None:
        config.init = inputs.init
    if inputs.iterations is not None:
        config.iterations = inputs.iterations
    _stage_images(inputs.images, config.images)
    try:
        metrics = fit(config, cameras=inputs.cameras)
    finally:
        shutil.rmtree(config.images, ignore_errors=True)
        shutil.rmtree(inputs.out / "_priors", ignore_errors=True)
    scene = read_ply(config.out / "splats.ply")
    cameras = read_transforms_json(config.out / "transforms.json", dtype=torch.float64).cameras
    order = sorted(range(len(cameras)), key=lambda i: Path(cameras.names[i]).name)
    cameras = cameras[order]
    if inputs.cameras is not None:
        cameras = inputs.cameras.to(dtype=torch.float64)  # exactly the given ones
    info = {"training_psnr_db": metrics.get("training_psnr_db"),
            "num_gaussians": metrics.get("num_gaussians"),
            "iterations": config.iterations, "init": config.init,
            "known_poses": inputs.cameras is not None}
    info.update({k: v for k, v in metrics.items() if k.startswith(method + "_")})
    return MethodOutput(scene=scene, cameras=cameras, background=config.train.background,
                        timings=dict(metrics.get("timings_s", {})), info=info)


def run_instantsplat(inputs: MethodInput) -> MethodOutput:
    """InstantSplat (``recon fit``): SfM + stereo initialisation, F-3DGO."""
    return _run_fit(inputs, "instantsplat")


def run_rdggs(inputs: MethodInput) -> MethodOutput:
    """RDG-GS (``recon fit --method rdggs``): InstantSplat's engine with relative depth
    guidance from depth priors and adaptive sampling."""
    return _run_fit(inputs, "rdggs")


METHODS: dict[str, Method] = {
    "instantsplat": run_instantsplat,
    "rdggs": run_rdggs,
}

assert tuple(METHODS) == typing.get_args(MethodName), "MethodName and METHODS differ"

"""``recon fit``: unposed photos -> Gaussian splats + camera poses (InstantSplat on CPU).

Stages: load the photos; coarse geometric initialisation (``--init``, SfM + stereo by
default); normalise the world (scene centre at the origin, mean camera distance 1); joint
optimisation of Gaussians and poses (F-3DGO, or RDG-GS's depth-guided variant with
``--method rdggs``); write the outputs.

With known cameras (``--poses PATH`` or ``fit(config, cameras=...)``) the initial cloud is
triangulated with them (SfM only matches the photos; see :mod:`reconstruction.init.cgi`),
the poses stay fixed, and the outputs are written in the given frame. Without, the outputs are
in the normalised SfM frame (its centre and scale are in metrics.json).

Outputs (the folder appears complete or not at all)::

    OUT/splats.ply         standard 3DGS PLY
    OUT/cameras/           COLMAP text model (PINHOLE cameras, optimised poses, SfM points)
    OUT/images/            the photos as the cameras see them (oriented, composited, resized)
    OUT/transforms.json    nerfstudio cameras (file paths into OUT/images)
    OUT/metrics.json       per-stage timings, training PSNR, Gaussian count, pose changes

While training, resumable checkpoints (safetensors + JSON) go to ``.OUT.resume/`` beside
``OUT``; it is removed when the run finishes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import typing
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from geometry.errors import UserError
from geometry.io.atomic import atomic_directory, atomic_write_text
from reconstruction.images import LoadedImage, load_images, save_png, warn
from reconstruction.init.registry import INITIALISERS
from reconstruction.instantsplat.config import FitConfig
from reconstruction.instantsplat.trainer import TrainData, Trainer

if typing.TYPE_CHECKING:
    from geometry.cameras import Cameras

CHECKPOINT_VERSION = 1


def resume_dir(out: Path) -> Path:
    """Where checkpoints of a run writing ``out`` live."""
    return out.parent / f".{out.name}.resume"


def _fingerprint(images: list[LoadedImage]) -> list[dict]:
    return [{"name": im.path.name, "width": im.width, "height": im.height,
             "sha1": hashlib.sha1(im.path.read_bytes()).hexdigest()} for im in images]


def _resume_key(config: FitConfig, known: Cameras | None) -> dict:
    """The settings a checkpoint must share with the run that resumes it."""
    key = {"iterations": config.iterations, "max_size": config.max_size, "init": config.init,
           "seed": config.seed, "focal_35mm": config.focal_35mm, "device": config.device,
           "threads": choose_threads(config.threads),  # sums depend on the thread count
           "method": config.method, "rdggs": asdict(config.rdggs) if config.method == "rdggs"
           else None, "known_poses": None if known is None else hashlib.sha1(
               known.T_cam_world.double().numpy().tobytes()
               + known.K.double().numpy().tobytes()).hexdigest(),
           "train": asdict(config.train), "init_options": asdict(config.init_options)}
    key["init_options"]["sfm"].pop("threads", None)  # set from "threads" above
    return json.loads(json.dumps(key, default=str))  # as it reads back from JSON


def _check_paths(config: FitConfig) -> None:
    if config.out.exists() and not config.out.is_dir():
        raise UserError(f"--out {config.out} is a file; give a folder path for the outputs.")
    images = config.images.resolve()
    out = config.out.resolve()
    if out == images or images in out.parents or out in images.parents:
        raise UserError(f"--out {config.out} overlaps the image folder {config.images}; "
                        "write the outputs somewhere else.")
    if config.iterations < 1:
        raise UserError(f"--iterations {config.iterations} must be at least 1.")
    if config.focal_35mm is not None and not (1.0 <= config.focal_35mm <= 2000.0):
        raise UserError(f"--focal-35mm {config.focal_35mm} is no focal length; give the "
                        "35 mm-equivalent focal in millimetres (e.g. 26 for a phone).")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda needs a CUDA GPU and PyTorch with CUDA; use --device cpu.")


def _known_cameras(config: FitConfig, images: list[LoadedImage],
                   cameras: Cameras | None) -> Cameras | None:
    """The given cameras in image order, intrinsics for the loaded (resized) images.

    ``cameras`` (from code) are taken in image order; ``--poses`` files are matched to the
    photos by file name (then by stem).
    """
    import torch

    if cameras is None and config.poses is None:
        return None
    if cameras is None:
        from geometry.io import read_cameras

        cameras = read_cameras(config.poses, dtype=torch.float64, require_images=False)
        names = cameras.names or [str(p) for p in (cameras.image_paths or [])]
        if len(names) != len(cameras):
            raise UserError(f"the cameras in {config.poses} have no image names; use a COLMAP "
                            "model or transforms.json that names its images.")
        by_name = {Path(n).name: i for i, n in enumerate(names)}
        by_stem = {Path(n).stem: i for i, n in enumerate(names)}
        order = []
        for im in images:
            i = by_name.get(im.path.name, by_stem.get(im.path.stem))
            if i is None:
                raise UserError(f"{config.poses} has no camera for {im.path.name}; give a "
                                "camera for every photo in the folder.")
            order.append(i)
        cameras = cameras[order]
    elif len(cameras) != len(images):
        raise UserError(f"{len(cameras)} cameras were given for {len(images)} photos; give one "
                        "per photo.")
    cameras = cameras.to(dtype=torch.float64)
    K = cameras.K.clone()
    for k, im in enumerate(images):
        w, h = float(cameras.width[k]), float(cameras.height[k])
        if abs(w / h - im.width / im.height) > 0.01 * im.width / im.height:
            raise UserError(f"the camera of {im.path.name} is {w:.0f}x{h:.0f} but the photo is "
                            f"{im.width}x{im.height} (another aspect ratio); give its camera.")
        K[k, 0] *= im.width / w
        K[k, 1] *= im.height / h
    from geometry.cameras import Cameras

    return Cameras(K=K, T_world_cam=cameras.T_world_cam,
                   width=torch.tensor([im.width for im in images]),
                   height=torch.tensor([im.height for im in images]),
                   names=[im.path.name for im in images])


def _normalisation(T_cam_world: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (robust centre of the cloud) and scale (1 / mean camera distance to it)."""
    centre = np.median(points, axis=0) if len(points) else np.zeros(3)
    centres = -np.einsum("vji,vj->vi", T_cam_world[:, :3, :3], T_cam_world[:, :3, 3])
    distance = float(np.mean(np.linalg.norm(centres - centre, axis=1)))
    if not math.isfinite(distance) or distance <= 0:
        distance = 1.0
    return centre, 1.0 / distance


def _apply_normalisation(T_cam_world: np.ndarray, points: np.ndarray, centre: np.ndarray,
                         scale: float) -> tuple[np.ndarray, np.ndarray]:
    """World' = scale * (world - centre): poses and points in the normalised frame."""
    T = T_cam_world.copy()
    # p_cam = R p + t = R (p'/s + c) + t  ->  scaled camera: s p_cam = R p' + s (R c + t)
    T[:, :3, 3] = scale * (np.einsum("vij,j->vi", T[:, :3, :3], centre) + T[:, :3, 3])
    return T, (points - centre) * scale


class _Progress:
    """The rich progress bar of the optimisation: loss, PSNR (smoothed) and ETA."""

    def __init__(self, total: int, start: int, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.quiet = quiet
        self.psnr = None
        self.progress = Progress(
            TextColumn("[bold]F-3DGO[/bold]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("PSNR {task.fields[psnr]} dB"),
            TextColumn("{task.fields[gaussians]} splats"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=quiet, transient=False)
        self.task = self.progress.add_task("fit", total=total, completed=start, loss="-",
                                           psnr="-", gaussians="-")

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, iteration: int, loss: float, value: float, gaussians: int) -> None:
        if math.isfinite(value):
            self.psnr = value if self.psnr is None else 0.9 * self.psnr + 0.1 * value
        self.progress.update(self.task, completed=iteration, loss=f"{loss:.4f}",
                             psnr="-" if self.psnr is None else f"{self.psnr:.2f}",
                             gaussians=str(gaussians))


def _write_checkpoint(path: Path, trainer: Trainer, init_state: dict[str, torch.Tensor],
                      meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {**trainer.state_tensors(), **init_state}
    with atomic_directory(path) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(
            json.dumps({**meta, "trainer": trainer.state_meta()}, indent=2), encoding="utf-8")


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(path / "state.safetensors"))
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(f"the checkpoint in {path} is unreadable ({err}); delete it and run "
                        "without --resume.") from None
    if meta.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"the checkpoint in {path} is from another version; delete it and run "
                        "without --resume.")
    return tensors, meta


def _apply_focal(images: list[LoadedImage], focal_35mm: float | None) -> None:
    if focal_35mm is None:
        return
    from reconstruction.images import FULL_FRAME_DIAGONAL_MM

    for im in images:
        if im.focal_px is None:
            im.focal_px = focal_35mm * math.hypot(im.width, im.height) / FULL_FRAME_DIAGONAL_MM


def build_trainer(config: FitConfig, data: TrainData, scene, images: list[LoadedImage],
                  init_state: dict[str, torch.Tensor]) -> Trainer:
    """The optimiser of ``config.method`` (F-3DGO's :class:`Trainer`, or RDG-GS's)."""
    if config.method == "rdggs":
        from reconstruction.rdggs.method import build_trainer as build_rdggs

        return build_rdggs(config, data, scene, images, init_state)
    return Trainer(data, scene, config.train, seed=config.seed, device=config.device)


#: Called after every optimisation step with the trainer and the photos (live viewer).
Monitor = typing.Callable[[Trainer, list[LoadedImage]], None]


def fit(config: FitConfig, cameras: Cameras | None = None,
        monitor: Monitor | None = None) -> dict:
    """Run the whole pipeline (see the module doc); returns the metrics written.

    ``cameras``: known cameras of the photos, in their name order (as ``--poses``).
    ``monitor``: called after every optimisation step (``recon fit --view`` passes the
    live viewer's refresh; it must return quickly).
    """
    t_start = time.perf_counter()
    _check_paths(config)
    config.train.iterations = config.iterations
    threads = choose_threads(config.threads)
    torch.set_num_threads(threads)
    config.init_options.sfm.threads = threads
    timings: dict[str, float] = {}
    checkpoint_path = resume_dir(config.out)

    t0 = time.perf_counter()
    images = load_images(config.images, config.max_size, config.train.background)
    _apply_focal(images, config.focal_35mm)
    timings["load_images"] = time.perf_counter() - t0
    known = _known_cameras(config, images, cameras)
    if config.method == "rdggs":  # option and file errors before the minutes of SfM
        from reconstruction.rdggs.priors import check_prior_inputs

        check_prior_inputs(config.rdggs, images)
    if known is not None:
        config.train.optimise_poses = False
        config.train.optimise_focal = False
    fingerprint = _fingerprint(images)
    key = _resume_key(config, known)

    resumed = None
    if config.resume:
        if not (checkpoint_path / "state.json").exists():
            raise UserError(f"there is no checkpoint to resume in {checkpoint_path}; run "
                            "without --resume.")
        tensors, meta = _read_checkpoint(checkpoint_path)
        if meta["images"] != fingerprint:
            raise UserError(f"the checkpoint in {checkpoint_path} was made from other photos; "
                            "run without --resume to start again.")
        if meta["key"] != key:
            raise UserError(f"the checkpoint in {checkpoint_path} was made with other options; "
                            "rerun with the same options, or without --resume.")
        resumed = (tensors, meta)
    elif checkpoint_path.exists():
        warn(f"ignoring the checkpoint in {checkpoint_path} (no --resume); starting again")

    if resumed is None:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="sparseview-init-") as work:
            given = None if known is None else (known.K.numpy(), known.T_cam_world.numpy())
            init = INITIALISERS[config.init](images, Path(work), config.init_options,
                                             config.seed, cameras=given)
        timings.update({f"init_{k}": v for k, v in init.timings.items()})
        timings["init_total"] = time.perf_counter() - t0
        dense, sparse, T_init = init.points_world, init.model.points_world, \
            init.model.T_cam_world
        Ks = torch.from_numpy(init.model.Ks).float()
        centre, scale = _normalisation(T_init, sparse)
        T_cam_world, points = _apply_normalisation(T_init, dense, centre, scale)
        _, sparse_points = _apply_normalisation(T_init, sparse, centre, scale)
        init_state = {
            "init.Ks": Ks,
            "init.T_cam_world": torch.from_numpy(T_cam_world).float(),
            "init.points": torch.from_numpy(points).float(),
            "init.colors": torch.from_numpy(init.colors).float(),
            "init.sparse_points": torch.from_numpy(sparse_points).float(),
            "init.sparse_colors": torch.from_numpy(init.model.colors).float(),
        }
        init_meta = {"stats": init.stats, "timings": timings.copy(),
                     "normalisation": {"centre": centre.tolist(), "scale": scale}}
    else:
        tensors, meta = resumed
        init_state = {k: v for k, v in tensors.items() if k.startswith("init.")}
        init_meta = meta["init"]
        timings.update({k: v for k, v in init_meta["timings"].items() if k != "load_images"})

    from reconstruction.gaussians import GaussianScene

    t_setup = time.perf_counter()
    data = TrainData(
        images=[im.rgb for im in images],
        Ks=init_state["init.Ks"],
        T_cam_world_init=init_state["init.T_cam_world"],
        scene_scale=1.0,  # the world is normalised to a mean camera distance of 1
    )
    scene = GaussianScene.from_points(
        init_state["init.points"], init_state["init.colors"].clamp(0, 1),
        sh_degree=config.train.sh_degree, initial_opacity=config.train.initial_opacity)
    trainer = build_trainer(config, data, scene, images, init_state)
    initial_gaussians = trainer.num_gaussians
    if resumed is not None:
        trainer.load_state(resumed[0], resumed[1]["trainer"])
        initial_gaussians = int(resumed[1]["initial_gaussians"])
        initial_psnr = float(resumed[1]["initial_psnr_db"])
    else:
        initial_psnr = float(np.mean(trainer.evaluate()))  # of the initialisation

    meta = {"version": CHECKPOINT_VERSION, "images": fingerprint, "key": key,
            "init": init_meta, "initial_gaussians": initial_gaussians,
            "initial_psnr_db": initial_psnr}
    timings["setup"] = time.perf_counter() - t_setup  # splats from the cloud, first PSNR
    last_checkpoint = [trainer.iteration if resumed is not None else None]

    def save(tr: Trainer) -> None:
        _write_checkpoint(checkpoint_path, tr, init_state, meta)
        last_checkpoint[0] = tr.iteration

    t0 = time.perf_counter()
    train_before = float(resumed[1].get("train_seconds", 0.0)) if resumed is not None else 0.0
    meta["train_seconds"] = train_before
    try:
        with _Progress(config.iterations, trainer.iteration, config.quiet) as bar:
            def on_step(it: int, loss: float, value: float) -> None:
                bar.update(it, loss, value, trainer.num_gaussians)
                if monitor is not None:
                    monitor(trainer, images)
                meta["train_seconds"] = train_before + time.perf_counter() - t0

            trainer.train(on_step=on_step, on_checkpoint=save)
    except KeyboardInterrupt:
        if last_checkpoint[0] is not None:
            warn(f"stopped at iteration {trainer.iteration}; rerun the same command with "
                 f"--resume to continue from iteration {last_checkpoint[0]}")
        raise
    timings["train"] = train_before + time.perf_counter() - t0

    t0 = time.perf_counter()
    psnrs = trainer.evaluate()
    timings["evaluate"] = time.perf_counter() - t0
    metrics = _write_outputs(config, images, trainer, init_state, init_meta, timings,
                             psnrs, initial_gaussians, initial_psnr, t_start,
                             in_given_frame=known is not None)
    if checkpoint_path.exists():
        import shutil

        shutil.rmtree(checkpoint_path, ignore_errors=True)
    return metrics


def _pose_changes(trainer: Trainer, names: list[str]) -> list[dict]:
    """How far each camera moved during the optimisation (rotation, centre)."""
    with torch.no_grad():
        T_init = trainer.T_init.double()
        T_final = trainer.viewmats().double()
    changes = []
    for i, name in enumerate(names):
        R_delta = T_final[i, :3, :3] @ T_init[i, :3, :3].T
        # atan2 of sin and cos: acos alone loses small angles to float32 rounding.
        skew = R_delta - R_delta.T
        sin = float(torch.stack([skew[2, 1], skew[0, 2], skew[1, 0]]).norm()) / 2
        cos = float((torch.trace(R_delta) - 1) / 2)
        c_init = -T_init[i, :3, :3].T @ T_init[i, :3, 3]
        c_final = -T_final[i, :3, :3].T @ T_final[i, :3, 3]
        changes.append({"image": name, "rotation_deg": math.degrees(math.atan2(sin, cos)),
                        "centre_shift": float((c_final - c_init).norm())})
    return changes


def _write_outputs(config: FitConfig, images: list[LoadedImage], trainer: Trainer,
                   init_state: dict, init_meta: dict, timings: dict, psnrs: list[float],
                   initial_gaussians: int, initial_psnr: float, t_start: float,
                   in_given_frame: bool = False) -> dict:
    from geometry.cameras import Cameras
    from geometry.io.colmap import ColmapModel, write_colmap_model
    from geometry.io.transforms_json import write_transforms_json
    from geometry.se3 import invert_T
    from reconstruction.gaussians import GaussianScene, write_ply

    t0 = time.perf_counter()
    names = _output_names(images)
    with torch.no_grad():
        T_cam_world = trainer.viewmats().detach().cpu().double()
        Ks = trainer.intrinsics().detach().cpu().double()
    scene = trainer.scene()
    sparse_points = init_state["init.sparse_points"].double()
    if in_given_frame:  # undo the normalisation: outputs in the given cameras' frame
        centre = torch.tensor(init_meta["normalisation"]["centre"], dtype=torch.float64)
        scale = float(init_meta["normalisation"]["scale"])
        T_cam_world[:, :3, 3] = T_cam_world[:, :3, 3] / scale \
            - (T_cam_world[:, :3, :3] @ centre[:, None])[..., 0]
        sparse_points = sparse_points / scale + centre
        scene = GaussianScene(
            means=(scene.means.double() / scale + centre).float(), quats=scene.quats,
            log_scales=scene.log_scales - math.log(scale),
            logit_opacities=scene.logit_opacities, sh0=scene.sh0, shN=scene.shN)
    cameras = Cameras(
        K=Ks, T_world_cam=invert_T(T_cam_world),
        width=torch.tensor([im.width for im in images]),
        height=torch.tensor([im.height for im in images]),
        names=[f"images/{n}" for n in names])
    metrics = {
        "images": [im.path.name for im in images],
        "method": config.method,
        "init": config.init,
        "known_poses": in_given_frame,
        "iterations": config.iterations,
        "seed": config.seed,
        "device": config.device,
        "threads": torch.get_num_threads(),
        "timings_s": {},
        "training_psnr_db": float(np.mean(psnrs)),
        "initial_psnr_db": initial_psnr,
        "training_psnr_db_per_view": dict(zip(names, psnrs, strict=True)),
        "num_gaussians": trainer.num_gaussians,
        "initial_gaussians": initial_gaussians,
        "pose_change": _pose_changes(trainer, [im.path.name for im in images]),
        "focal_change": [float(f) for f in torch.exp(trainer.params["log_focal"]).detach()],
        "init_stats": init_meta["stats"],
        "normalisation": init_meta["normalisation"],
        "nan_rollbacks": trainer.rollbacks,
        **trainer.extra_metrics(),
    }
    with atomic_directory(config.out) as tmp:
        (tmp / "images").mkdir()
        for name, im in zip(names, images, strict=True):
            save_png(tmp / "images" / name, im.rgb)
        write_ply(tmp / "splats.ply", scene)
        colmap = ColmapModel.from_cameras(
            Cameras(K=cameras.K, T_world_cam=cameras.T_world_cam, width=cameras.width,
                    height=cameras.height, names=list(names)),
            points_xyz=sparse_points.numpy(),
            points_rgb=init_state["init.sparse_colors"].clamp(0, 1).numpy())
        write_colmap_model(tmp / "cameras", colmap)
        write_transforms_json(tmp / "transforms.json", cameras,
                              file_paths=[f"images/{n}" for n in names],
                              extra={"ply_file_path": "splats.ply"})
        timings["write"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        metrics["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _output_names(images: list[LoadedImage]) -> list[str]:
    """PNG names for OUT/images: the photo's stem, made unique (a.jpg and a.png both exist)."""
    names, used = [], set()
    for im in images:
        stem = im.path.stem
        name, k = f"{stem}.png", 1
        while name in used:
            name, k = f"{stem}_{k}.png", k + 1
        used.add(name)
        names.append(name)
    return names


def choose_threads(requested: int | None) -> int:
    """``requested``, else every core (a fixed choice: results depend on the count)."""
    if requested is not None:
        if requested < 1:
            raise UserError(f"--threads {requested} must be at least 1.")
        return requested
    return os.cpu_count() or 1


def run_fit(config: FitConfig, monitor: Monitor | None = None) -> dict:
    """CLI entry: fit, then print where the outputs went."""
    metrics = fit(config, monitor=monitor)
    from rich.console import Console

    Console(stderr=True, highlight=False).print(
        f"wrote {config.out}: {metrics['num_gaussians']} splats, training PSNR "
        f"{metrics['training_psnr_db']:.2f} dB, {metrics['timings_s']['total']:.1f} s")
    return metrics

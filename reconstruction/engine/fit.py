"""The fit loop of the Gaussian engine: unposed photos -> Gaussian splats + camera poses.

Every Gaussian method (InstantSplat, RDG-GS, ...) runs this loop with its own trainer
(:class:`TrainerJob` -> :class:`~reconstruction.engine.trainer.GaussianTrainer`, built by
the method's ``build`` function). Stages: load the photos; coarse geometric initialisation
(``--init``, SfM + stereo by default); normalise the world (scene centre at the origin,
mean camera distance 1); joint optimisation of Gaussians and poses; write the outputs.

With known cameras (``--poses PATH`` or ``fit(config, cameras=...)``) the initial cloud is
triangulated with them (SfM only matches the photos; see :mod:`reconstruction.init.cgi`),
the poses stay fixed, and the outputs are written in the given frame. Without, the outputs are
in the normalised SfM frame (its centre and scale are in metrics.json).

Outputs (the folder appears complete or not at all)::

    OUT/splats.ply         standard 3DGS PLY
    OUT/sparse/0/          COLMAP text model (PINHOLE cameras, optimised poses, SfM points
                           with their tracks: the observations in OUT/images)
    OUT/sparse_pc.ply      the SfM points with colours (transforms.json's ply_file_path)
    OUT/images/            the photos as the cameras see them (oriented, composited, resized)
    OUT/transforms.json    nerfstudio cameras (file paths into OUT/images)
    OUT/metrics.json       per-stage timings, training PSNR (low_psnr_views: the views far
                           below the others), the schedule (steps, rule, time-budget
                           decisions), Gaussian count, pose changes
    OUT/.recon-fit         the marker of a recon fit output (such a folder is replaced by
                           the next run; any other non-empty folder only with --overwrite)

While training, resumable checkpoints (safetensors + JSON) go to ``.OUT.resume/`` beside
``OUT``; it is removed when the run finishes. A run holds the lock ``.OUT.lock`` (its PID)
from its first check to its last write, so two runs never share ``OUT`` or its checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geometry.errors import UserError
from geometry.io.atomic import (
    atomic_directory,
    atomic_write_text,
    check_output_folder,
    check_replaceable,
    output_lock,
    recover_directory,
)
from geometry.io.images import write_png
from geometry.progress import log_stage
from geometry.threads import choose_threads, set_threads
from reconstruction.engine.config import FitConfig
from reconstruction.engine.schedule import (
    TimeBudget,
    default_iterations,
    low_psnr_message,
    low_psnr_views,
    schedule_rule,
)
from reconstruction.engine.trainer import GaussianTrainer, TrainData, training_background
from reconstruction.gaussians import GaussianScene
from reconstruction.images import LoadedImage, camera_rows, load_images, output_names, warn
from reconstruction.init.registry import INITIALISERS

if typing.TYPE_CHECKING:
    from geometry.cameras import Cameras

CHECKPOINT_VERSION = 2
#: The file in every recon fit output that marks it as one (see the module doc).
OUTPUT_MARKER = ".recon-fit"
#: Resume-key entries that do not change the results, so a resumed run may change them.
_NOT_IN_RESUME_KEY = ("train.checkpoint_every", "train.iterations")


def resume_dir(out: Path) -> Path:
    """Where checkpoints of a run writing ``out`` live."""
    return out.parent / f".{out.name}.resume"


def _fingerprint(images: list[LoadedImage]) -> list[dict]:
    return [{"name": im.path.name, "width": im.width, "height": im.height,
             "sha1": hashlib.sha1(im.path.read_bytes()).hexdigest()} for im in images]


def _resume_key(config: FitConfig, options: Any, known: Cameras | None) -> dict:
    """The settings a checkpoint must share with the run that resumes it."""
    key = {"iterations": config.iterations, "time_budget": config.time_budget,
           "max_size": config.max_size, "init": config.init,
           "seed": config.seed, "focal_35mm": config.focal_35mm, "device": config.device,
           "threads": choose_threads(config.threads),  # sums depend on the thread count
           "method": config.method,
           "options": dataclasses.asdict(options) if dataclasses.is_dataclass(options)
           else None, "known_poses": None if known is None else hashlib.sha1(
               known.T_cam_world.double().numpy().tobytes()
               + known.K.double().numpy().tobytes()).hexdigest(),
           "train": dataclasses.asdict(config.train),
           "init_options": dataclasses.asdict(config.init_options)}
    key["init_options"]["sfm"].pop("threads", None)  # set from "threads" above
    return _comparable_key(json.loads(json.dumps(key, default=str)))  # as read from JSON


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat = {}
    for name, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{name}" if prefix else str(name)))
    return flat


def _comparable_key(key: Any) -> dict[str, Any]:
    """A resume key flattened, without the entries that do not change the results (also
    applied to the key a checkpoint holds, so older checkpoints compare alike)."""
    flat = _flatten(key) if isinstance(key, dict) else {"": key}
    return {name: value for name, value in flat.items() if name not in _NOT_IN_RESUME_KEY}


def _flag(name: str, method: str) -> str:
    """The command-line flag of a flattened resume-key entry."""
    if name == "known_poses":
        return "--poses"
    if name.startswith("options."):
        name = method + name[len("options"):]
    return "--" + name.replace("_", "-")


def _format_value(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(_format_value(v) for v in value)
    return str(value)


def _key_differences(run_key: dict[str, Any], saved_key: Any, method: str) -> list[str]:
    """``--flag VALUE (checkpoint: VALUE)`` for every resume-key entry that differs."""
    saved = _comparable_key(saved_key)
    differences = []
    for name in sorted(set(run_key) | set(saved)):
        mine, theirs = run_key.get(name, "unset"), saved.get(name, "unset")
        if mine != theirs and name == "known_poses":  # hashes of the cameras: not for users
            differences.append("--poses (other cameras than the checkpoint's)")
        elif mine != theirs:
            differences.append(f"{_flag(name, method)} {_format_value(mine)} "
                               f"(checkpoint: {_format_value(theirs)})")
    return differences


def check_fit_paths(config: FitConfig) -> None:
    """Refuse, before any work, the fit options that would fail later or lose data: an
    unwritable or overlapping ``--out``, bad iteration / time / focal values, an absent
    device. Shared by every method's fit."""
    check_output_folder(config.out)  # writable, has a name: before minutes of work
    images = config.images.resolve()
    out = config.out.resolve()
    if out == images or images in out.parents or out in images.parents:
        raise UserError(f"--out {config.out} overlaps the image folder {config.images}; "
                        "write the outputs somewhere else.")
    if config.iterations is not None and config.iterations < 1:
        raise UserError(f"--iterations {config.iterations} must be at least 1.")
    if config.time_budget is not None and not (math.isfinite(config.time_budget)
                                               and config.time_budget > 0):
        raise UserError(f"--time-budget {config.time_budget:g} must be a positive number of "
                        "seconds.")
    if config.focal_35mm is not None and not (1.0 <= config.focal_35mm <= 2000.0):
        raise UserError(f"--focal-35mm {config.focal_35mm} is no focal length; give the "
                        "35 mm-equivalent focal in millimetres (e.g. 26 for a phone).")
    opacities = {"--train.initial-opacity": config.train.initial_opacity,
                 "--init-options.fill-opacity": config.init_options.fill_opacity}
    for flag, value in opacities.items():
        if not 0.0 < value < 1.0:
            raise UserError(f"{flag} {value:g} must be an opacity strictly between 0 and 1.")
    from geometry.device import check_device

    check_device(config.device)


def known_cameras(config: FitConfig, images: list[LoadedImage],
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
        order = camera_rows(cameras, images, config.poses)
        for im, i in zip(images, order, strict=True):
            if i is None:
                raise UserError(f"{config.poses} has no camera for {im.path.name}; give a "
                                "camera for every photo in the folder.")
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
    """The progress bar of the optimisation: loss, PSNR (smoothed), splats and ETA.

    When stderr is no terminal (a log file, CI), a bar would only be drawn at the end: a
    plain line every ``log_every`` of the iterations (10 %) is printed instead.
    """

    def __init__(self, total: int, start: int, quiet: bool, log_every: float = 0.1) -> None:
        import sys

        from geometry.progress import progress_bar

        self.psnr = None
        self.total, self.quiet, self.log_every = total, quiet, log_every
        self.lines = not quiet and not sys.stderr.isatty()
        self.line_step = max(1, math.ceil(total * log_every))
        self.t0 = time.perf_counter()
        self.progress = progress_bar("fit", ("loss {task.fields[loss]}",
                                             "PSNR {task.fields[psnr]} dB",
                                             "{task.fields[gaussians]} splats"),
                                     quiet=quiet or self.lines)
        self.task = self.progress.add_task("fit", total=total, completed=start, loss="-",
                                           psnr="-", gaussians="-")

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def set_total(self, total: int) -> None:
        """The schedule was shortened (``--time-budget``)."""
        self.total = total
        self.line_step = max(1, math.ceil(total * self.log_every))
        self.progress.update(self.task, total=total)

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, iteration: int, loss: float, value: float, gaussians: int) -> None:
        if math.isfinite(value):
            self.psnr = value if self.psnr is None else 0.9 * self.psnr + 0.1 * value
        psnr = "-" if self.psnr is None else f"{self.psnr:.2f}"
        self.progress.update(self.task, completed=iteration, loss=f"{loss:.4f}", psnr=psnr,
                             gaussians=str(gaussians))
        if self.lines and (iteration % self.line_step == 0 or iteration == self.total):
            log_stage(f"fit {iteration}/{self.total} ({100 * iteration // self.total} %): "
                      f"loss {loss:.4f}, PSNR {psnr} dB, {gaussians} splats, "
                      f"{time.perf_counter() - self.t0:.0f} s")


def _write_checkpoint(path: Path, trainer: GaussianTrainer, init_state: dict[str, torch.Tensor],
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
    if not isinstance(meta, dict):
        raise UserError(f"the checkpoint in {path} is damaged (state.json is not a JSON "
                        "object); delete it and run without --resume.")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"the checkpoint in {path} is from another version; delete it and run "
                        "without --resume.")
    problem = _checkpoint_problem(tensors, meta)
    if problem is not None:
        raise UserError(f"the checkpoint in {path} is damaged ({problem}); delete it and run "
                        "without --resume.")
    return tensors, meta


#: The normalised initialisation every checkpoint holds: name -> (trailing shape).
_INIT_TENSORS = {"init.Ks": (3, 3), "init.T_cam_world": (4, 4), "init.points": (3,),
                 "init.colors": (3,), "init.sparse_points": (3,), "init.sparse_colors": (3,)}


def _checkpoint_problem(tensors: dict[str, torch.Tensor], meta: dict) -> str | None:
    """What is structurally wrong with a checkpoint (``None``: nothing found); the trainer's
    own part is checked by :meth:`GaussianTrainer.load_state`."""
    for name, kind in (("images", list), ("key", dict), ("init", dict), ("trainer", dict)):
        if not isinstance(meta.get(name), kind):
            return f"state.json has no {kind.__name__} {name!r}"
    init = meta["init"]
    if not isinstance(init.get("timings"), dict) or not isinstance(init.get("stats"), dict):
        return "state.json has no initialisation timings and stats"
    normalisation = init.get("normalisation")
    if not isinstance(normalisation, dict) or not _numbers(normalisation.get("centre"), 3) \
            or not _numbers([normalisation.get("scale")], 1):
        return "state.json has no valid normalisation"
    if not isinstance(meta.get("initial_gaussians"), int) \
            or isinstance(meta["initial_gaussians"], bool):
        return "state.json has no integer 'initial_gaussians'"
    if not _numbers([meta.get("initial_psnr_db")], 1, finite=False) or (
            "train_seconds" in meta and not _numbers([meta["train_seconds"]], 1)):
        return "state.json has no number 'initial_psnr_db' or 'train_seconds'"
    for name, shape in _INIT_TENSORS.items():
        tensor = tensors.get(name)
        if tensor is None:
            return f"the tensor {name} is missing"
        if tensor.dim() != len(shape) + 1 or tuple(tensor.shape[1:]) != shape:
            return f"the tensor {name} has the shape {tuple(tensor.shape)}"
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"the tensor {name} holds NaN or infinite values"
    return None


def _numbers(values: Any, count: int, finite: bool = True) -> bool:
    """Whether ``values`` is a list of ``count`` JSON numbers (finite unless told)."""
    return isinstance(values, list) and len(values) == count and all(
        isinstance(v, (int, float)) and not isinstance(v, bool)
        and (not finite or math.isfinite(v)) for v in values)


def _apply_focal(images: list[LoadedImage], focal_35mm: float | None) -> None:
    if focal_35mm is None:
        return
    from reconstruction.images import FULL_FRAME_DIAGONAL_MM

    for im in images:
        if im.focal_px is None:
            im.focal_px = focal_35mm * math.hypot(im.width, im.height) / FULL_FRAME_DIAGONAL_MM


@dataclass
class TrainerJob:
    """What a method's ``build`` function gets to make its trainer."""

    config: FitConfig
    options: Any
    """The method's own options (``config.options`` or its defaults)."""
    data: TrainData
    """Training images and the normalised initial cameras."""
    scene: GaussianScene
    """The initial Gaussians (from the initialisation's cloud)."""
    images: list[LoadedImage]
    """The photos as loaded (paths, EXIF focal, sizes)."""
    init_state: dict[str, torch.Tensor]
    """The normalised-frame initialisation (``init.*`` tensors, also checkpointed)."""


#: ``(job) -> trainer``: how a Gaussian method makes its trainer.
BuildTrainer = Callable[[TrainerJob], GaussianTrainer]

#: Called after every optimisation step with the trainer and the photos (live viewer).
Monitor = Callable[[GaussianTrainer, list[LoadedImage]], None]


def default_trainer(job: TrainerJob) -> GaussianTrainer:
    """F-3DGO's trainer: the default loss terms and densification strategy."""
    return GaussianTrainer(job.data, job.scene, job.config.train, seed=job.config.seed,
                           device=job.config.device)


@dataclass
class _Run:
    """The state of one fit as it goes through the stages."""

    config: FitConfig
    options: Any
    images: list[LoadedImage]
    known: Cameras | None
    checkpoint_path: Path
    fingerprint: list[dict]
    key: dict
    t_start: float
    timings: dict[str, float] = field(default_factory=dict)
    resumed: tuple[dict[str, torch.Tensor], dict] | None = None
    init_state: dict[str, torch.Tensor] = field(default_factory=dict)
    init_meta: dict = field(default_factory=dict)

    @property
    def background(self) -> tuple[float, float, float]:
        """The colour behind the Gaussians (:func:`~reconstruction.engine.trainer.
        training_background`)."""
        return training_background(self.config.train.background,
                                   [im.rgb for im in self.images],
                                   any(im.had_alpha for im in self.images))


def fit(config: FitConfig, cameras: Cameras | None = None,
        callbacks: list[Monitor] | None = None, build: BuildTrainer = default_trainer,
        check_inputs: Callable[[Any, list[LoadedImage]], None] | None = None,
        min_images: int = 2) -> dict:
    """Run the whole loop (see the module doc); returns the metrics written.

    Args:
        config: the run's options (``config.out`` is written complete or not at all;
            ``config.options`` holds the method's own).
        cameras: known cameras of the photos, in their name order (as ``--poses``).
        callbacks: called after every optimisation step (``recon fit --view`` passes the
            live viewer's refresh; they must return quickly).
        build: the method's trainer builder.
        check_inputs: the method's early check of its options and files.
        min_images: the method's fewest photos (:attr:`~reconstruction.method.Method.
            min_images`); one photo is initialised by :mod:`.single_view` (no SfM).
    """
    check_fit_paths(config)  # before the lock: a bad --out must not get a lock file beside it
    with output_lock(config.out):
        return _fit_locked(config, cameras, callbacks, build, check_inputs, min_images)


def _fit_locked(config: FitConfig, cameras: Cameras | None, callbacks: list[Monitor] | None,
                build: BuildTrainer,
                check_inputs: Callable[[Any, list[LoadedImage]], None] | None,
                min_images: int = 2) -> dict:
    """:func:`fit` while holding the lock of ``config.out``."""
    # a run killed while it swapped OUT or its checkpoint leaves the old folder aside
    recover_directory(config.out)
    recover_directory(resume_dir(config.out))
    check_replaceable(config.out, OUTPUT_MARKER, config.overwrite)
    run = _prepare(config, cameras, config.options, check_inputs, min_images)
    if run.resumed is None:
        _initialise(run)
    else:
        _restore_initialisation(run)
    trainer, meta = _setup_trainer(run, build)
    _train(run, trainer, meta, callbacks or [])
    t0 = time.perf_counter()
    psnrs = trainer.evaluate()
    run.timings["evaluate"] = time.perf_counter() - t0
    metrics = _write_outputs(run, trainer, psnrs, meta)
    if run.checkpoint_path.exists():
        import shutil

        shutil.rmtree(run.checkpoint_path, ignore_errors=True)
    return metrics


def _prepare(config: FitConfig, cameras: Cameras | None, options: Any,
             check_inputs: Callable[[Any, list[LoadedImage]], None] | None,
             min_images: int = 2) -> _Run:
    """Checks, threads, the photos, the known cameras and an existing checkpoint."""
    t_start = time.perf_counter()
    if config.init not in INITIALISERS:
        raise UserError(f"there is no initialiser {config.init!r}; choose one of "
                        f"{', '.join(INITIALISERS)}.")
    threads = set_threads(config.threads)
    config.init_options.sfm.threads = threads  # the mapper keeps its own (one thread)

    t0 = time.perf_counter()
    composite = config.train.background if config.train.background is not None \
        else (0.0, 0.0, 0.0)
    images = load_images(config.images, config.max_size, composite, min_images)
    _apply_focal(images, config.focal_35mm)
    config.train.iterations = config.iterations if config.iterations is not None \
        else default_iterations(len(images))
    load_seconds = time.perf_counter() - t0
    sizes = sorted({f"{im.width}x{im.height}" for im in images})
    log_stage(f"loaded {len(images)} photos ({', '.join(sizes)} px)", config.quiet)
    known = known_cameras(config, images, cameras)
    if check_inputs is not None:  # option and file errors before the minutes of SfM
        check_inputs(options, images)
    if known is not None:
        config.train.optimise_poses = False
        config.train.optimise_focal = False
    run = _Run(config=config, options=options, images=images, known=known,
               checkpoint_path=resume_dir(config.out), fingerprint=_fingerprint(images),
               key=_resume_key(config, options, known), t_start=t_start,
               timings={"load_images": load_seconds})
    run.resumed = _find_checkpoint(run)
    return run


def _find_checkpoint(run: _Run) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The checkpoint to continue from (``--resume``), refused when it does not match."""
    path = run.checkpoint_path
    if not run.config.resume:
        if path.exists():
            warn(f"ignoring the checkpoint in {path} (no --resume); starting again")
        return None
    if not (path / "state.json").exists():
        raise UserError(f"there is no checkpoint to resume in {path}; run without --resume.")
    tensors, meta = _read_checkpoint(path)
    if meta["images"] != run.fingerprint:
        raise UserError(f"the checkpoint in {path} was made from other photos; run without "
                        "--resume to start again.")
    differences = _key_differences(run.key, meta["key"], run.config.method)
    if differences:
        raise UserError(f"the checkpoint in {path} was made with other options "
                        f"({'; '.join(differences)}); rerun with the checkpoint's options, or "
                        "without --resume.")
    return tensors, meta


def _initialise(run: _Run) -> None:
    """The coarse initialisation, normalised: ``run.init_state`` and ``run.init_meta``."""
    config, known = run.config, run.known
    t0 = time.perf_counter()
    initialiser, stage = INITIALISERS[config.init], _INIT_STAGES.get(config.init, "SfM")
    if len(run.images) == 1 and config.init in ("sfm", "sfm-sparse"):  # SfM has nothing to match
        from reconstruction.engine.single_view import single_view_init as initialiser

        stage = "one photo: its camera and a monocular depth guess (no SfM)"
    log_stage(f"initialising (--init {config.init}): {stage}…", config.quiet)
    with tempfile.TemporaryDirectory(prefix="sparseview-init-") as work:
        given = None if known is None else (known.K.numpy(), known.T_cam_world.numpy())
        init = initialiser(run.images, Path(work), config.init_options, config.seed,
                           cameras=given)
    run.timings.update({f"init_{k}": v for k, v in init.timings.items()})
    run.timings["init_total"] = time.perf_counter() - t0
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in init.timings.items())
    log_stage(f"initialised in {run.timings['init_total']:.1f} s ({stages}): "
              f"{int(np.sum(init.model.registered))}/{len(run.images)} photos registered, "
              f"{len(init.points_world)} points", config.quiet)
    dense, sparse, T_init = init.points_world, init.model.points_world, init.model.T_cam_world
    centre, scale = _normalisation(T_init, sparse)
    T_cam_world, points = _apply_normalisation(T_init, dense, centre, scale)
    _, sparse_points = _apply_normalisation(T_init, sparse, centre, scale)
    run.init_state = {
        "init.Ks": torch.from_numpy(init.model.Ks).float(),
        "init.T_cam_world": torch.from_numpy(T_cam_world).float(),
        "init.points": torch.from_numpy(points).float(),
        "init.colors": torch.from_numpy(init.colors).float(),
        "init.sparse_points": torch.from_numpy(sparse_points).float(),
        "init.sparse_colors": torch.from_numpy(init.model.colors).float(),
        # the SfM points' 2D observations: OUT/sparse/0 keeps them as COLMAP tracks
        "init.obs_point": torch.from_numpy(init.model.obs_point).long(),
        "init.obs_view": torch.from_numpy(init.model.obs_view).long(),
        "init.obs_xy": torch.from_numpy(init.model.obs_xy).double(),
    }
    _fill_coverage(run)
    run.init_meta = {"stats": init.stats, "timings": run.timings.copy(),
                     "normalisation": {"centre": centre.tolist(), "scale": scale},
                     "coverage": run.init_meta.get("coverage", {})}


def _fill_coverage(run: _Run) -> None:
    """Seeds on the training pixels the initial cloud leaves uncovered
    (:mod:`reconstruction.init.coverage`): ``init.fill_*`` tensors, the coverage figures."""
    from reconstruction.init.coverage import fill_coverage

    options, state = run.config.init_options, run.init_state
    t0 = time.perf_counter()
    fill = fill_coverage(state["init.points"], [im.rgb for im in run.images],
                         state["init.Ks"], state["init.T_cam_world"], options,
                         seed_fill=options.fill_coverage,
                         background=run.background)
    state.update({"init.fill_points": fill.points, "init.fill_colors": fill.colors,
                  "init.fill_scales": fill.scales})
    if options.fill_coverage and options.fill_cap_scales and fill.scale_cap is not None:
        state["init.scale_cap"] = fill.scale_cap
    run.timings["init_fill"] = time.perf_counter() - t0
    before, after = float(np.mean(fill.coverage_before)), float(np.mean(fill.coverage_after))
    names = output_names(run.images)
    run.init_meta["coverage"] = {
        "coverage_before_fill": before, "coverage_after_fill": after,
        "coverage_per_view": {name: {"before_fill": b, "after_fill": a} for name, b, a in zip(
            names, fill.coverage_before, fill.coverage_after, strict=True)},
        "fill": fill.stats}
    if options.fill_coverage:
        log_stage(f"coverage of the training views {100 * before:.1f} % -> {100 * after:.1f} % "
                  f"({fill.stats['fill_points']} Gaussians seeded, "
                  f"{run.timings['init_fill']:.1f} s)", run.config.quiet)


#: What each initialiser does, for the line shown while it runs (SfM is silent otherwise).
_INIT_STAGES = {
    "sfm": "feature extraction, matching, mapping (SfM), then dense stereo",
    "sfm-sparse": "feature extraction, matching, mapping (SfM)",
}


def _restore_initialisation(run: _Run) -> None:
    """The initialisation of the checkpoint being resumed."""
    tensors, meta = run.resumed
    run.init_state = {k: v for k, v in tensors.items() if k.startswith("init.")}
    run.init_meta = meta["init"]
    run.timings.update({k: v for k, v in run.init_meta["timings"].items()
                        if k != "load_images"})


def initial_scene(config: FitConfig, init_state: dict[str, torch.Tensor]) -> GaussianScene:
    """The Gaussians the optimisation starts from: one per point of the initial cloud at
    ``--train.initial-opacity``, then the coverage seeds (``init.fill_*``) at
    ``--init-options.fill-opacity``."""
    scene = GaussianScene.from_points(
        init_state["init.points"], init_state["init.colors"].clamp(0, 1),
        sh_degree=config.train.sh_degree, initial_opacity=config.train.initial_opacity)
    if "init.fill_points" in init_state:  # the coverage seeds (reconstruction.init.coverage)
        from reconstruction.init.coverage import seeded_scene

        scene = seeded_scene(scene, init_state["init.fill_points"],
                             init_state["init.fill_colors"], init_state["init.fill_scales"],
                             config.init_options.fill_opacity, init_state.get("init.scale_cap"))
    return scene


def _setup_trainer(run: _Run, build: BuildTrainer) -> tuple[GaussianTrainer, dict]:
    """The method's trainer on the initial Gaussians (restored when resuming), and the
    checkpoint metadata."""
    config, init_state = run.config, run.init_state
    t_setup = time.perf_counter()
    data = TrainData(
        images=[im.rgb for im in run.images],
        Ks=init_state["init.Ks"],
        T_cam_world_init=init_state["init.T_cam_world"],
        scene_scale=1.0,  # the world is normalised to a mean camera distance of 1
        background=run.background,
    )
    scene = initial_scene(config, init_state)
    trainer = build(TrainerJob(config=config, options=run.options, data=data, scene=scene,
                               images=run.images, init_state=init_state))
    if run.resumed is not None:
        tensors, meta = run.resumed
        log_stage(f"resuming from the checkpoint at iteration "
                  f"{meta['trainer'].get('iteration')}", config.quiet)
        try:
            trainer.load_state(tensors, meta["trainer"])
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as err:
            problem = f"the tensor {err.args[0]} is missing" if isinstance(err, KeyError) \
                else str(err)
            raise UserError(f"the checkpoint in {run.checkpoint_path} is damaged ({problem}); "
                            "delete it and run without --resume.") from None
        initial_gaussians = int(meta["initial_gaussians"])
        initial_psnr = float(meta["initial_psnr_db"])
    else:
        initial_gaussians = trainer.num_gaussians
        initial_psnr = float(np.mean(trainer.evaluate()))  # of the initialisation
    meta = {"version": CHECKPOINT_VERSION, "images": run.fingerprint, "key": run.key,
            "init": run.init_meta, "initial_gaussians": initial_gaussians,
            "initial_psnr_db": initial_psnr}
    run.timings["setup"] = time.perf_counter() - t_setup  # splats from the cloud, first PSNR
    return trainer, meta


def _train(run: _Run, trainer: GaussianTrainer, meta: dict, callbacks: list[Monitor]) -> None:
    """The optimisation with its progress bar, checkpoints and callbacks; Ctrl-C says how
    to resume."""
    config = run.config
    last_checkpoint = [trainer.iteration if run.resumed is not None else None]

    def save(tr: GaussianTrainer) -> None:
        if budget is not None:  # a resumed run counts the time this one spent
            meta["schedule"]["spent_s"] = budget.spent()
        _write_checkpoint(run.checkpoint_path, tr, run.init_state, meta)
        last_checkpoint[0] = tr.iteration

    t0 = time.perf_counter()
    train_before = float(run.resumed[1].get("train_seconds", 0.0)) \
        if run.resumed is not None else 0.0
    meta["train_seconds"] = train_before
    budget = _start_schedule(run, trainer, meta)
    try:
        with _Progress(trainer.config.iterations, trainer.iteration, config.quiet) as bar:
            def on_step(it: int, loss: float, value: float) -> None:
                if budget is not None:
                    _check_budget(run, trainer, meta, budget, bar)
                bar.update(it, loss, value, trainer.num_gaussians)
                for callback in callbacks:
                    callback(trainer, run.images)
                meta["train_seconds"] = train_before + time.perf_counter() - t0

            trainer.train(on_step=on_step, on_checkpoint=save)
    except KeyboardInterrupt:
        if last_checkpoint[0] is not None:
            warn(f"stopped at iteration {trainer.iteration}; rerun the same command with "
                 f"--resume to continue from iteration {last_checkpoint[0]}")
        raise
    run.timings["train"] = train_before + time.perf_counter() - t0


def _start_schedule(run: _Run, trainer: GaussianTrainer, meta: dict) -> TimeBudget | None:
    """Log the schedule (``meta["schedule"]``, checkpointed) and start the time budget."""
    config = run.config
    saved = run.resumed[1].get("schedule") if run.resumed is not None else None
    # --iterations or the default (a resumed trainer may hold the shorter count that the
    # budget of the interrupted run decided)
    requested = config.iterations if config.iterations is not None \
        else default_iterations(len(run.images))
    schedule = {"rule": "--iterations" if config.iterations is not None else schedule_rule(),
                "photos": len(run.images), "requested": requested,
                "time_budget_s": config.time_budget, "decisions": []}
    if isinstance(saved, dict) and isinstance(saved.get("decisions"), list):
        schedule["decisions"] = saved["decisions"]
    meta["schedule"] = schedule
    source = "--iterations" if config.iterations is not None \
        else f"default for {len(run.images)} photos: {schedule_rule()}"
    line = f"schedule: {requested} steps ({source})"
    if trainer.config.iterations != requested:
        line += f", shortened to {trainer.config.iterations} by the time budget"
    log_stage(line, config.quiet)
    if config.time_budget is None:
        return None
    spent_before = time.perf_counter() - run.t_start
    if isinstance(saved, dict) and isinstance(saved.get("spent_s"), (int, float)):
        spent_before += float(saved["spent_s"])
    budget = TimeBudget(config.time_budget, spent_before=spent_before, clock=time.perf_counter)
    schedule["spent_s"] = budget.spent()
    budget.start()
    return budget


def _check_budget(run: _Run, trainer: GaussianTrainer, meta: dict, budget: TimeBudget,
                  bar: _Progress) -> None:
    """After a step: shorten the schedule when the time budget says so, and log it."""
    before = trainer.config.iterations
    decision = budget.after_step(trainer, trainer.last_step_coarse)
    if decision is None:
        return
    meta["schedule"]["decisions"].append(decision.as_dict())
    if decision.iterations == before and len(budget.decisions) > 1:
        return  # the first look is always logged, later ones when they change something
    coarse = "" if decision.coarse_step_s is None \
        else f", coarse {decision.coarse_step_s:.3f} s"
    what = f"keeps {before} steps" if decision.iterations == before \
        else f"shortens the schedule from {before} to {decision.iterations} steps"
    log_stage(f"time budget {run.config.time_budget:g} s ({decision.spent_s:.0f} s spent, "
              f"{decision.step_s:.3f} s per step{coarse}): {what}", run.config.quiet)
    if decision.iterations <= trainer.iteration:
        warn(f"the time budget of {run.config.time_budget:g} s is spent at step "
             f"{trainer.iteration}; stopping there (the result is under-trained: give a "
             "larger --time-budget)")
    bar.set_total(decision.iterations)


def _pose_changes(trainer: GaussianTrainer, names: list[str]) -> list[dict]:
    """How far each camera moved during the optimisation (rotation, centre)."""
    from geometry.so3 import rotation_angle

    with torch.no_grad():
        T_init = trainer.T_init.double()
        T_final = trainer.viewmats().double()
    angles = rotation_angle(T_init[:, :3, :3], T_final[:, :3, :3])
    changes = []
    for i, name in enumerate(names):
        c_init = -T_init[i, :3, :3].T @ T_init[i, :3, 3]
        c_final = -T_final[i, :3, :3].T @ T_final[i, :3, 3]
        changes.append({"image": name, "rotation_deg": math.degrees(float(angles[i])),
                        "centre_shift": float((c_final - c_init).norm())})
    return changes


def _final_scene(run: _Run, trainer: GaussianTrainer
                 ) -> tuple[GaussianScene, Cameras, torch.Tensor]:
    """The trained Gaussians, cameras (named ``images/<png>``) and sparse SfM points, in the
    given cameras' frame with known poses (the normalisation undone), else normalised."""
    from geometry.cameras import Cameras
    from geometry.se3 import invert_T

    with torch.no_grad():
        T_cam_world = trainer.viewmats().detach().cpu().double()
        Ks = trainer.intrinsics().detach().cpu().double()
    scene = trainer.scene()
    sparse_points = run.init_state["init.sparse_points"].double()
    if run.known is not None:  # undo the normalisation: outputs in the given cameras' frame
        centre = torch.tensor(run.init_meta["normalisation"]["centre"], dtype=torch.float64)
        scale = float(run.init_meta["normalisation"]["scale"])
        T_cam_world[:, :3, 3] = T_cam_world[:, :3, 3] / scale \
            - (T_cam_world[:, :3, :3] @ centre[:, None])[..., 0]
        sparse_points = sparse_points / scale + centre
        scene = GaussianScene(
            means=(scene.means.double() / scale + centre).float(), quats=scene.quats,
            log_scales=scene.log_scales - math.log(scale),
            logit_opacities=scene.logit_opacities, sh0=scene.sh0, shN=scene.shN)
    cameras = Cameras(
        K=Ks, T_world_cam=invert_T(T_cam_world),
        width=torch.tensor([im.width for im in run.images]),
        height=torch.tensor([im.height for im in run.images]),
        names=[f"images/{n}" for n in output_names(run.images)])
    return scene, cameras, sparse_points


def _metrics(run: _Run, trainer: GaussianTrainer, psnrs: list[float], meta: dict) -> dict:
    """What metrics.json holds (timings are added when the outputs are written)."""
    config, images = run.config, run.images
    names = output_names(images)
    return {
        "images": [im.path.name for im in images],
        "method": config.method,
        "init": config.init,
        "known_poses": run.known is not None,
        "iterations": trainer.config.iterations,
        "schedule": _schedule_metrics(meta, trainer),
        "seed": config.seed,
        "device": config.device,
        "threads": torch.get_num_threads(),
        "timings_s": {},
        "training_psnr_db": float(np.mean(psnrs)),
        "initial_psnr_db": meta["initial_psnr_db"],
        "training_psnr_db_per_view": dict(zip(names, psnrs, strict=True)),
        "low_psnr_views": low_psnr_views([im.path.name for im in images], psnrs),
        "num_gaussians": trainer.num_gaussians,
        "initial_gaussians": meta["initial_gaussians"],
        "pose_change": _pose_changes(trainer, [im.path.name for im in images]),
        "focal_change": [float(f) for f in torch.exp(trainer.params["log_focal"]).detach()],
        "init_stats": run.init_meta["stats"],
        "normalisation": run.init_meta["normalisation"],
        **{k: v for k, v in run.init_meta.get("coverage", {}).items() if k != "fill"},
        "coverage_fill": run.init_meta.get("coverage", {}).get("fill"),
        "background": [round(float(c), 4) for c in trainer.background.cpu()],
        "nan_rollbacks": trainer.rollbacks,
        **trainer.extra_metrics(),
    }


def _schedule_metrics(meta: dict, trainer: GaussianTrainer) -> dict:
    """The schedule for metrics.json: the rule, what it asked for, what ran, the budget's
    decisions."""
    schedule = {k: v for k, v in meta.get("schedule", {}).items() if k != "spent_s"}
    return {**schedule, "iterations": trainer.config.iterations}


def _write_outputs(run: _Run, trainer: GaussianTrainer, psnrs: list[float],
                   meta: dict) -> dict:
    """Write OUT (see the module doc) in one atomic step; returns the metrics."""
    from geometry.cameras import Cameras
    from geometry.io.colmap import ColmapModel, write_colmap_model
    from geometry.io.transforms_json import write_point_cloud_ply, write_transforms_json
    from reconstruction.gaussians import write_ply

    t0 = time.perf_counter()
    names = output_names(run.images)
    scene, cameras, sparse_points = _final_scene(run, trainer)
    metrics = _metrics(run, trainer, psnrs, meta)
    if metrics["low_psnr_views"]:
        warn(low_psnr_message(metrics["low_psnr_views"]))
    with atomic_directory(run.config.out) as tmp:
        (tmp / "images").mkdir()
        for name, im in zip(names, run.images, strict=True):
            write_png(tmp / "images" / name, im.rgb)
        write_ply(tmp / "splats.ply", scene)
        colmap = ColmapModel.from_cameras(
            Cameras(K=cameras.K, T_world_cam=cameras.T_world_cam, width=cameras.width,
                    height=cameras.height, names=list(names)),
            points_xyz=sparse_points.numpy(),
            points_rgb=run.init_state["init.sparse_colors"].clamp(0, 1).numpy(),
            observations=_observations(run.init_state))
        write_colmap_model(tmp / "sparse" / "0", colmap)
        # nerfstudio reads ply_file_path as splatfacto's initial cloud: the coloured SfM
        # points, in the transforms.json's frame
        write_point_cloud_ply(tmp / "sparse_pc.ply", sparse_points,
                              run.init_state["init.sparse_colors"].clamp(0, 1))
        write_transforms_json(tmp / "transforms.json", cameras,
                              file_paths=[f"images/{n}" for n in names],
                              extra={"ply_file_path": "sparse_pc.ply"})
        background = [float(c) for c in trainer.background.cpu()]
        if any(background):  # the scene model renders over it (GaussianSceneModel.load)
            (tmp / "scene_model.json").write_text(
                json.dumps({"kind": "gaussians", "background": background}) + "\n",
                encoding="utf-8")
        run.timings["write"] = time.perf_counter() - t0
        run.timings["total"] = time.perf_counter() - run.t_start
        metrics["timings_s"] = {k: round(v, 3) for k, v in run.timings.items()}
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        (tmp / OUTPUT_MARKER).write_text(
            json.dumps({"written_by": "recon fit", "method": run.config.method}) + "\n",
            encoding="utf-8")
    return metrics


def _observations(init_state: dict[str, torch.Tensor]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(point, view, xy)`` of the SfM points' observations (None: a checkpoint from
    before they were kept)."""
    keys = ("init.obs_point", "init.obs_view", "init.obs_xy")
    if not all(k in init_state for k in keys):
        return None
    point, view, xy = (init_state[k].numpy() for k in keys)
    valid = (point >= 0) & (point < len(init_state["init.sparse_points"])) & (view >= 0) \
        & (view < len(init_state["init.Ks"]))
    return point[valid], view[valid], xy[valid]

"""The sparse-view evaluation protocol (``recon eval``).

1. Read the dataset's ground truth and choose the split (:mod:`.splits`).
2. Run the method (from the registry, :mod:`reconstruction.methods`) on the training images
   only: without their poses (pose-free), or with them (``--known-poses``); read its result
   as a :class:`~reconstruction.scene_model.SceneModel`, so every method is measured the
   same way.
3. Align the estimated training cameras to ground truth (Umeyama Sim(3) on the centres)
   and measure ATE, RPE and rotation errors (:mod:`.metrics`).
4. Put each test view into the method's frame: its ground-truth pose through the inverse
   alignment, its intrinsics through the correction the method applied to the training
   intrinsics (``K_test = mean(K_est) mean(K_gt)^-1 K_gt_test``); then optimise its pose
   photometrically against the frozen scene (:mod:`reconstruction.pose_opt`), as
   InstantSplat does, where the scene model is differentiable w.r.t. cameras (otherwise the
   aligned pose is used and eval.json says so): neighbouring test views of one image size
   together, up to ``--test-pose-batch`` per render call, coarse to fine, each stopping when
   its loss stops improving. With known poses the method's frame is the ground truth's:
   nothing is moved.
5. Render the test views; PSNR, SSIM, LPIPS, and their masked versions where object masks
   exist (RegNeRF's DTU definitions).
6. Write ``eval.json``, ``report.md`` + ``plot.png``, ``compare/`` and ``renders/`` PNGs
   and the method's own outputs (``method/``), all at once (atomic folder).

``eval.json`` holds the means over the test views (``psnr``, ``ssim``, ``lpips``,
``psnr_masked`` ...), the pose metrics of the training views (``ate_rmse``, ``ate_rel``
= ATE / scene extent, ``rpe_trans_rmse``, ``rpe_rot_mean_deg``, ``rot_err_mean_deg``,
``rot_err_median_deg``, ``rot_under_5``, ``rot_under_15``, ``rel_rot_under_5``,
``rel_rot_under_15``, ``rel_trans_under_5``, ``rel_trans_under_15``, ``centre_under_10pct``:
see :mod:`geometry.pose_metrics`), ``depth_absrel`` where the dataset has ground-truth depth (mean
``|d - d*| / d*`` over the ground-truth pixels the render covers, the rendered expected
depth brought to ground-truth units by the alignment's scale) with ``depth_coverage``
(share of those pixels covered), ``seconds`` per stage, ``per_view`` (test views) and
``train_views`` entries, and ``resolution`` (the size evaluated at and the rule that chose
it: see :mod:`.data`). ``scene_extent`` is the diameter of all ground-truth camera
centres, or the generator's scene extent for our synthetic scenes; the unit is the
dataset's.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from geometry.cameras import Cameras
from geometry.errors import UserError
from geometry.io.atomic import atomic_directory, atomic_write_text
from geometry.io.images import write_png
from geometry.pose_metrics import PoseMetrics, pose_metrics
from geometry.sim3 import apply_sim3_to_poses, sim3_inverse
from reconstruction.eval import metrics as M
from reconstruction.eval.config import EvalConfig, parse_views
from reconstruction.eval.data import EvalDataset, load_dataset
from reconstruction.eval.report import tensor_list
from reconstruction.eval.splits import Split, choose_split
from reconstruction.scene_model import SceneModel


def scene_extent(dataset: EvalDataset) -> tuple[float, str]:
    """The scale ATE is compared with, and where it came from."""
    if dataset.format == "transforms":
        file = dataset.path if dataset.path.is_file() else dataset.path / "transforms.json"
        try:
            meta = json.loads(file.read_text(encoding="utf-8"))
            extent = float(meta["sparseview_synthetic"]["scene_extent"])
            return extent, "synthetic scene bounding-sphere diameter"
        except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError):
            pass
    centres = dataset.cameras.centers.double()
    diameter = float(torch.cdist(centres, centres).max())
    return diameter, "diameter of the ground-truth camera centres"


def _intrinsics_map(est: Cameras, gt: Cameras) -> torch.Tensor:
    """``A [3, 3]`` with ``K_est ~ A K_gt`` (means over the training views), est rescaled to
    the ground truth's image size first."""
    sx = gt.width.double() / est.width.double()
    sy = gt.height.double() / est.height.double()
    K_est = est.K.double().clone()
    K_est[:, 0] *= sx[:, None]
    K_est[:, 1] *= sy[:, None]
    return K_est.mean(0) @ torch.linalg.inv(gt.K.double().mean(0))


def _scene_scale(model: SceneModel) -> float:
    """Mean distance of the method's training cameras to the scene's centre."""
    centre = model.centre().double().cpu()
    scale = float((model.cameras.centers.double().cpu() - centre).norm(dim=-1).mean())
    return scale if math.isfinite(scale) and scale > 0 else 1.0


#: Rendered opacity above which a pixel counts as covered by the render (depth metrics).
DEPTH_MIN_ALPHA = 0.5


def render_depth(model: SceneModel, camera: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected z-depth ``[H, W]`` (method units) of ``model`` in one camera and the pixels
    the render covers (opacity above :data:`DEPTH_MIN_ALPHA`), ``[H, W]`` bool, on the CPU."""
    with torch.no_grad():
        out = model.render(camera, outputs=("depth", "alpha"))
    depth = out.depth[0].cpu()
    covered = (out.alpha[0].cpu() > DEPTH_MIN_ALPHA) & torch.isfinite(depth)
    return depth, covered


def _lpips_model(config: EvalConfig):
    if config.lpips_weights is None:
        return None, "no --lpips-weights given (LPIPS weights are never downloaded)"
    from reconstruction.eval.lpips import load_lpips

    return load_lpips(config.lpips_weights, config.lpips_backbone), None


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


@dataclass
class _Eval:
    """What the stages of one evaluation share."""

    config: EvalConfig
    dataset: EvalDataset
    split: Split
    extent: float
    extent_source: str
    lpips: object | None
    lpips_missing: str | None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def gt_train(self) -> Cameras:
        return self.dataset.cameras[self.split.train]

    @property
    def gt_test(self) -> Cameras:
        return self.dataset.cameras[self.split.test]


@dataclass
class _Frame:
    """The test cameras in the method's frame, and how the training cameras compare."""

    poses: PoseMetrics
    T_world_cam_test: torch.Tensor  # [T, 4, 4] float64
    K_test: torch.Tensor  # [T, 3, 3] float64
    to_gt: float
    """Method lengths -> ground-truth lengths."""
    scene_scale: float


#: The file in every recon eval output that marks it as one (replaced without --overwrite).
EVAL_MARKER = ".recon-eval"


def run_eval(config: EvalConfig) -> dict:
    """Run the protocol (see the module doc); returns what eval.json holds."""
    t_start = time.perf_counter()
    ev = _load(config)
    with atomic_directory(config.out) as tmp:
        model, fit_metrics = _fit_method(ev, tmp)
        optimise_test = _test_pose_mode(ev, model)
        frame = _align(ev, model)
        per_view = _evaluate_views(ev, model, frame, optimise_test, tmp)
        results = _results(ev, model, fit_metrics, frame, per_view, optimise_test)
        from reconstruction.eval.report import write_report

        ev.seconds["total"] = time.perf_counter() - t_start
        results["seconds"] = {k: round(v, 3) for k, v in ev.seconds.items()}
        write_report(results, tmp)
        # inf (identical images) and nan are not JSON numbers: written as strings.
        atomic_write_text(tmp / "eval.json", json.dumps(_jsonable(results), indent=2) + "\n")
        (tmp / EVAL_MARKER).write_text('{"written_by": "recon eval"}\n', encoding="utf-8")
    return results


def _check_options(config: EvalConfig) -> None:
    from geometry.io.atomic import check_output_folder, check_replaceable

    check_output_folder(config.out)  # a name, writable: before the minutes of the fit
    check_replaceable(config.out, EVAL_MARKER, config.overwrite)
    if config.out.resolve() == Path(config.dataset).resolve() or \
            Path(config.dataset).resolve() in config.out.resolve().parents:
        raise UserError(f"--out {config.out} is inside the dataset; write the results elsewhere.")
    from geometry.device import check_device

    check_device(config.device)
    if config.iterations is not None and config.iterations < 1:
        raise UserError(f"--iterations {config.iterations} must be at least 1.")
    if config.test_pose_batch < 1:
        raise UserError(f"--test-pose-batch {config.test_pose_batch} must be at least 1.")


def _load(config: EvalConfig) -> _Eval:
    """Options checked, the dataset read, the split chosen, LPIPS loaded."""
    from reconstruction.methods import get_method

    _check_options(config)
    get_method(config.method)  # an unknown name fails before the dataset is read
    t0 = time.perf_counter()
    dataset = load_dataset(config.dataset, config.format, config.masks, config.factor,
                           config.max_size, protocol_size=True)
    protocol = config.protocol
    if protocol == "auto":
        protocol = "dtu" if dataset.format == "dtu" and dataset.num_views == 49 else "llff"
    split = choose_split(dataset.num_views, protocol, config.train_views,
                         parse_views(config.views, "--views"),
                         parse_views(config.test_views, "--test-views"))
    lpips_model, lpips_missing = _lpips_model(config)
    extent, extent_source = scene_extent(dataset)
    ev = _Eval(config=config, dataset=dataset, split=split, extent=extent,
               extent_source=extent_source, lpips=lpips_model, lpips_missing=lpips_missing)
    ev.seconds["load"] = time.perf_counter() - t0
    from geometry.progress import log_stage

    # After every option check: an error stays the only line on stderr.
    log_stage(f"evaluating at {dataset.resolution.describe()}", config.quiet)
    return ev


def _training_images(ev: _Eval) -> list[Path]:
    """The training photos as files, at their own size: the method's fit shrinks them to
    the evaluation size itself (``FitConfig.max_size``, the same loader as the metrics), so
    that its SfM can match features at the photos' own resolution."""
    return [ev.dataset.image_paths[i] for i in ev.split.train]


def _fit_method(ev: _Eval, tmp: Path) -> tuple[SceneModel, dict]:
    """Run the method on a folder holding only the training photos (named ``NNN_<name>``,
    so that their name order is the training order) into ``tmp/method/fit``; its result as a
    scene model (with known poses: exactly the given training cameras) and its metrics.

    Pose-free, the method runs whole (InstantSplat: SfM initialisation, joint optimisation of
    Gaussians and poses) at the evaluation resolution (SfM matches at its own). With known
    cameras it keeps them."""
    from reconstruction.engine.config import FitConfig
    from reconstruction.methods import fit, get_method

    config = ev.config
    method = get_method(config.method)
    t0 = time.perf_counter()
    images = _training_images(ev)
    work = tmp / "method"
    staged = work / "_images"
    staged.mkdir(parents=True)
    for k, path in enumerate(images):
        shutil.copyfile(path, staged / f"{k:03d}_{path.name}")
    options = config.options if config.options is not None else method.default_options()
    fit_config = FitConfig(images=staged, out=work / "fit", max_size=ev.dataset.max_size,
                           method=method.name,
                           seed=config.seed, device=config.device, threads=config.threads,
                           quiet=config.quiet)
    if config.init is not None:
        fit_config.init = config.init
    if config.iterations is not None:
        fit_config.iterations = config.iterations
    try:
        if method.stage_eval_inputs is not None and options is not None:
            options = method.stage_eval_inputs(options, images, work / "_staged")
        fit_config.options = options
        known = ev.gt_train if config.known_poses else None
        fit_metrics = fit(fit_config, known)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(work / "_staged", ignore_errors=True)
    model = method.load(fit_config.out, config.device)
    if config.known_poses:
        model.cameras = ev.gt_train.to(dtype=torch.float64)  # exactly the given ones
    ev.seconds["fit"] = time.perf_counter() - t0
    if model.cameras.shape != torch.Size([len(ev.split.train)]):
        raise RuntimeError(f"method {config.method} returned cameras of shape "
                           f"{tuple(model.cameras.shape)} for {len(ev.split.train)} views")
    fit_metrics = {**fit_metrics, "init": fit_config.init,
                   "iterations": fit_metrics.get("iterations", fit_config.iterations)}
    return model, fit_metrics


def _align(ev: _Eval, model: SceneModel) -> _Frame:
    """Pose metrics of the training cameras, and the test cameras in the method's frame."""
    t0 = time.perf_counter()
    gt_train, gt_test = ev.gt_train, ev.gt_test
    try:
        poses = pose_metrics(model.cameras.T_world_cam, gt_train.T_world_cam)
    except ValueError as err:  # degenerate estimates (e.g. all centres in one point)
        raise UserError(f"the training cameras of {ev.config.method} cannot be aligned to the "
                        f"ground truth ({err}); check the method's poses in "
                        f"{ev.config.out}/method.") from None
    if ev.config.known_poses:
        T_world_cam_test = gt_test.T_world_cam.double()
        K_map = torch.eye(3, dtype=torch.float64)
        to_gt = 1.0
    else:
        # Ground truth -> method frame: the inverse of c_gt = s R c_est + t.
        T_world_cam_test = apply_sim3_to_poses(*sim3_inverse(poses.scale, poses.R, poses.t),
                                               gt_test.T_world_cam.double())
        K_map = _intrinsics_map(model.cameras, gt_train)
        to_gt = poses.scale
    frame = _Frame(poses=poses, T_world_cam_test=T_world_cam_test,
                   K_test=K_map @ gt_test.K.double(), to_gt=to_gt,
                   scene_scale=_scene_scale(model))
    ev.seconds["align"] = time.perf_counter() - t0
    return frame


def _test_pose_mode(ev: _Eval, model: SceneModel) -> bool:
    """Whether the test poses are optimised (``--test-pose``, and only for a scene model
    that is differentiable w.r.t. cameras)."""
    config = ev.config
    wanted = config.test_pose == "on" or (config.test_pose == "auto" and not config.known_poses)
    if wanted and not model.differentiable_cameras:
        if config.test_pose == "on":
            raise UserError(f"--test-pose on needs a method whose renders are differentiable "
                            f"w.r.t. the cameras, which {config.method} is not; use "
                            "--test-pose off.")
        return False
    return wanted


def _test_camera(ev: _Eval, frame: _Frame, k: int, T_world_cam: torch.Tensor) -> Cameras:
    gt_test = ev.gt_test
    return Cameras(K=frame.K_test[k][None].float(), T_world_cam=T_world_cam[None].float(),
                   width=gt_test.width[k:k + 1], height=gt_test.height[k:k + 1])


def _test_pose_batches(ev: _Eval, frame: _Frame) -> list[list[int]]:
    """The test views (positions in the split) in the batches their poses are optimised in:
    one image size each, neighbouring cameras together (the near model of a batch bakes its
    colours at the batch's mean centre), at most ``--test-pose-batch`` views, sizes
    balanced."""
    gt_test, size = ev.gt_test, max(1, ev.config.test_pose_batch)
    sizes = [(int(gt_test.width[k]), int(gt_test.height[k])) for k in range(len(gt_test))]
    centres = frame.T_world_cam_test[:, :3, 3].double()
    batches = []
    for shape in dict.fromkeys(sizes):
        views = [k for k, s in enumerate(sizes) if s == shape]
        if size == 1:
            batches += [[k] for k in views]
            continue
        # A nearest-neighbour path through the centres from the outermost one, cut into
        # consecutive runs.
        points = centres[views]
        current = int((points - points.mean(0)).norm(dim=-1).argmax())
        order, left = [current], set(range(len(views))) - {current}
        while left:
            rest = sorted(left)
            current = rest[int((points[rest] - points[current]).norm(dim=-1).argmin())]
            order.append(current)
            left.remove(current)
        count = math.ceil(len(views) / size)
        bounds = [round(len(views) * i / count) for i in range(count + 1)]
        batches += [[views[order[j]] for j in range(bounds[i], bounds[i + 1])]
                    for i in range(count)]
    return batches


def _optimise_test_poses(ev: _Eval, model: SceneModel, frame: _Frame,
                         optimise: bool) -> tuple[torch.Tensor, list[dict]]:
    """Every test view's ``T_world_cam [T, 4, 4]`` (float64) to render from, and how its
    optimisation went; batches of views share one render call per step."""
    T_world_cam = frame.T_world_cam_test.clone()
    num = len(ev.split.test)
    if not optimise:
        return T_world_cam, [{"initial_loss": None, "final_loss": None,
                              "rotation_change_deg": 0.0, "translation_change": 0.0,
                              "iterations": 0, "steps": 0} for _ in range(num)]
    from geometry.progress import progress_bar
    from reconstruction.pose_opt import optimise_poses

    info: list[dict] = [{} for _ in range(num)]
    options = ev.config.test_pose_options
    progress = progress_bar("test poses", quiet=ev.config.quiet, transient=True)
    with progress:
        task = progress.add_task("poses", total=num)
        done = 0
        for views in _test_pose_batches(ev, frame):

            def on_step(step: int, done: int = done, size: int = len(views)) -> None:
                progress.update(task, completed=done + size * (step + 1) / options.iterations)

            targets = torch.stack([ev.dataset.load_image(ev.split.test[k]) for k in views])
            cameras = Cameras(K=frame.K_test[views].float(),
                              T_world_cam=frame.T_world_cam_test[views].float(),
                              width=ev.gt_test.width[views], height=ev.gt_test.height[views])
            result = optimise_poses(model, cameras, targets, options, frame.scene_scale,
                                    on_step=on_step)
            for j, k in enumerate(views):
                T_world_cam[k] = result.T_world_cam[j].double()
                info[k] = {"initial_loss": float(result.initial_loss[j]),
                           "final_loss": float(result.final_loss[j]),
                           "rotation_change_deg": float(result.rotation_change_deg[j]),
                           "translation_change": float(result.translation_change[j])
                           * frame.to_gt,
                           "iterations": int(result.iterations),
                           "steps": int(result.steps[j])}
            done += len(views)
            progress.update(task, completed=done)
    return T_world_cam, info


def _view_metrics(ev: _Eval, model: SceneModel, camera: Cameras, index: int,
                  image: torch.Tensor, target: torch.Tensor, to_gt: float) -> dict:
    """PSNR/SSIM/LPIPS, their masked versions and depth AbsRel of one rendered test view."""
    entry = {"psnr": M.psnr(image, target), "ssim": float(M.ssim(image, target)),
             "lpips": None, "psnr_masked": None, "ssim_masked": None, "lpips_masked": None,
             "depth_absrel": None, "depth_coverage": None}
    depth_gt = ev.dataset.load_depth(index)
    if depth_gt is not None:
        # Method frame -> ground truth: lengths times the alignment's scale.
        depth, covered = render_depth(model, camera)
        entry["depth_absrel"] = M.depth_absrel(depth * to_gt, depth_gt, covered)
        has_gt = depth_gt > 0
        entry["depth_coverage"] = (float((covered & has_gt).sum() / has_gt.sum())
                                   if bool(has_gt.any()) else None)
    lpips = ev.lpips
    if lpips is not None:
        with torch.no_grad():
            entry["lpips"] = float(lpips(image, target))
    mask = ev.dataset.load_mask(index)
    if mask is not None and bool(mask.any()):
        entry["psnr_masked"] = M.psnr(image, target, mask)
        entry["ssim_masked"] = M.ssim_masked(image, target, mask)
        if lpips is not None:
            with torch.no_grad():
                entry["lpips_masked"] = float(lpips(M.composite_on_white(image, mask),
                                                    M.composite_on_white(target, mask)))
    return entry


def _evaluate_views(ev: _Eval, model: SceneModel, frame: _Frame, optimise: bool,
                    tmp: Path) -> list[dict]:
    """Every test view: its pose (optimised or aligned), render, metrics and PNGs."""
    from geometry.progress import progress_bar

    t0 = time.perf_counter()
    T_world_cam, pose_info = _optimise_test_poses(ev, model, frame, optimise)
    ev.seconds["test_pose"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_view = []
    progress = progress_bar("test views", ("{task.fields[view]}",), quiet=ev.config.quiet,
                            transient=True)
    with progress:
        task = progress.add_task("eval", total=len(ev.split.test), view="")
        for k, index in enumerate(ev.split.test):
            name = ev.dataset.names[index]
            progress.update(task, view=name)
            target = ev.dataset.load_image(index)
            camera = _test_camera(ev, frame, k, T_world_cam[k])
            with torch.no_grad():
                image = model.render(camera, outputs=("rgb",)).rgb[0]
            image = image.cpu().clamp(0, 1)
            entry = {"index": index, "name": name,
                     **_view_metrics(ev, model, camera, index, image, target, frame.to_gt),
                     "test_pose": pose_info[k]}
            per_view.append(entry)
            if ev.config.save_renders:
                from reconstruction.eval.report import side_by_side

                stem = Path(name).stem
                write_png(tmp / "compare" / f"{stem}.png", side_by_side(target, image))
                write_png(tmp / "renders" / f"{stem}.png", image)
            progress.advance(task)
    ev.seconds["render_metrics"] = time.perf_counter() - t0
    return per_view


def _results(ev: _Eval, model: SceneModel, fit_metrics: dict, frame: _Frame,
             per_view: list[dict], optimise_test: bool) -> dict:
    """What eval.json holds (``seconds`` filled in by the caller)."""
    config, dataset, split, poses = ev.config, ev.dataset, ev.split, frame.poses
    masked_views = [v for v in per_view if v["psnr_masked"] is not None]
    depth_views = [v for v in per_view if v["depth_absrel"] is not None]
    masks_missing = None
    if not masked_views:
        masks_missing = ("the dataset has no object masks for the test views; pass "
                         "--masks DIR (DTU: RegNeRF's idrmvs masks)")
    test_pose_note = None
    if not model.differentiable_cameras and not config.known_poses:
        test_pose_note = (f"{config.method} renders are not differentiable w.r.t. the cameras: "
                          "test views are rendered at the aligned ground-truth poses")
    info = {"training_psnr_db": fit_metrics.get("training_psnr_db"),
            "num_gaussians": fit_metrics.get("num_gaussians"),
            "iterations": fit_metrics["iterations"], "init": fit_metrics["init"],
            "known_poses": config.known_poses, **model.info()}
    info.update({k: v for k, v in fit_metrics.items() if k.startswith(config.method + "_")})
    return {
        "method": config.method,
        "dataset": {"path": str(dataset.path),
                    "name": (dataset.path.resolve().parent if dataset.path.is_file()
                             else dataset.path.resolve()).name,
                    "format": dataset.format, "num_views": dataset.num_views},
        "resolution": dataset.resolution.as_dict(),
        "known_poses": config.known_poses,
        "test_pose_optimised": optimise_test,
        "test_pose_note": test_pose_note,
        "views": {"protocol": split.protocol, "train": split.train, "test": split.test,
                  "train_names": [dataset.names[i] for i in split.train],
                  "test_names": [dataset.names[i] for i in split.test]},
        **{key: _mean([v[key] for v in per_view])
           for key in ("psnr", "ssim", "lpips")},
        "lpips_missing": ev.lpips_missing,
        **{key: _mean([v[key] for v in per_view])
           for key in ("psnr_masked", "ssim_masked", "lpips_masked")},
        "masked_views": len(masked_views),
        "masks_missing": masks_missing,
        "depth_absrel": _mean([v["depth_absrel"] for v in per_view]),
        "depth_coverage": _mean([v["depth_coverage"] for v in per_view]),
        "depth_views": len(depth_views),
        "depth_missing": None if depth_views else
        "the dataset has no ground-truth depth for the test views",
        **poses.summary(),
        "scene_extent": ev.extent,
        "scene_extent_source": ev.extent_source,
        "ate_rel": poses.ate_rmse / ev.extent if ev.extent > 0 else None,
        "seconds": {},
        "method_info": info,
        "method_timings": dict(fit_metrics.get("timings_s", {})),
        "train_views": [
            {"index": i, "name": dataset.names[i], "trans_err": float(poses.trans_err[j]),
             "rot_err_deg": float(poses.rot_err_deg[j])}
            for j, i in enumerate(split.train)],
        "per_view": per_view,
        "cameras": {
            "gt_centres": tensor_list(ev.gt_train.centers),
            "aligned_centres": tensor_list(poses.T_world_cam_aligned[:, :3, 3]),
            "test_gt_centres": tensor_list(ev.gt_test.centers),
        },
    }


def _jsonable(value):
    """Floats that JSON cannot hold (inf, nan) become the strings "inf"/"nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value

"""The sparse-view evaluation protocol (``recon eval``).

1. Read the dataset's ground truth and choose the split (:mod:`.splits`).
2. Run the method on the training images only: without their poses (pose-free), or with
   them (``--known-poses``).
3. Align the estimated training cameras to ground truth (Umeyama Sim(3) on the centres)
   and measure ATE, RPE and rotation errors (:mod:`.metrics`).
4. Put each test view into the method's frame: its ground-truth pose through the inverse
   alignment, its intrinsics through the correction the method applied to the training
   intrinsics (``K_test = mean(K_est) mean(K_gt)^-1 K_gt_test``); then optimise its pose
   photometrically against the frozen scene (:mod:`.pose_opt`), as InstantSplat does.
   With known poses the method's frame is the ground truth's: nothing is moved.
5. Render the test views; PSNR, SSIM, LPIPS, and their masked versions where object masks
   exist (RegNeRF's DTU definitions).
6. Write ``eval.json``, ``report.md`` + ``plot.png``, ``compare/`` and ``renders/`` PNGs
   and the method's own outputs (``method/``), all at once (atomic folder).

``eval.json`` holds the means over the test views (``psnr``, ``ssim``, ``lpips``,
``psnr_masked`` ...), the pose metrics of the training views (``ate_rmse``, ``ate_rel``
= ATE / scene extent, ``rpe_trans_rmse``, ``rpe_rot_mean_deg``, ``rot_err_mean_deg``,
``rot_err_median_deg``, ``rot_under_5``, ``rot_under_15``, ``rel_rot_under_5``,
``rel_rot_under_15``), ``depth_absrel`` where the dataset has ground-truth depth (mean
``|d - d*| / d*`` over the ground-truth pixels the render covers, the rendered expected
depth brought to ground-truth units by the alignment's scale) with ``depth_coverage``
(share of those pixels covered), ``seconds`` per stage, ``per_view`` (test views) and
``train_views`` entries. ``scene_extent`` is the diameter of all ground-truth camera
centres, or the generator's scene extent for our synthetic scenes; the unit is the
dataset's.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from geometry.cameras import Cameras
from geometry.errors import UserError
from geometry.io.atomic import atomic_directory, atomic_write_text
from geometry.sim3 import apply_sim3_to_poses
from reconstruction.eval import metrics as M
from reconstruction.eval.config import EvalConfig, parse_views
from reconstruction.eval.data import EvalDataset, load_dataset
from reconstruction.eval.methods import METHODS, MethodInput, MethodOutput
from reconstruction.eval.pose_opt import optimise_pose, render
from reconstruction.eval.report import tensor_list
from reconstruction.eval.splits import choose_split


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


def _scene_scale(output: MethodOutput) -> float:
    """Mean distance of the method's training cameras to the median Gaussian centre."""
    centre = output.scene.means.double().median(0).values
    scale = float((output.cameras.centers.double() - centre).norm(dim=-1).mean())
    return scale if math.isfinite(scale) and scale > 0 else 1.0


#: Rendered opacity above which a pixel counts as covered by the render (depth metrics).
DEPTH_MIN_ALPHA = 0.5


def render_depth(scene, K: torch.Tensor, T_cam_world: torch.Tensor, width: int,
                 height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected z-depth ``[H, W]`` (method units) of ``scene`` in one camera and the pixels
    the render covers (opacity above :data:`DEPTH_MIN_ALPHA`), ``[H, W]`` bool, on the CPU."""
    from reconstruction.splatting import rasterization

    s = scene if scene.means.dtype == torch.float32 else scene.to(dtype=torch.float32)
    device = s.means.device
    with torch.no_grad():
        out, alphas, _ = rasterization(
            s.means, s.quats, s.scales, s.opacities, s.sh,
            T_cam_world.to(device, torch.float32)[None], K.to(device, torch.float32)[None],
            int(width), int(height), sh_degree=s.sh_degree, render_mode="ED")
    depth = out[0, ..., 0].cpu()
    covered = (alphas[0, ..., 0].cpu() > DEPTH_MIN_ALPHA) & torch.isfinite(depth)
    return depth, covered


def _lpips_model(config: EvalConfig):
    if config.lpips_weights is None:
        return None, "no --lpips-weights given (LPIPS weights are never downloaded)"
    from reconstruction.eval.lpips import load_lpips

    return load_lpips(config.lpips_weights, config.lpips_backbone), None


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def run_eval(config: EvalConfig) -> dict:
    """Run the protocol (see the module doc); returns what eval.json holds."""
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    if config.out.exists() and not config.out.is_dir():
        raise UserError(f"--out {config.out} is a file; give a folder for the results.")
    if config.out.resolve() == Path(config.dataset).resolve() or \
            Path(config.dataset).resolve() in config.out.resolve().parents:
        raise UserError(f"--out {config.out} is inside the dataset; write the results elsewhere.")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda needs a CUDA GPU and PyTorch with CUDA; use --device cpu.")
    if config.iterations is not None and config.iterations < 1:
        raise UserError(f"--iterations {config.iterations} must be at least 1.")

    t0 = time.perf_counter()
    dataset = load_dataset(config.dataset, config.format, config.masks, config.factor,
                           config.max_size)
    protocol = config.protocol
    if protocol == "auto":
        protocol = "dtu" if dataset.format == "dtu" and dataset.num_views == 49 else "llff"
    split = choose_split(dataset.num_views, protocol, config.train_views,
                         parse_views(config.views, "--views"),
                         parse_views(config.test_views, "--test-views"))
    lpips_model, lpips_missing = _lpips_model(config)
    gt = dataset.cameras
    gt_train, gt_test = gt[split.train], gt[split.test]
    extent, extent_source = scene_extent(dataset)
    seconds["load"] = time.perf_counter() - t0

    optimise_test = config.test_pose == "on" or (config.test_pose == "auto"
                                                 and not config.known_poses)
    with atomic_directory(config.out) as tmp:
        t0 = time.perf_counter()
        train_images = [dataset.image_paths[i] for i in split.train]
        if config.max_size is not None:
            # The method sees exactly the shrunk images the metrics use.
            from reconstruction.eval.report import save_png

            staged = []
            for i in split.train:
                path = tmp / "inputs" / f"{Path(dataset.names[i]).stem}.png"
                save_png(path, (dataset.load_image(i).numpy() * 255.0 + 0.5).astype(np.uint8))
                staged.append(path)
            train_images = staged
        inputs = MethodInput(
            images=train_images, out=tmp / "method",
            cameras=gt_train if config.known_poses else None, iterations=config.iterations,
            init=config.init, seed=config.seed, threads=config.threads, rdggs=config.rdggs,
            device=config.device, quiet=config.quiet)
        inputs.out.mkdir(parents=True)
        output = METHODS[config.method](inputs)
        seconds["fit"] = time.perf_counter() - t0
        if output.cameras.shape != torch.Size([len(split.train)]):
            raise RuntimeError(f"method {config.method} returned cameras of shape "
                               f"{tuple(output.cameras.shape)} for {len(split.train)} views")

        t0 = time.perf_counter()
        poses = M.pose_metrics(output.cameras.T_world_cam, gt_train.T_world_cam)
        if config.known_poses:
            T_world_cam_test = gt_test.T_world_cam.double()
            K_map = torch.eye(3, dtype=torch.float64)
        else:
            # Ground truth -> method frame: the inverse of c_gt = s R c_est + t.
            s, R, t = poses.scale, poses.R, poses.t
            T_world_cam_test = apply_sim3_to_poses(1.0 / s, R.T, -(R.T @ t) / s,
                                                   gt_test.T_world_cam.double())
            K_map = _intrinsics_map(output.cameras, gt_train)
        K_test = K_map @ gt_test.K.double()
        scale = _scene_scale(output)
        seconds["align"] = time.perf_counter() - t0

        device = torch.device(config.device)
        scene = output.scene.to(device, torch.float32)
        per_view = []
        seconds["test_pose"] = 0.0
        seconds["render_metrics"] = 0.0
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(TextColumn("[bold]test views[/bold]"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("{task.fields[view]}"),
                            TimeRemainingColumn(), disable=config.quiet, transient=True)
        with progress:
            task = progress.add_task("eval", total=len(split.test), view="")
            for k, index in enumerate(split.test):
                name = dataset.names[index]
                progress.update(task, view=name)
                target = dataset.load_image(index)
                mask = dataset.load_mask(index)
                w, h = int(gt_test.width[k]), int(gt_test.height[k])
                T_init = torch.linalg.inv(T_world_cam_test[k])
                t0 = time.perf_counter()
                if optimise_test:
                    result = optimise_pose(scene, K_test[k].float(), T_init.float(), target,
                                           config.test_pose_options, scale, output.background)
                    T_cam_world = result.T_cam_world.double()
                    pose_info = {"initial_loss": result.initial_loss,
                                 "final_loss": result.final_loss,
                                 "rotation_change_deg": result.rotation_change_deg,
                                 "translation_change": result.translation_change
                                 * (poses.scale if not config.known_poses else 1.0),
                                 "iterations": result.iterations}
                else:
                    T_cam_world = T_init
                    pose_info = {"initial_loss": None, "final_loss": None,
                                 "rotation_change_deg": 0.0, "translation_change": 0.0,
                                 "iterations": 0}
                seconds["test_pose"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                with torch.no_grad():
                    image, _ = render(scene, K_test[k].float(), T_cam_world.float(), w, h,
                                      output.background)
                image = image.cpu().clamp(0, 1)
                entry = {"index": index, "name": name,
                         "psnr": M.psnr(image, target), "ssim": float(M.ssim(image, target)),
                         "lpips": None, "psnr_masked": None, "ssim_masked": None,
                         "lpips_masked": None, "depth_absrel": None, "depth_coverage": None,
                         "test_pose": pose_info}
                depth_gt = dataset.load_depth(index)
                if depth_gt is not None:
                    # Method frame -> ground truth: lengths times the alignment's scale.
                    to_gt = 1.0 if config.known_poses else poses.scale
                    depth, covered = render_depth(scene, K_test[k].float(),
                                                  T_cam_world.float(), w, h)
                    entry["depth_absrel"] = M.depth_absrel(depth * to_gt, depth_gt, covered)
                    has_gt = depth_gt > 0
                    entry["depth_coverage"] = (float((covered & has_gt).sum() / has_gt.sum())
                                               if bool(has_gt.any()) else None)
                if lpips_model is not None:
                    with torch.no_grad():
                        entry["lpips"] = float(lpips_model(image, target))
                if mask is not None and bool(mask.any()):
                    entry["psnr_masked"] = M.psnr(image, target, mask)
                    entry["ssim_masked"] = M.ssim_masked(image, target, mask)
                    if lpips_model is not None:
                        with torch.no_grad():
                            entry["lpips_masked"] = float(lpips_model(
                                M.composite_on_white(image, mask),
                                M.composite_on_white(target, mask)))
                per_view.append(entry)
                if config.save_renders:
                    from reconstruction.eval.report import save_png, side_by_side

                    stem = Path(name).stem
                    save_png(tmp / "compare" / f"{stem}.png", side_by_side(target, image))
                    save_png(tmp / "renders" / f"{stem}.png",
                             (image.numpy() * 255.0 + 0.5).astype(np.uint8))
                seconds["render_metrics"] += time.perf_counter() - t0
                progress.advance(task)

        masked_views = [v for v in per_view if v["psnr_masked"] is not None]
        depth_views = [v for v in per_view if v["depth_absrel"] is not None]
        masks_missing = None
        if not masked_views:
            masks_missing = ("the dataset has no object masks for the test views; pass "
                             "--masks DIR (DTU: RegNeRF's idrmvs masks)")
        results = {
            "method": config.method,
            "dataset": {"path": str(dataset.path),
                        "name": (dataset.path.resolve().parent if dataset.path.is_file()
                                 else dataset.path.resolve()).name,
                        "format": dataset.format, "num_views": dataset.num_views},
            "known_poses": config.known_poses,
            "test_pose_optimised": optimise_test,
            "views": {"protocol": split.protocol, "train": split.train, "test": split.test,
                      "train_names": [dataset.names[i] for i in split.train],
                      "test_names": [dataset.names[i] for i in split.test]},
            "psnr": _mean([v["psnr"] for v in per_view]),
            "ssim": _mean([v["ssim"] for v in per_view]),
            "lpips": _mean([v["lpips"] for v in per_view]),
            "lpips_missing": lpips_missing,
            "psnr_masked": _mean([v["psnr_masked"] for v in per_view]),
            "ssim_masked": _mean([v["ssim_masked"] for v in per_view]),
            "lpips_masked": _mean([v["lpips_masked"] for v in per_view]),
            "masked_views": len(masked_views),
            "masks_missing": masks_missing,
            "depth_absrel": _mean([v["depth_absrel"] for v in per_view]),
            "depth_coverage": _mean([v["depth_coverage"] for v in per_view]),
            "depth_views": len(depth_views),
            "depth_missing": None if depth_views else
            "the dataset has no ground-truth depth for the test views",
            **poses.summary(),
            "scene_extent": extent,
            "scene_extent_source": extent_source,
            "ate_rel": poses.ate_rmse / extent if extent > 0 else None,
            "seconds": {},
            "method_info": output.info,
            "method_timings": output.timings,
            "train_views": [
                {"index": i, "name": dataset.names[i], "trans_err": float(poses.trans_err[j]),
                 "rot_err_deg": float(poses.rot_err_deg[j])}
                for j, i in enumerate(split.train)],
            "per_view": per_view,
            "cameras": {
                "gt_centres": tensor_list(gt_train.centers),
                "aligned_centres": tensor_list(poses.T_world_cam_aligned[:, :3, 3]),
                "test_gt_centres": tensor_list(gt_test.centers),
            },
        }
        from reconstruction.eval.report import write_report

        seconds["total"] = time.perf_counter() - t_start
        results["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        write_report(results, tmp)
        # inf (identical images) and nan are not JSON numbers: written as strings.
        atomic_write_text(tmp / "eval.json", json.dumps(_jsonable(results), indent=2) + "\n")
    return results


def _jsonable(value):
    """Floats that JSON cannot hold (inf, nan) become the strings "inf"/"nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value

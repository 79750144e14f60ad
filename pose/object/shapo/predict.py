"""``pose shapo predict`` and ``pose shapo eval``: the single-shot network on RGB-D frames,
then (by default) the test-time refinement of every detected object.

A frame of any size is resized so that its focal length matches the one the network was
trained at (nearest-neighbour for depth, so no depths are invented) and padded to a
multiple of 16; detections come back in the frame's own pixels and camera.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.errors import UserError
from pose.object.shapo.refine import ObjectState, RefineConfig

MARKER = "detections.json"
"""Written into every output folder of ``pose shapo predict``."""
EVAL_MARKER = "metrics.json"
"""Written into every output folder of ``pose shapo eval``."""
MIN_POINTS = 20
"""Objects with fewer valid depth points in their mask are not refined."""

__all__ = ["EVAL_MARKER", "MARKER", "ObjectResult", "parse_intrinsics", "predict_frame",
           "read_rgbd", "run_eval", "run_predict"]


# ----------------------------------------------------------------------------- input


def parse_intrinsics(text: str | None) -> np.ndarray:
    """``K [3, 3]`` (pixel centres at +0.5) from ``fx,fy,cx,cy`` in OpenCV's convention
    (pixel centres at integers, as NOCS and most calibrations), or ``real`` / ``camera``
    (NOCS's published intrinsics)."""
    from pose.object.shapo.nocs import INTRINSICS_OPENCV, intrinsics_K

    if text is None or not text.strip():
        raise UserError("--intrinsics is missing; give fx,fy,cx,cy (pixels, OpenCV "
                        "convention) or 'real' for REAL275 frames.")
    if text.strip() in INTRINSICS_OPENCV:
        return intrinsics_K(*INTRINSICS_OPENCV[text.strip()])
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values) or min(values[:2]) <= 0:
        raise UserError(f"--intrinsics {text!r} is not fx,fy,cx,cy with positive focal "
                        "lengths (pixels) nor 'real' or 'camera'.")
    return intrinsics_K(*values)


def _read_image(path: Path, what: str, flags: int) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise UserError(f"the {what} image {path} does not exist; give an existing file.")
    image = cv2.imread(str(path), flags)
    if image is None:
        raise UserError(f"the {what} image {path} is not a readable image; give a PNG or "
                        "JPEG file.")
    return image


def read_rgbd(rgb_path: str | Path, depth_path: str | Path, depth_scale: float = 0.001
              ) -> tuple[np.ndarray, np.ndarray]:
    """Colour ``[H, W, 3]`` in [0, 1] and depth ``[H, W]`` in metres (0: unknown).

    The depth file: a 16-bit PNG of ``depth_scale`` metres per unit (REAL275: millimetres),
    or NOCS CAMERA's 3-channel composite (``G * 256 + R`` millimetres).

    Raises:
        UserError: a file missing or unreadable, sizes that differ, a depth with no valid
            pixel or in an unknown unit (median outside 0.1-10 m).
    """
    import cv2

    rgb_path, depth_path = Path(rgb_path), Path(depth_path)
    bgr = _read_image(rgb_path, "colour", cv2.IMREAD_COLOR)
    raw = _read_image(depth_path, "depth", cv2.IMREAD_UNCHANGED)
    if raw.ndim == 3 and raw.dtype == np.uint8:
        raw = raw[:, :, 1].astype(np.uint16) * 256 + raw[:, :, 2].astype(np.uint16)
    if raw.ndim != 2 or raw.dtype not in (np.uint16, np.float32):
        raise UserError(f"the depth image {depth_path} is not a 16-bit single-channel depth "
                        f"map (it is {raw.dtype} with {1 if raw.ndim == 2 else raw.shape[2]} "
                        "channels); give REAL275-style 16-bit depth in millimetres.")
    if bgr.shape[:2] != raw.shape:
        raise UserError(f"colour {bgr.shape[1]}x{bgr.shape[0]} and depth {raw.shape[1]}x"
                        f"{raw.shape[0]} differ in size; give a registered RGB-D pair.")
    depth = raw.astype(np.float32) * (depth_scale if raw.dtype == np.uint16 else 1.0)
    depth[~np.isfinite(depth)] = 0.0
    valid = depth[depth > 0]
    if len(valid) == 0:
        raise UserError(f"the depth image {depth_path} has no valid (non-zero) pixel.")
    median = float(np.median(valid))
    if not 0.1 <= median <= 10.0:
        raise UserError(f"the depth image {depth_path} has a median of {median:.4g} m at "
                        f"--depth-scale {depth_scale:g}: an unknown unit; set --depth-scale "
                        "to the metres per depth unit.")
    rgb = bgr[:, :, ::-1].astype(np.float32) / 255.0
    return np.ascontiguousarray(rgb), depth


# ----------------------------------------------------------------------------- prediction


@dataclass
class ObjectResult:
    """One detected object: the single-shot estimate and, when refined, the refined one."""

    class_name: str
    score: float
    single_shot: ObjectState
    refined: ObjectState | None
    mask: np.ndarray  # [H, W] bool, the frame's resolution
    points: int
    """Valid depth pixels in the mask."""
    before_m: float | None = None
    """Mean depth-to-surface distance (``s |SDF|``, each capped at 2 cm) of the mask's
    points: single shot."""
    after_m: float | None = None
    """The same after refinement."""
    refine_s: float | None = None
    """Seconds the refinement took."""
    notes: list[str] = field(default_factory=list)

    @property
    def final(self) -> ObjectState:
        return self.refined if self.refined is not None else self.single_shot


def _resize_for_net(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, net_config
                    ) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
    """Resize (focal length to the network's) and pad to a multiple of 16: ``rgb [1, h, w,
    3]``, ``depth [1, h, w]``, ``K [1, 3, 3]`` and the unpadded ``(h, w)``."""
    import cv2

    H, W = depth.shape
    f = net_config.focal_px / float(K[0, 0])
    if abs(f - 1) < 0.02:
        f = 1.0
    w, h = max(16, round(W * f)), max(16, round(H * f))
    if (w, h) != (W, H):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
    K2 = K.copy()
    K2[0] *= w / W
    K2[1] *= h / H
    pw, ph = -w % 16, -h % 16
    rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)))
    depth = np.pad(depth, ((0, ph), (0, pw)))
    return (torch.from_numpy(np.ascontiguousarray(rgb))[None].float(),
            torch.from_numpy(np.ascontiguousarray(depth))[None].float(),
            torch.from_numpy(K2)[None].float(), (h, w))


@torch.no_grad()
def _single_shot(system, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray,
                 threshold: float, max_objects: int):
    import cv2

    from pose.object.shapo.network import decode, make_inputs

    device = next(system.parameters()).device
    rgb_t, depth_t, K_t, (h, w) = _resize_for_net(rgb, depth, K, system.net.config)
    rgb_t, depth_t, K_t = rgb_t.to(device), depth_t.to(device), K_t.to(device)
    out = system.net(make_inputs(rgb_t, depth_t, K_t))
    dets = decode(out, depth_t, K_t, threshold, max_objects)[0]
    H, W = depth.shape
    for det in dets:
        m = det.mask[:h, :w].cpu().numpy().astype(np.uint8)
        det.mask = torch.from_numpy(cv2.resize(m, (W, H), interpolation=cv2.INTER_NEAREST)
                                    > 0)
    return dets


def predict_frame(system, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray,
                  refine: bool = True, refine_config: RefineConfig | None = None,
                  threshold: float = 0.3, max_objects: int = 20,
                  measure: bool = True) -> list[ObjectResult]:
    """Detect, pose, size and shape every object of one RGB-D frame (on the device of
    ``system``; the results' tensors are on the CPU).

    Args:
        system: a :class:`~pose.object.shapo.train.ShapoSystem` (``load_system``).
        rgb: ``[H, W, 3]`` in [0, 1]; depth: ``[H, W]`` metres (0: unknown);
        K: ``[3, 3]`` (pixel centres at +0.5).
        refine: run the test-time optimisation from each single-shot estimate.
        measure: compute the depth-to-surface distances before/after.
    """
    from pose.object.shapo.metrics import SYMMETRIC_CLASSES
    from pose.object.shapo.refine import (
        ImageEvidence,
        masked_points,
        refine_object,
        sdf_distance,
        shape_size,
    )

    priors = system.priors
    device = next(system.parameters()).device
    dets = _single_shot(system, rgb, depth, K, threshold, max_objects)
    depth_t = torch.from_numpy(depth).float().to(device)
    rgb_t = torch.from_numpy(rgb).float().to(device)
    K_t = torch.from_numpy(K).float().to(device)
    results = []
    for det in dets:
        init = ObjectState(R=det.R.float(), t=det.t.float(), scale=det.scale,
                           z_shape=det.z_shape.detach().float(),
                           z_app=det.z_app.detach().float())
        init.size = shape_size(priors, init.z_shape, init.scale)
        pts, cols = masked_points(depth_t, rgb_t, K_t, det.mask.to(device))
        res = ObjectResult(det.class_name, det.score, init.to("cpu"), None,
                           det.mask.numpy(), len(pts))
        if measure and len(pts):
            res.before_m = sdf_distance(priors, init, pts)
        if refine:
            if len(pts) < MIN_POINTS:
                res.notes.append(f"not refined: {len(pts)} depth points in the mask")
            else:
                tic = time.perf_counter()
                evidence = ImageEvidence(K_t, det.mask, depth_t)
                state = refine_object(priors, pts, cols, init, refine_config,
                                      yaw_search=det.class_name not in SYMMETRIC_CLASSES,
                                      evidence=evidence)
                res.refine_s = time.perf_counter() - tic
                if state.size is None or not bool(torch.isfinite(state.size).all()):
                    state.size = init.size
                res.refined = state.to("cpu")
                if measure:
                    res.after_m = sdf_distance(priors, state, pts)
        results.append(res)
    return results


# ----------------------------------------------------------------------------- output


def _state_json(state: ObjectState) -> dict:
    return {"T_cam_obj": state.T_cam_obj().double().numpy().tolist(),
            "scale": float(state.scale),
            "size": (state.size.double().numpy().tolist() if state.size is not None
                     else None)}


def _box_edges(size: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    from pose.object.shapo.metrics import box_corners

    corners = box_corners(size)  # signs (x, y, z) in (1, -1) order
    edges = [(i, j) for i in range(8) for j in range(i + 1, 8)
             if bin(i ^ j).count("1") == 1]
    return corners, edges


def draw_overlay(rgb: np.ndarray, K: np.ndarray, results: list[ObjectResult]) -> np.ndarray:
    """``[H, W, 3]`` uint8 BGR: the colour image, masks tinted, single-shot boxes in red,
    refined boxes in green."""
    import cv2

    img = np.round(rgb[:, :, ::-1] * 255).astype(np.uint8).copy()
    for k, res in enumerate(results):
        tint = np.array([(53 * k) % 255, (101 * k + 80) % 255, (197 * k + 160) % 255])
        img[res.mask] = (0.6 * img[res.mask] + 0.4 * tint).astype(np.uint8)
    scale = max(1, round(480 / max(img.shape[:2])))
    if scale > 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for res in results:
        for state, colour in ((res.single_shot, (0, 0, 255)), (res.refined, (0, 200, 0))):
            if state is None or state.size is None:
                continue
            corners, edges = _box_edges(state.size.double().numpy())
            cam = corners @ state.R.double().numpy().T + state.t.double().numpy()
            if (cam[:, 2] <= 1e-3).any():
                continue
            uv = (cam[:, :2] / cam[:, 2:3]) * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
            uv = np.round(uv * scale).astype(int)
            for i, j in edges:
                cv2.line(img, tuple(int(v) for v in uv[i]), tuple(int(v) for v in uv[j]),
                         colour, 1, cv2.LINE_AA)
        ys, xs = np.nonzero(res.mask)
        if len(ys):
            cv2.putText(img, res.class_name, (int(xs.min() * scale), int(ys.min() * scale)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _write_results(folder: Path, priors, results: list[ObjectResult], rgb: np.ndarray,
                   K: np.ndarray, source: dict, mesh_resolution: int) -> dict:
    import cv2

    from geometry.io.jsonio import dumps_json
    from pose.object.shapo.surface import mesh_from_sdf, write_mesh_ply

    device = next(priors.parameters()).device
    objects = []
    for k, res in enumerate(results):
        state = res.final
        name = f"object_{k:02d}_{res.class_name}.ply"
        with torch.no_grad():
            z_shape, z_app = state.z_shape.to(device), state.z_app.to(device)
            verts, faces = mesh_from_sdf(lambda x, z=z_shape: priors.sdf(z, x),
                                         res=mesh_resolution, device=device)
            if len(faces):
                v = torch.from_numpy(verts).float()
                colors = priors.color(z_app, z_shape, v.to(device)).cpu().numpy()
                cam = (state.scale * v @ state.R.float().T + state.t.float()).numpy()
                write_mesh_ply(folder / name, cam, faces, colors)
        objects.append({
            "class": res.class_name, "score": res.score,
            **_state_json(state),
            "single_shot": _state_json(res.single_shot),
            "refined": res.refined is not None,
            "z_shape": state.z_shape.double().numpy().tolist(),
            "z_app": state.z_app.double().numpy().tolist(),
            "mask_pixels": int(res.mask.sum()), "depth_points": res.points,
            "depth_to_surface_m": {"single_shot": res.before_m, "refined": res.after_m},
            "refine_s": res.refine_s, "notes": res.notes,
            "mesh": name if len(faces) else None})
    record = {"source": source, "K": K.tolist(), "frame": "OpenCV camera (x right, y down, "
              "z forward), metres; T_cam_obj maps the object's box-centred frame (y up) to "
              "the camera; meshes are in the camera frame", "objects": objects}
    ok, png = cv2.imencode(".png", draw_overlay(rgb, K, results))
    if ok:
        (folder / "overlay.png").write_bytes(png.tobytes())
    (folder / MARKER).write_text(dumps_json(record) + "\n")
    return record


def _print_results(results: list[ObjectResult], label: str = "") -> None:
    head = f"{label}: " if label else ""
    if not results:
        print(f"{head}no object detected")
        return
    for k, res in enumerate(results):
        line = f"{head}object {k} {res.class_name} (score {res.score:.2f}, {res.points} pts)"
        if res.before_m is not None:
            line += f": depth-to-surface {1000 * res.before_m:.1f} mm"
            if res.after_m is not None:
                line += f" -> {1000 * res.after_m:.1f} mm refined"
        if res.refine_s is not None:
            line += f", {res.refine_s:.2f} s"
        for note in res.notes:
            line += f" ({note})"
        print(line)


def _frames_to_predict(rgb, depth, intrinsics, real275) -> list[tuple[str, Path, Path, str]]:
    """``(name, colour, depth, intrinsics)`` per frame."""
    if real275 is not None:
        if rgb is not None or depth is not None:
            raise UserError("give either --real275 or --rgb and --depth, not both.")
        real275 = Path(real275)
        if real275.is_dir():
            prefixes = sorted(p.with_name(p.name[: -len("_color.png")])
                              for p in real275.rglob("*_color.png"))
            if not prefixes:
                raise UserError(f"{real275} holds no *_color.png frame; give a REAL275 scene "
                                "folder or a frame prefix such as scene_1/0000.")
        else:
            prefixes = [real275]
        return [(p.name if len(prefixes) == 1 else
                 str(p.relative_to(real275)).replace("/", "_"),
                 p.with_name(p.name + "_color.png"), p.with_name(p.name + "_depth.png"),
                 intrinsics or "real") for p in prefixes]
    if rgb is None or depth is None:
        raise UserError("give --rgb and --depth (and --intrinsics), or --real275 PATH.")
    return [("frame", Path(rgb), Path(depth), intrinsics)]


def run_predict(checkpoint: Path, out: Path, rgb: Path | None = None,
                depth: Path | None = None, intrinsics: str | None = None,
                real275: Path | None = None, refine: bool = True,
                refine_config: RefineConfig | None = None, depth_scale: float = 0.001,
                threshold: float = 0.3, mesh_resolution: int = 48, overwrite: bool = False,
                quiet: bool = False, device: str = "cpu") -> list[dict]:
    """Predict one frame (``--rgb/--depth/--intrinsics``) or REAL275 frames (``--real275``
    prefix or folder) into ``out``: ``detections.json``, a mesh per object and
    ``overlay.png`` (one subfolder per frame for a folder), on ``device``. Returns the
    records."""
    from geometry.device import check_device
    from geometry.io.atomic import atomic_directory, check_output_folder, check_replaceable
    from geometry.progress import log_stage
    from pose.object.shapo.train import load_system

    check_device(device)
    frames = _frames_to_predict(rgb, depth, intrinsics, real275)
    if not 8 <= mesh_resolution <= 256:
        raise UserError(f"--mesh-resolution {mesh_resolution} must be between 8 and 256.")
    if not 0 < threshold < 1:
        raise UserError(f"--threshold {threshold} must be between 0 and 1.")
    loaded = [(name, *read_rgbd(c, d, depth_scale), parse_intrinsics(i))
              for name, c, d, i in frames]
    check_output_folder(out)
    check_replaceable(out, MARKER if len(frames) == 1 else "frames.json", overwrite)
    system, _ = load_system(checkpoint, device)
    records = []
    with atomic_directory(out) as tmp:
        for name, rgb_a, depth_a, K in loaded:
            log_stage(f"{name}: single shot{' + refinement' if refine else ''}…", quiet=quiet)
            results = predict_frame(system, rgb_a, depth_a, K, refine, refine_config,
                                    threshold)
            _print_results(results, name if len(loaded) > 1 else "")
            folder = tmp if len(loaded) == 1 else tmp / name
            folder.mkdir(parents=True, exist_ok=True)
            source = {"name": name, "checkpoint": str(checkpoint)}
            records.append(_write_results(folder, system.priors, results, rgb_a, K, source,
                                          mesh_resolution))
        if len(loaded) > 1:
            from geometry.io.jsonio import dumps_json

            (tmp / "frames.json").write_text(dumps_json([n for n, *_ in loaded]) + "\n")
    return records


# ----------------------------------------------------------------------------- evaluation


def _frame_detections(gt: list, results: list[ObjectResult], refined: bool):
    from pose.object.shapo.metrics import FrameDetections

    states = [r.final if refined else r.single_shot for r in results]
    return FrameDetections(
        gt_classes=[g["class"] for g in gt],
        gt_RTs=np.stack([g["T"] for g in gt]) if gt else np.zeros((0, 4, 4)),
        gt_sizes=np.stack([g["size"] for g in gt]) if gt else np.zeros((0, 3)),
        gt_handle_visible=[g["handle_visible"] for g in gt],
        pred_classes=[r.class_name for r in results],
        pred_scores=np.array([r.score for r in results]),
        pred_RTs=(np.stack([s.T_cam_obj().double().numpy() for s in states]) if states
                  else np.zeros((0, 4, 4))),
        pred_sizes=(np.stack([s.size.double().numpy() for s in states]) if states
                    else np.zeros((0, 3))))


def _eval_frames(synthetic: bool, nocs: Path | None, seed: int, scenes: int, net_config,
                 intrinsics: str):
    """Yield ``(name, rgb, depth, K, gt)`` of the evaluated frames."""
    if synthetic == (nocs is not None):
        raise UserError("give exactly one of --synthetic and --nocs DIR.")
    if synthetic:
        from pose.object.shapo.data import SceneConfig, render_scene

        if scenes < 1:
            raise UserError(f"--scenes {scenes} must be at least 1.")
        cfg = SceneConfig(width=net_config.image_size, height=net_config.image_size,
                          fov_x_deg=net_config.fov_x_deg)
        for k in range(scenes):
            scene = render_scene(seed + k, cfg)
            gt = [{"class": o.class_name, "T": o.T_cam_obj, "size": o.size,
                   "handle_visible": o.handle_visible} for o in scene.objects]
            yield f"scene {seed + k}", scene.rgb, scene.depth, scene.K, gt
        return
    from pose.object.shapo.nocs import list_frames, read_frame

    prefixes = list_frames(nocs)
    if not prefixes:
        raise UserError(f"{nocs} holds no NOCS frame (*_color.png); give a REAL275 or "
                        "CAMERA scene or split folder.")
    spec = intrinsics
    if "," in spec:
        spec = tuple(float(v) for v in spec.split(","))
    for prefix in prefixes:
        frame = read_frame(prefix, spec)
        gt = [{"class": o.class_name, "T": o.T_cam_obj, "size": o.size,
               "handle_visible": o.handle_visible} for o in frame.objects
              if o.T_cam_obj is not None]
        yield str(prefix), frame.rgb, frame.depth, frame.K, gt


def run_eval(checkpoint: Path, synthetic: bool = False, nocs: Path | None = None,
             seed: int = 1000, scenes: int = 10, out: Path | None = None,
             refine: bool = True, refine_config: RefineConfig | None = None,
             threshold: float = 0.3, intrinsics: str = "real", quiet: bool = False,
             overwrite: bool = False, device: str = "cpu") -> dict:
    """NOCS mAPs of the single-shot and the refined estimates on held-out generated scenes
    (``seed``, ``seed + 1``, ...: new random instances, not the priors' ones) or NOCS
    frames; prints them and writes the folder ``out`` (``metrics.json``) when ``out`` is
    given, replaced as a whole: an earlier output of this command (it holds
    ``metrics.json``) is replaced, any other non-empty folder only with ``overwrite``. The
    network and the refinement run on ``device``."""
    from geometry.device import check_device
    from geometry.io.jsonio import dumps_json
    from geometry.progress import progress_bar
    from pose.object.shapo.metrics import METRIC_NAMES, nocs_map
    from pose.object.shapo.train import load_system

    if synthetic == (nocs is not None):
        raise UserError("give exactly one of --synthetic and --nocs DIR.")
    if synthetic and scenes < 1:
        raise UserError(f"--scenes {scenes} must be at least 1.")
    check_device(device)
    if out is not None:
        from geometry.io.atomic import check_output_folder, check_replaceable

        check_output_folder(out)
        check_replaceable(out, EVAL_MARKER, overwrite)
    system, _ = load_system(checkpoint, device)
    frames_single, frames_refined = [], []
    times, before, after = [], [], []
    detected = gt_count = 0
    with progress_bar("evaluating", quiet=quiet) as bar:
        task = bar.add_task("", total=scenes if synthetic else None)
        for _name, rgb, depth, K, gt in _eval_frames(synthetic, nocs, seed, scenes,
                                                     system.net.config, intrinsics):
            results = predict_frame(system, rgb, depth, K, refine, refine_config, threshold,
                                    measure=refine)
            frames_single.append(_frame_detections(gt, results, False))
            frames_refined.append(_frame_detections(gt, results, True))
            detected += len(results)
            gt_count += len(gt)
            for r in results:
                if r.refine_s is not None:
                    times.append(r.refine_s)
                    before.append(r.before_m)
                    after.append(r.after_m)
            bar.advance(task)
    m_single = nocs_map(frames_single)
    m_refined = nocs_map(frames_refined) if refine else None
    metrics: dict = {"single_shot": {k: m_single[k] for k in METRIC_NAMES}}
    if m_refined is not None:
        metrics["refined"] = {k: m_refined[k] for k in METRIC_NAMES}
    metrics["frames"] = len(frames_single)
    metrics["objects"] = gt_count
    metrics["detections"] = detected
    if times:
        metrics["refine_s_per_object"] = float(np.mean(times))
        metrics["depth_to_surface_m"] = {"single_shot": float(np.mean(before)),
                                         "refined": float(np.mean(after))}
    src = f"generated scenes, seeds {seed}..{seed + scenes - 1}" if synthetic else str(nocs)
    print(f"{len(frames_single)} frames ({src}), {gt_count} objects, {detected} detections")
    print("metric       single-shot" + ("  refined" if refine else ""))
    for name in METRIC_NAMES:
        line = f"{name:<11} {100 * m_single[name]:11.1f}"
        if m_refined is not None:
            line += f"  {100 * m_refined[name]:7.1f}"
        print(line)
    if times:
        print(f"depth-to-surface (mean, capped at 2 cm): {1000 * np.mean(before):.1f} mm -> "
              f"{1000 * np.mean(after):.1f} mm; refinement {np.mean(times):.2f} s per object")
    if out is not None:
        from geometry.io.atomic import atomic_directory

        with atomic_directory(out) as tmp:
            (tmp / EVAL_MARKER).write_text(dumps_json(metrics) + "\n")
    return metrics

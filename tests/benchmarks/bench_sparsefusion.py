"""SparseFusion speed and memory: end-to-end inference frames/s (input preparation,
voxelization, both branches, fusion, decoding) for the presets, and the paper-scale
preset's forward + backward on one real-size sample.

    python tests/benchmarks/bench_sparsefusion.py [--presets small paper] [--frames 5]
        [--device cpu|cuda] [--points 35000] [--memory-check] [--threads N]

The input is a synthetic sample at nuScenes sizes: six 1600x900 images and a 32-beam
scan (~35k points) of a ground plane, walls and a few boxes, with the nuScenes camera rig.
``--memory-check`` runs the paper preset's training step in a fresh process and prints
its peak resident memory (``ru_maxrss``), which must stay within 24 GB.
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def synthetic_sample(n_points: int, seed: int = 0):
    """A NuScenesSample at real sizes (images 1600x900, ~n_points LiDAR points)."""
    from perception.boxes import LidarBoxes
    from perception.data.sample import CameraData, NuScenesSample
    from perception.synth import sensors

    rng = np.random.default_rng(seed)
    beams = 32
    columns = max(1, n_points // beams)
    az = np.linspace(0, 2 * np.pi, columns, endpoint=False)
    el = np.radians(np.linspace(-30.67, 10.67, beams))
    d = np.stack([np.cos(az)[:, None] * np.cos(el)[None], np.sin(az)[:, None] * np.cos(el)[None],
                  np.broadcast_to(np.sin(el)[None], (columns, beams))], -1).reshape(-1, 3)
    ground = np.where(d[:, 2] < -1e-3, 1.84 / np.maximum(-d[:, 2], 1e-3), np.inf)
    wall = 20.0 + 10.0 * np.abs(np.sin(3 * np.arctan2(d[:, 1], d[:, 0])))
    rng_m = np.minimum(ground, wall / np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-3))
    pts = d * rng_m[:, None] + rng.normal(0, 0.02, (d.shape[0], 3))
    points = np.concatenate([pts, rng.uniform(0, 100, (len(pts), 1)), np.zeros((len(pts), 1))],
                            1).astype(np.float32)
    T_ego_lidar = sensors.T_ego_lidar()
    cameras = {}
    for spec in sensors.CAMERAS:
        K = spec.K(1600, 900)
        T_cam_lidar = np.linalg.inv(spec.T_ego_cam()) @ T_ego_lidar
        cameras[spec.channel] = CameraData(
            spec.channel, Path("synthetic.jpg"), (1600, 900), K, T_cam_lidar, 0.0,
            image=rng.random((900, 1600, 3), dtype=np.float32))
    n = 20
    gt = LidarBoxes(centers=np.stack([rng.uniform(-30, 30, n), rng.uniform(-30, 30, n),
                                      np.full(n, -1.0)], 1),
                    sizes=np.tile([1.9, 4.5, 1.6], (n, 1)), yaws=rng.uniform(-np.pi, np.pi, n),
                    velocities=rng.normal(0, 2, (n, 2)), labels=rng.integers(0, 10, n),
                    attributes=np.zeros(n, np.int64), num_lidar_pts=np.full(n, 10))
    for cam in cameras.values():
        cam.instances = gt.to_camera(cam.T_cam_lidar, cam.K, cam.image_size)
    return NuScenesSample("synthetic", 0.0, T_ego_lidar, np.eye(4), gt, points, cameras)


def bench_fps(preset: str, frames: int, device: str, n_points: int) -> dict:
    import torch

    from perception.sparsefusion.config import PRESETS
    from perception.sparsefusion.data import collate, prepare_sample
    from perception.sparsefusion.model import SparseFusion

    config = PRESETS[preset]("fusion")
    torch.manual_seed(0)
    model = SparseFusion(config).to(device).eval()
    sample = synthetic_sample(n_points)
    times = []
    with torch.no_grad():
        for i in range(frames + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            batch = collate([prepare_sample(sample, config)], config).to(device)
            boxes = model.predict(model(batch))[0]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i > 0:  # the first frame builds kernels and caches
                times.append(time.perf_counter() - start)
    return {"preset": preset, "fps": 1.0 / float(np.mean(times)),
            "seconds": float(np.mean(times)), "boxes": len(boxes),
            "points": int(sample.points.shape[0])}


def memory_step(n_points: int, device: str) -> None:
    """One paper-preset training step (fusion); prints time and peak memory."""
    import torch

    from perception.sparsefusion.config import paper_preset
    from perception.sparsefusion.data import collate, prepare_sample
    from perception.sparsefusion.model import SparseFusion

    config = paper_preset("fusion")
    torch.manual_seed(0)
    model = SparseFusion(config).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    batch = collate([prepare_sample(synthetic_sample(n_points), config)], config).to(device)
    start = time.perf_counter()
    out = model(batch)
    losses = model.loss(out, batch)
    mid = time.perf_counter()
    losses["total"].backward()
    end = time.perf_counter()
    total = float(losses["total"].detach())
    grads = sum(1 for p in model.parameters() if p.grad is not None)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"paper preset forward {mid - start:.1f} s, backward {end - mid:.1f} s, "
          f"loss {total:.3f} (finite: {math.isfinite(total)}), "
          f"{params / 1e6:.1f} M parameters, {grads} with gradients")
    line = f"peak_rss_gb={peak_gb:.2f}"
    if device.startswith("cuda"):
        line += f" peak_cuda_gb={torch.cuda.max_memory_allocated() / 1024 ** 3:.2f}"
    print(line + (" (within 24 GB)" if peak_gb <= 24 else " (OVER 24 GB)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "paper"])
    parser.add_argument("--frames", type=int, default=5,
                        help="timed frames per preset (after one warm-up frame)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", type=int, default=35000)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--memory-check", action="store_true")
    parser.add_argument("--memory-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_step:
        memory_step(args.points, args.device)
        return
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for preset in args.presets:
        r = bench_fps(preset, args.frames, args.device, args.points)
        print(f"{preset}: {r['fps']:.3f} frames/s end to end ({r['seconds']:.2f} s/frame, "
              f"{r['points']} points, six 1600x900 images, {r['boxes']} boxes)", flush=True)
    if args.memory_check:
        cmd = [sys.executable, __file__, "--memory-step", "--points", str(args.points),
               "--device", args.device]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        subprocess.run(cmd, check=True, cwd=ROOT)


if __name__ == "__main__":
    main()

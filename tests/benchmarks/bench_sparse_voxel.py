"""Speed of the native sparse-voxel kernels against their PyTorch references (CPU).

    python tests/benchmarks/bench_sparse_voxel.py [--rays 65536] [--res 128] [--levels 1]
        [--points 200000] [--channels 16] [--queries 200000] [--threads 1] [--repeat 3]
        [--clock wall|cpu] [--out FILE.json]

Inputs (seeded):
- ray marching: ``--rays`` rays from a sphere of radius 3 towards the unit box, through a
  ``--res``^3 occupancy grid over [-1, 1]^3 (``--levels`` instant-NGP cascades) holding
  random balls (about 6% occupied), step sqrt(3) * 2 / 1024 (instant-NGP's), near 0, far inf;
- voxel scatter: ``--points`` points of a LiDAR-like cloud (a ground plane + clusters, 100 m
  x 100 m, 0.2 m voxels) with ``--channels`` features: voxel_hash + voxel_reduce (mean, max);
- sparse trilinear: ``--queries`` points sampled in the scatter's voxels (forward).

Prints, per op, native and reference time (best of ``--repeat``; the reference runs once for
ray marching, its slowest op) and the ratio, checks that native and reference outputs agree,
and ends with ``ray_march_speedup=X voxel_scatter_speedup=Y trilinear_speedup=Z``
(voxel_hash alone is printed too).
Times are wall-clock by default; ``--clock cpu`` times the calling thread's CPU time instead
(user + system, so page faults count; only with ``--threads 1``), which on a machine shared
with other jobs leaves out the time the benchmark waits for a core.
Writes nothing unless ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

_CLOCK = time.perf_counter  # --clock cpu: time.thread_time


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeat):
        start = _CLOCK()
        out = fn()
        best = min(best, _CLOCK() - start)
    return best, out


def ray_inputs(rays: int, res: int, levels: int, seed: int = 0):
    from geometry.ops.sparse_voxel import cascade_bounds

    g = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1 + 1 / res, 1 - 1 / res, res)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    occ = torch.zeros(res, res, res, dtype=torch.bool)
    for _ in range(12):
        c = torch.rand(3, generator=g) * 1.4 - 0.7
        radius = float(torch.rand(1, generator=g)) * 0.2 + 0.1
        occ |= (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < radius ** 2
    occupancy = occ[None].repeat(levels, 1, 1, 1)
    occupancy[1:] |= torch.rand(occupancy[1:].shape, generator=g) < 0.02  # sparse far field
    dirs_out = torch.nn.functional.normalize(torch.randn(rays, 3, generator=g), dim=1)
    origins = dirs_out * 3.0
    targets = torch.rand(rays, 3, generator=g) * 1.6 - 0.8
    dirs = torch.nn.functional.normalize(targets - origins, dim=1)
    bounds = cascade_bounds([-1, -1, -1, 1, 1, 1], levels)
    return origins, dirs, occupancy, bounds


def point_inputs(points: int, channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ground = points // 2
    xy = torch.rand(ground, 2, generator=g) * 100 - 50
    ground_pts = torch.cat([xy, torch.randn(ground, 1, generator=g) * 0.05 - 1.8], 1)
    centers = torch.rand(40, 3, generator=g) * torch.tensor([90.0, 90.0, 2.0]) - torch.tensor(
        [45.0, 45.0, 1.5])
    which = torch.randint(0, 40, (points - ground,), generator=g)
    cluster = centers[which] + torch.randn(points - ground, 3, generator=g) * torch.tensor(
        [1.0, 1.0, 0.5])
    xyz = torch.cat([ground_pts, cluster])[torch.randperm(points, generator=g)]
    features = torch.randn(points, channels, generator=g)
    return xyz, features, (0.2, 0.2, 0.2), (-50.0, -50.0, -3.0, 50.0, 50.0, 1.0)


def time_ray_march(rays: int, res: int, levels: int, repeat: int) -> dict:
    """Native vs reference occupancy-grid ray marching on :func:`ray_inputs` (the
    reference runs once: it is the slowest op)."""
    from geometry.ops import sparse_voxel as sv

    origins, dirs, occupancy, bounds = ray_inputs(rays, res, levels)
    step = math.sqrt(3) * 2 / 1024
    near = torch.zeros(rays)
    far = torch.full((rays,), math.inf)
    march = (origins, dirs, near, far, occupancy, bounds, step)
    sv.ray_march_native(*march)  # compile / warm up
    t_native, native = _best(lambda: sv.ray_march_native(*march), repeat)
    t_ref, ref = _best(lambda: sv.ray_march_torch(*march), 1)
    same = all(torch.equal(a, b) for a, b in zip(native, ref, strict=True))
    print(f"ray_march  {rays} rays, {res}^3 x {levels} level(s), "
          f"{occupancy.float().mean():.1%} occupied, {native.t_starts.numel()} samples: "
          f"native {t_native * 1e3:.1f} ms, reference {t_ref * 1e3:.0f} ms, "
          f"x{t_ref / t_native:.1f}, identical={same}")
    return {"native_s": t_native, "reference_s": t_ref, "speedup": t_ref / t_native,
            "samples": int(native.t_starts.numel()), "identical": same}


def time_voxel_scatter(points: int, channels: int, repeat: int) -> tuple[dict, tuple]:
    """Native (voxel_hash + voxel_reduce) vs reference point-to-voxel scatter with mean and
    max on :func:`point_inputs`; also returns the native outputs and the inputs' voxel size
    and range."""
    from geometry.ops import sparse_voxel as sv

    xyz, features, size, prange = point_inputs(points, channels)

    def native_scatter():
        coords, inverse, counts = sv.voxel_hash_native(xyz, size, prange)
        return (coords, inverse, counts, *sv.voxel_reduce_native(features, inverse, counts))

    def reference_scatter():
        return tuple(sv.voxel_scatter_torch(xyz, features, size, prange))

    t_native, native = _best(native_scatter, repeat)
    t_ref, ref = _best(reference_scatter, repeat)
    same = all(torch.equal(a, b) for a, b in zip(native[:3], ref[:3], strict=True)) and bool(
        torch.allclose(native[3], ref[3], rtol=1e-6, atol=1e-6)) and torch.equal(native[4],
                                                                                  ref[4])
    print(f"voxel_scatter  {points} points, {channels} channels, "
          f"{native[0].shape[0]} voxels (hash + mean/max): native {t_native * 1e3:.1f} ms, "
          f"reference {t_ref * 1e3:.1f} ms, x{t_ref / t_native:.1f}, agree={same}")
    return ({"native_s": t_native, "reference_s": t_ref, "speedup": t_ref / t_native,
             "voxels": int(native[0].shape[0]), "identical": same},
            (native, xyz, size, prange))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rays", type=int, default=65536)
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--levels", type=int, default=1)
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.clock == "cpu":
        if args.threads != 1:
            parser.exit(2, "error: --clock cpu times one thread; use it with --threads 1\n")
        global _CLOCK
        _CLOCK = time.thread_time
    torch.set_num_threads(args.threads)

    from geometry.ops import sparse_voxel as sv

    results: dict[str, dict[str, float]] = {}

    results["ray_march"] = time_ray_march(args.rays, args.res, args.levels, args.repeat)
    results["voxel_scatter"], (native, xyz, size, prange) = time_voxel_scatter(
        args.points, args.channels, args.repeat)
    # The hashing alone (the mean/max pass is bound by writing the [M, C] outputs).
    t_hash, _ = _best(lambda: sv.voxel_hash_native(xyz, size, prange), args.repeat)
    t_hash_ref, _ = _best(lambda: sv.voxel_hash_torch(xyz, size, prange), args.repeat)
    results["voxel_hash"] = {"native_s": t_hash, "reference_s": t_hash_ref,
                             "speedup": t_hash_ref / t_hash}
    print(f"voxel_hash alone: native {t_hash * 1e3:.1f} ms, reference {t_hash_ref * 1e3:.1f} ms,"
          f" x{t_hash_ref / t_hash:.1f}")

    # --- sparse trilinear -------------------------------------------------------------
    coords = native[0]
    voxel_feats = native[3]
    g = torch.Generator().manual_seed(1)
    pick = torch.randint(0, coords.shape[0], (args.queries,), generator=g)
    low = torch.tensor(prange[:3])
    queries = low + (coords[pick].float() + torch.rand(args.queries, 3, generator=g)) * \
        torch.tensor(size)
    tri = (queries, coords, voxel_feats, size, prange[:3])
    t_native, native_t = _best(lambda: sv.sparse_trilinear_native(*tri), args.repeat)
    t_ref, ref_t = _best(lambda: sv.sparse_trilinear_torch(*tri), args.repeat)
    same = bool(torch.allclose(native_t, ref_t, rtol=1e-6, atol=1e-6))
    results["trilinear"] = {"native_s": t_native, "reference_s": t_ref,
                            "speedup": t_ref / t_native, "identical": same}
    print(f"sparse_trilinear  {args.queries} queries, {coords.shape[0]} voxels: native "
          f"{t_native * 1e3:.1f} ms, reference {t_ref * 1e3:.1f} ms, x{t_ref / t_native:.1f}, "
          f"agree={same}")

    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "results": results}, indent=2))
    print(f"ray_march_speedup={results['ray_march']['speedup']:.1f} "
          f"voxel_scatter_speedup={results['voxel_scatter']['speedup']:.1f} "
          f"trilinear_speedup={results['trilinear']['speedup']:.1f} (threads={args.threads}, "
          f"clock={args.clock})")


if __name__ == "__main__":
    main()

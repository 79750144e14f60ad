"""ShAPO benchmark: priors, octree surface extraction, and test-time refinement.

    python tests/benchmarks/bench_shapo.py --prior-minutes 10 --scenes 20 --seed 1000
    python tests/benchmarks/bench_shapo.py --priors PRIORS --scenes 20 --seed 1000

1. Priors: trains them (``--prior-minutes``, into ``--out`` or a temporary folder) or loads
   ``--priors``; prints the last training losses.
2. Octree vs dense surface extraction on the learned SDF (same finest cell size): points,
   evaluations' time.
3. Refinement on generated scenes of an unseen seed: each object (ground-truth mask, noisy
   depth) starts from a SIMULATED single-shot estimate (the ground-truth pose disturbed by
   ``--rot-deg`` degrees about a random axis, ``--trans-cm`` cm, scale times
   ``exp(N(0, --scale-sigma))``, the category's mean codes), because the single-shot network
   is not built yet. Prints the NOCS mAPs of the start and of the refined estimates, the
   mean depth-to-surface distance before/after and the time per object.
Writes only to ``--out`` (or a temporary folder).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _random_rotation(rng: np.random.Generator, deg_sigma: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    return Rotation.from_rotvec(axis * math.radians(rng.normal(0.0, deg_sigma))).as_matrix()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--priors", type=Path, default=None)
    parser.add_argument("--prior-minutes", type=float, default=10.0)
    parser.add_argument("--instances-per-category", type=int, default=16)
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--rot-deg", type=float, default=8.0)
    parser.add_argument("--trans-cm", type=float, default=1.5)
    parser.add_argument("--scale-sigma", type=float, default=0.1)
    parser.add_argument("--min-pixels", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pose.object.shapo.data import SceneConfig, render_scene
    from pose.object.shapo.metrics import METRIC_NAMES, FrameDetections, nocs_map
    from pose.object.shapo.priors import PriorConfig, PriorTrainConfig
    from pose.object.shapo.refine import (
        ObjectState,
        RefineConfig,
        depth_to_surface,
        masked_points,
        refine_object,
        shape_size,
    )
    from pose.object.shapo.surface import dense_surface_points, octree_surface_points
    from pose.object.shapo.train import load_priors, run_train_priors

    tmp = tempfile.TemporaryDirectory()
    out = args.out or Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    if args.priors is None:
        t0 = time.time()
        result = run_train_priors(out / "priors", True, PriorConfig(),
                                  PriorTrainConfig(instances_per_category=args.instances_per_category,
                                                   steps=100000),
                                  max_minutes=args.prior_minutes, overwrite=True, quiet=True)
        last = result.history[-1]
        print(f"priors: {result.step} steps in {time.time() - t0:.0f} s (incl. sampling), "
              f"sdf L1 {last['sdf']:.4f} (NOCS units), colour L1 {last['color']:.3f}")
        args.priors = out / "priors"
    priors = load_priors(args.priors)
    for p in priors.parameters():
        p.requires_grad_(False)

    # octree vs dense
    zs, _ = priors.mean_codes("mug")
    fn = lambda x: priors.sdf(zs, x)  # noqa: E731
    for depth in (4,):
        t0 = time.perf_counter()
        pts = octree_surface_points(fn, depth=depth, newton=0)
        t_oct = time.perf_counter() - t0
        t0 = time.perf_counter()
        dense = dense_surface_points(fn, 8 * 2**depth, newton=0)
        t_dense = time.perf_counter() - t0
        print(f"surface cells at {8 * 2**depth}^3: octree {len(pts)} in {t_oct:.2f} s, "
              f"dense {len(dense)} in {t_dense:.2f} s ({t_dense / t_oct:.1f}x)")

    rng = np.random.default_rng(args.seed)
    cfg = SceneConfig(width=args.size, height=args.size)
    rcfg = RefineConfig(iterations=args.iterations)
    frames_start, frames_refined = [], []
    before, after, times = [], [], []
    for k in range(args.scenes):
        scene = render_scene(args.seed + k, cfg)
        depth = torch.from_numpy(scene.depth)
        rgb = torch.from_numpy(scene.rgb)
        K = torch.from_numpy(scene.K).float()
        gt = [o for o in scene.objects if o.pixels >= args.min_pixels]
        if not gt:
            continue
        starts, refined = [], []
        for i, obj in enumerate(scene.objects, start=1):
            if obj.pixels < args.min_pixels:
                continue
            pts, cols = masked_points(depth, rgb, K, torch.from_numpy(scene.instance == i))
            T = obj.T_cam_obj
            R0 = T[:3, :3] @ _random_rotation(rng, args.rot_deg)
            t0_ = T[:3, 3] + rng.normal(0, args.trans_cm / 100, 3)
            s0 = obj.shape.diag * math.exp(rng.normal(0, args.scale_sigma))
            z_s, z_a = priors.mean_codes(obj.class_name)
            init = ObjectState(R=torch.from_numpy(R0).float(), t=torch.from_numpy(t0_).float(),
                               scale=s0, z_shape=z_s.detach(), z_app=z_a.detach())
            init.size = shape_size(priors, init.z_shape, s0)
            tic = time.perf_counter()
            state = refine_object(priors, pts, cols, init, rcfg)
            times.append(time.perf_counter() - tic)
            before.append(depth_to_surface(priors, init, pts))
            after.append(depth_to_surface(priors, state, pts))
            starts.append(init)
            refined.append(state)
        for states, frames in ((starts, frames_start), (refined, frames_refined)):
            frames.append(FrameDetections(
                gt_classes=[o.class_name for o in gt],
                gt_RTs=np.stack([o.T_cam_obj for o in gt]),
                gt_sizes=np.stack([o.size for o in gt]),
                gt_handle_visible=[o.handle_visible for o in gt],
                pred_classes=[o.class_name for o in gt],
                pred_scores=np.ones(len(gt)),
                pred_RTs=np.stack([s.T_cam_obj().double().numpy() for s in states]),
                pred_sizes=np.stack([s.size.double().numpy() for s in states])))
    m0, m1 = nocs_map(frames_start), nocs_map(frames_refined)
    print(f"{len(before)} objects in {len(frames_start)} scenes (seed {args.seed}+, "
          f"{args.size} px), start = GT disturbed by {args.rot_deg} deg / {args.trans_cm} cm / "
          f"scale sigma {args.scale_sigma}, mean codes")
    print("metric       start  refined")
    for name in METRIC_NAMES:
        print(f"{name:<11} {100 * m0[name]:6.1f}  {100 * m1[name]:6.1f}")
    print(f"depth-to-surface (mean, capped at 2 cm): {1000 * np.mean(before):.1f} mm -> "
          f"{1000 * np.mean(after):.1f} mm; better for {np.mean(np.less(after, before)):.0%} "
          "of objects")
    print(f"refinement: {np.mean(times):.2f} s per object ({args.iterations} iterations, "
          f"{args.threads} thread(s))")
    tmp.cleanup()


if __name__ == "__main__":
    main()

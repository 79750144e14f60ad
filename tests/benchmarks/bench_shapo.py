"""ShAPO benchmark: priors + single-shot network trained from scratch on the CPU, then the
NOCS metrics of the single-shot and the refined estimates on held-out generated scenes.

    python tests/benchmarks/bench_shapo.py --prior-minutes 4 --net-minutes 6 --scenes 10
    python tests/benchmarks/bench_shapo.py --checkpoint CKPT --scenes 10 --seed 5000

1. Priors (``pose shapo train-priors``): trained for ``--prior-minutes`` into ``--out`` (or a
   temporary folder), or ``--priors`` loaded (skipped with ``--checkpoint``).
2. Network (``pose shapo train``): ``--train-scenes`` generated scenes of the priors'
   instances, trained for ``--net-minutes``, or ``--checkpoint`` loaded. The two budgets
   together are at most 40 minutes (the issue's limit on 2 cores).
3. ``pose shapo eval`` on ``--scenes`` generated scenes of seeds ``--seed``, ``--seed + 1``,
   ... (unseen: training scenes use seeds ``100003 k``, and new random instances, not the
   priors' ones): prints the six NOCS mAPs single-shot vs refined (detections, classes and
   masks all predicted), the mean depth-to-surface distance before/after refinement and
   the refinement's seconds per object, and the wall time of each stage.
Writes only to ``--out`` (or a temporary folder).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--priors", type=Path, default=None)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--prior-minutes", type=float, default=4.0)
    parser.add_argument("--instances-per-category", type=int, default=8)
    parser.add_argument("--net-minutes", type=float, default=6.0)
    parser.add_argument("--train-scenes", type=int, default=500)
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=40,
                        help="refinement iterations per object")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.prior_minutes + args.net_minutes > 40:
        parser.error("--prior-minutes + --net-minutes must be at most 40")
    torch.set_num_threads(args.threads)

    from pose.object.shapo.network import NetConfig, NetTrainConfig
    from pose.object.shapo.predict import run_eval
    from pose.object.shapo.priors import PriorConfig, PriorTrainConfig
    from pose.object.shapo.refine import RefineConfig
    from pose.object.shapo.train import run_train_net, run_train_priors

    tmp = tempfile.TemporaryDirectory()
    out = args.out or Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if args.checkpoint is None:
        if args.priors is None:
            t0 = time.time()
            result = run_train_priors(
                out / "priors", True, PriorConfig(),
                PriorTrainConfig(instances_per_category=args.instances_per_category,
                                 steps=100000),
                max_minutes=args.prior_minutes, overwrite=True, quiet=True)
            last = result.history[-1]
            print(f"priors: {result.step} steps in {time.time() - t0:.0f} s (incl. sampling), "
                  f"sdf L1 {last['sdf']:.4f} (NOCS units), colour L1 {last['color']:.3f}")
            args.priors = out / "priors"
        t0 = time.time()
        result = run_train_net(out / "net", True, args.priors, NetConfig(),
                               NetTrainConfig(scenes=args.train_scenes, steps=100000),
                               max_minutes=args.net_minutes, overwrite=True, quiet=True)
        first, last = result.history[0], result.history[-1]
        print(f"network: {result.step} steps in {time.time() - t0:.0f} s (incl. rendering "
              f"{args.train_scenes} scenes), loss {first['loss']:.3f} -> {last['loss']:.3f}")
        args.checkpoint = out / "net"
    t0 = time.time()
    run_eval(args.checkpoint, synthetic=True, seed=args.seed, scenes=args.scenes,
             out=out / "eval", refine=True, refine_config=RefineConfig(iterations=args.iterations),
             quiet=True)
    print(f"evaluation: {time.time() - t0:.0f} s ({args.threads} thread(s), "
          f"{args.iterations} refinement iterations); total {time.time() - start:.0f} s")
    tmp.cleanup()


if __name__ == "__main__":
    main()

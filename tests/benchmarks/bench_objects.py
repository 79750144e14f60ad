"""Throughput of the object-sequence generator (reconstruction.procedural.objects): views
per minute at the default settings (64 px, 8 views, supersample 2) with 1 and 2 worker
processes, per symmetry group, and the disk cache's write/read speed and size.

    .venv/bin/python tests/benchmarks/bench_objects.py [--sequences 24] [--image-size 64]

Not collected by pytest; writes only to a temporary folder. Wall-clock numbers depend on
the machine's load: the CPU seconds of the 1-worker run are printed too.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import tyro


@dataclass
class Args:
    sequences: int = 24
    """Sequences per measurement."""
    image_size: int = 64
    views: int = 8
    supersample: int = 2
    workers: tuple[int, ...] = (1, 2)
    first_seed: int = 1000


def main(args: Args) -> None:
    from reconstruction.procedural.objects import (
        CATEGORIES,
        ObjectSequenceConfig,
        object_sequences,
        read_object_dataset,
        write_object_dataset,
    )

    config = ObjectSequenceConfig(image_size=args.image_size, views=args.views,
                                  supersample=args.supersample)
    n_views = args.sequences * args.views
    print(f"object sequences: {args.sequences} x {args.views} views, {args.image_size} px, "
          f"supersample {args.supersample}")
    for workers in args.workers:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in object_sequences(args.first_seed, args.sequences, config, workers=workers):
            pass
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        extra = f", {n_views / cpu * 60:7.0f} views per CPU-minute" if workers <= 1 else ""
        print(f"workers={workers}: {n_views / wall * 60:7.0f} views/min "
              f"({wall:.1f} s wall{extra})")
    for symmetry in ("axis", "near", "none"):
        cats = tuple(n for n, c in CATEGORIES.items() if c.symmetry == symmetry)
        cfg = replace(config, categories=cats)
        cpu = time.process_time()
        for _ in object_sequences(args.first_seed, max(4, args.sequences // 3), cfg):
            pass
        cpu = time.process_time() - cpu
        print(f"  {symmetry:>4} ({', '.join(cats)}): "
              f"{max(4, args.sequences // 3) * args.views / cpu * 60:7.0f} views per CPU-minute")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "objects"
        wall = time.perf_counter()
        write_object_dataset(folder, args.first_seed, args.sequences, config,
                             workers=max(args.workers))
        write_s = time.perf_counter() - wall
        size = sum(p.stat().st_size for p in folder.iterdir())
        wall = time.perf_counter()
        data = read_object_dataset(folder)
        for _seq in data:
            pass
        read_s = time.perf_counter() - wall
        print(f"disk cache: write {write_s:.1f} s (workers={max(args.workers)}), read "
              f"{n_views / read_s * 60:9.0f} views/min, {size / n_views / 1024:.1f} KiB/view")


if __name__ == "__main__":
    main(tyro.cli(Args))

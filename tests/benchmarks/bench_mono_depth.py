"""Depth-Anything-V2 inference time per image, random weights (no checkpoint needed).

Times ``MonoDepth.predict`` (resize, network, upsampling back) on one RGB image whose
network input is ``--input-size`` square (518 px: 37 x 37 patches, the official default),
after one warm-up call. Prints the median and the spread over ``--repeats`` calls.

    python tests/benchmarks/bench_mono_depth.py [--encoder vits] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reconstruction.depth.depth_anything import DepthAnythingV2, preset_config
from reconstruction.depth.mono import MonoDepth, network_input_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="vits", choices=["vits", "vitb", "vitl", "tiny"])
    parser.add_argument("--input-size", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DepthAnythingV2(preset_config(args.encoder)).eval().to(args.device)
    model.requires_grad_(False)
    mono = MonoDepth(model, input_size=args.input_size)
    image = torch.rand(args.input_size, args.input_size, 3, device=args.device)
    net_h, net_w = network_input_size(args.input_size, args.input_size, args.input_size)

    def run() -> float:
        start = time.perf_counter()
        disparity = mono.predict(image)
        if disparity.is_cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3

    run()  # warm-up: allocator, kernel selection
    times = [run() for _ in range(args.repeats)]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"Depth-Anything-V2 {args.encoder} ({params:.1f} M parameters), network input "
          f"{net_h}x{net_w}, device {args.device}, {torch.get_num_threads()} threads")
    print(f"  predict: median {statistics.median(times):.0f} ms/image "
          f"(min {min(times):.0f}, max {max(times):.0f}, {args.repeats} runs)")


if __name__ == "__main__":
    main()

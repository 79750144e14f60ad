"""Native CPU rasterizer vs. the pure-PyTorch reference, forward + backward.

Fixed-seed scene: 100k Gaussians, 3 cameras at 512x384 (override with flags). Both run in
this process on the same inputs; the figure that matters is the ratio. Also prints
Gaussian-pixel evaluations per second (pairs inside each Gaussian's bounding box, per tile
it touches, i.e. the work the kernel does before early termination).

    python tests/benchmarks/bench_rasterize.py [--gaussians 100000] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from reconstruction.splatting import rasterization
from reconstruction.splatting.rasterization import rasterization_reference


def make_scene(n: int, cameras: int, width: int, height: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) * 2 - 1) * torch.tensor([1.6, 1.2, 1.0])
    log_scales = torch.empty(n, 3).uniform_(math.log(0.003), math.log(0.03), generator=gen)
    quats = torch.randn(n, 4, generator=gen)
    opacities = torch.rand(n, generator=gen) * 0.9 + 0.1
    sh = torch.randn(n, 16, 3, generator=gen) * 0.2
    viewmats = torch.eye(4).repeat(cameras, 1, 1)
    for c in range(cameras):
        angle = (c - (cameras - 1) / 2) * 0.15
        viewmats[c, 0, 0] = viewmats[c, 2, 2] = math.cos(angle)
        viewmats[c, 0, 2], viewmats[c, 2, 0] = math.sin(angle), -math.sin(angle)
        viewmats[c, 2, 3] = 3.5
    focal = 1.1 * width
    Ks = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]]).repeat(
        cameras, 1, 1)
    return dict(means=means, quats=quats, scales=log_scales.exp(), opacities=opacities,
                colors=sh, viewmats=viewmats, Ks=Ks, width=width, height=height, sh_degree=3)


def fwd_bwd(fn, scene: dict) -> tuple[float, dict]:
    keys = ("means", "quats", "scales", "opacities", "colors", "viewmats")
    inputs = {k: (v.clone().requires_grad_() if k in keys else v) for k, v in scene.items()}
    start = time.perf_counter()
    colors, alphas, meta = fn(**inputs, render_mode="RGB+ED")
    loss = colors.square().mean() + alphas.mean()
    loss.backward()
    return time.perf_counter() - start, meta


def gaussian_pixel_pairs(meta: dict) -> int:
    """Pairs (Gaussian, pixel) inside the Gaussian's bounding box, summed over its tiles."""
    means2d, radii = meta["means2d"].detach(), meta["radii"]
    width, height = meta["width"], meta["height"]
    visible = (radii > 0).all(-1)
    m, r = means2d[visible].double(), radii[visible].double()
    x0 = (m[:, 0] - r[:, 0] - 0.5).floor().clamp(0, width)
    x1 = (m[:, 0] + r[:, 0] - 0.5).ceil().clamp(-1, width - 1) + 1
    y0 = (m[:, 1] - r[:, 1] - 0.5).floor().clamp(0, height)
    y1 = (m[:, 1] + r[:, 1] - 0.5).ceil().clamp(-1, height - 1) + 1
    return int(((x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, default=100_000)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-reference", action="store_true",
                        help="time only the native path (the reference takes minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scene = make_scene(args.gaussians, args.cameras, args.width, args.height)

    fwd_bwd(rasterization, scene)  # build/load the kernels and warm up
    native_times = []
    for _ in range(args.repeats):
        seconds, meta = fwd_bwd(rasterization, scene)
        native_times.append(seconds)
    native = statistics.median(native_times)
    reference = math.nan if args.skip_reference else fwd_bwd(rasterization_reference, scene)[0]
    pairs = gaussian_pixel_pairs(meta)
    visible = int((meta["radii"] > 0).all(-1).sum())

    print(f"scene: {args.gaussians} Gaussians (SH degree 3), {args.cameras} cameras at "
          f"{args.width}x{args.height}, {args.threads} threads, render RGB+ED")
    print(f"visible Gaussian-camera pairs: {visible}")
    print(f"{'':24}{'fwd+bwd seconds':>16}")
    print(f"{'native (median of ' + str(args.repeats) + ')':24}{native:16.3f}")
    print(f"{'pytorch reference':24}{reference:16.3f}")
    print(f"speedup native vs reference: {reference / native:.1f}x")
    print(f"Gaussian-pixel evaluations (fwd): {pairs:.3e}, "
          f"{pairs / native:.3e} per second of fwd+bwd")


if __name__ == "__main__":
    main()

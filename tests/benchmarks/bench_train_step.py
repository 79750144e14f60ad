"""CPU splatting training step: ms per step and compositing throughput (issue 20).

Input (seeded, built in memory): 50k points on a noisy sphere shell with isotropic scales
from the mean distance to their 3 nearest neighbours (scipy cKDTree), opacity 0.1, SH
degree 3, four 480x270 views around the cloud; targets are renders of the same cloud with
perturbed SH. A step is render all four views + L1 loss + backward + Adam.

Printed: ms per training step (median of ``--repeats``), and, timed on the op alone with
the step's projected inputs, the forward and backward compositing ms and Gaussian-pixel
pairs per second per core (pairs = pixels inside each Gaussian's bounding box, per tile
it touches: the work before early termination).

``--kernel-sources DIR`` times another copy of the ``cuda/`` folder (e.g. one holding the
previous kernel) in a subprocess, so both are printed from one run on the same input.
``--opensplat BIN`` also times a user-built OpenSplat (never vendored: it is AGPL) on the
same views, written as a nerfstudio dataset to a temporary folder; its per-step time is
the difference of two runs (``-n`` small and large) over the extra steps, so the start-up
and loading cost cancels. Nothing is written outside a temporary folder (apart from the
kernel build cache).

    python tests/benchmarks/bench_train_step.py [--threads 2] [--repeats 5]
        [--kernel-sources /tmp/cuda_orig [--reference-torch-sh]] [--torch-sh]
        [--opensplat /path/to/opensplat]

``--torch-sh`` evaluates SH colours and the projection with the PyTorch references instead
of the native ops (the code before them); ``--reference-torch-sh`` does so in the
``--kernel-sources`` run, which a kernel folder without those ops needs.

Recorded on the 2-core AMD EPYC VM (AVX-512; 2 threads, medians; the VM is noisy, so
compare rows of one run): 6.29e7 Gaussian-pixel pairs per pass, mean radius 8.3 px.

    kernel                        step ms  fwd ms  bwd ms  fwd pairs/s/core  bwd pairs/s/core
    before issue 20 (first run)    1243.7   349.5   617.7        9.0e7             5.1e7
    before issue 20 (--kernel-sources, same run as below)
                                   1047.6   337.6   576.9        9.3e7             5.5e7
    SIMD lanes + lane-wise bwd sums 467.4   124.5   204.9        2.5e8             1.5e8

Then footprint culling (tiles and row spans from the alpha-cut ellipse, bit-identical
results), packed + prefetched Gaussian data, and the native SH op; same machine under load
from other jobs (load ~5), ``OMP_WAIT_POLICY=PASSIVE``, 2 threads, each pair one run of
``--kernel-sources <the SIMD-lanes kernel> --reference-torch-sh`` (reference: that kernel
and the PyTorch SH), 717744 instead of 862444 tile intersections:

    run                                    step ms  fwd ms  bwd ms   step speed-up
    this checkout                           1135.0   359.4   507.8
    SIMD-lanes kernel, PyTorch SH           1706.5   465.5   732.5      1.50x
    this checkout                            811.2   249.5   384.5
    SIMD-lanes kernel, PyTorch SH           1355.6   214.3   595.3      1.67x
    this checkout, --torch-sh (kernel only) 1550.5   399.2   524.8
    SIMD-lanes kernel, PyTorch SH           1845.3   443.3   704.6      1.19x

Wall times on the loaded machine swing by 2x between the two halves of a run; op CPU time
(1 thread, alternating processes, min of 5) is steadier: forward ~230-270 ms both,
backward ~340-360 ms vs ~440-490 ms.

Then the compositing in explicit vector types (16-lane chunks, 8-lane chunks anchored at
narrow footprints, whole-vector state updates without masked stores, row-wise early
termination, gradient sums in registers), the binning reading the packed data in index
order plus a radix depth sort; renders and gradients bit-identical to the kernel before.
On the shared 2-core VM (load 5-10 from other jobs) wall times are meaningless, so
``--clock cpu --threads 1`` (process CPU time), the whole checkout before issue 20 vs this
one, alternating processes (``PYTHONPATH=<old checkout>`` runs the old one), two rounds:

    run                              step ms  fwd ms  bwd ms  fwd pairs/s/core  bwd pairs/s/core
    checkout before issue 20          2475.4   801.6  1270.6        7.8e7             5.0e7
    this checkout                      564.7   193.0   324.4        3.3e8             1.9e8
    checkout before issue 20          2533.5   798.7  1268.4        7.9e7             5.0e7
    this checkout                      596.0   184.0   319.5        3.4e8             2.0e8

i.e. a step 4.2-4.4x faster in CPU time, forward 4.2x, backward 3.9x (these checkouts also
differ outside the kernel: native SH and projection ops).

Then FMA contraction in the compositing kernels (a * b + c fused: the exp polynomial, the
quadratic form, the gradient sums; 1 thread, op alone: forward ~150 -> ~135 ms, backward
~290 -> ~220 ms), the backward's gradient rows zeroed per tile by the thread that fills
them, and the forward's last-contributor update as bit operations (GCC had turned the
select back into a masked store). Idle machine, 2 threads, ``OMP_WAIT_POLICY=PASSIVE``,
``--kernel-sources <checkout before issue 20>/cuda --reference-torch-sh`` (the old kernels
with the PyTorch SH and projection, in the same run), three runs, then one at 1 thread with
``--clock cpu``:

    run                                    step ms  fwd ms  bwd ms   step speed-up
    this checkout                            291.8    87.5   131.2
    kernel before issue 20, PyTorch SH      1231.8   347.9   617.2      4.22x
    this checkout                            284.9    88.0   143.0
    kernel before issue 20, PyTorch SH      1135.2   295.8   523.3      3.98x
    this checkout                            295.7    97.0   134.1
    kernel before issue 20, PyTorch SH      1092.1   368.2   580.7      3.69x
    this checkout (1 thread, CPU time)       444.2   134.1   234.4
    kernel before issue 20, PyTorch SH      1945.7   546.9  1095.6      4.38x
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WIDTH, HEIGHT, VIEWS, SH_DEGREE = 480, 270, 4, 3


def make_input(n: int, seed: int = 0) -> dict:
    from scipy.spatial import cKDTree

    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    radius = 1.0 + 0.1 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    points = (dirs * radius).float()
    dist, _ = cKDTree(points.numpy()).query(points.numpy(), k=4)  # self + 3 neighbours
    scale = torch.from_numpy(dist[:, 1:].mean(1)).float().clamp_min(1e-7)
    sh = torch.zeros(n, (SH_DEGREE + 1) ** 2, 3)
    sh[:, 0] = torch.rand(n, 3, generator=gen) * 1.5 - 0.75
    target_sh = sh.clone()
    target_sh[:, 0] += torch.randn(n, 3, generator=gen) * 0.3
    target_sh[:, 1:] = torch.randn(n, target_sh.shape[1] - 1, 3, generator=gen) * 0.05

    # Four cameras on a circle around the cloud, looking at its centre (OpenCV axes).
    viewmats = []
    for k in range(VIEWS):
        angle = 2 * math.pi * k / VIEWS
        centre = torch.tensor([5.0 * math.sin(angle), 0.5, -5.0 * math.cos(angle)])
        forward = -centre / centre.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), forward)
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        R = torch.stack((right, down, forward))  # rows: camera axes in world
        T = torch.eye(4)
        T[:3, :3] = R
        T[:3, 3] = -R @ centre
        viewmats.append(T)
    focal = 0.9 * WIDTH
    Ks = torch.tensor([[focal, 0, WIDTH / 2], [0, focal, HEIGHT / 2], [0, 0, 1]])
    return dict(means=points, scales=scale[:, None].repeat(1, 3), sh=sh, target_sh=target_sh,
                quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                opacities=torch.full((n,), 0.1), viewmats=torch.stack(viewmats),
                Ks=Ks.repeat(VIEWS, 1, 1))


def use_torch_sh() -> None:
    """Make rasterization evaluate SH colours and the projection in PyTorch (the paths
    before the native SH and projection ops)."""
    import importlib

    # (the package's `rasterization` attribute is the function, not the module)
    module = importlib.import_module("reconstruction.splatting.rasterization")
    render_cpu = module.render_cpu
    module.render_cpu = lambda *a, **k: render_cpu(
        *a, **{**k, "native_sh": False, "native_projection": False})


def render(inp: dict, means, quats, log_scales, logit_opacities, sh):
    from reconstruction.splatting import rasterization

    return rasterization(means, quats, log_scales.exp(), torch.sigmoid(logit_opacities), sh,
                         inp["viewmats"], inp["Ks"], WIDTH, HEIGHT, sh_degree=SH_DEGREE)


def gaussian_pixel_pairs(means2d: torch.Tensor, radii: torch.Tensor) -> int:
    """Pixels inside each Gaussian's bounding box (the same pairs summed over its tiles)."""
    visible = (radii > 0).all(-1)
    m, r = means2d[visible].double(), radii[visible].double()
    x0 = (m[:, 0] - r[:, 0] - 0.5).ceil().clamp(0, WIDTH)
    x1 = (m[:, 0] + r[:, 0] - 0.5).floor().clamp(-1, WIDTH - 1) + 1
    y0 = (m[:, 1] - r[:, 1] - 0.5).ceil().clamp(0, HEIGHT)
    y1 = (m[:, 1] + r[:, 1] - 0.5).floor().clamp(-1, HEIGHT - 1) + 1
    total = ((x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)).sum()
    return int(total)


def bench_ours(args) -> dict:
    torch.set_num_threads(args.threads)
    inp = make_input(args.points)
    with torch.no_grad():
        targets, _, _ = render(inp, inp["means"], inp["quats"], inp["scales"].log(),
                               torch.logit(inp["opacities"]), inp["target_sh"])
    params = [inp["means"].clone(), inp["quats"].clone(), inp["scales"].log(),
              torch.logit(inp["opacities"]), inp["sh"].clone()]
    for p in params:
        p.requires_grad_()
    opt = torch.optim.Adam(params, lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        colors, _, meta = render(inp, *params)
        loss = (colors - targets).abs().mean()
        loss.backward()
        opt.step()
        return meta

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    meta = step()  # warm-up: builds/loads the kernel
    times = []
    for _ in range(args.repeats):
        start = clock()
        meta = step()
        times.append(clock() - start)

    # The compositing op alone, on the last step's projected inputs.
    with torch.no_grad():
        _, _, meta = render(inp, *params)
    ops = torch.ops.sparseview
    keys = ("means2d", "conics", "opacities", "depths", "radii")
    means2d, conics, opac, depths, radii = (meta[k].detach().contiguous() for k in keys)
    feats = torch.rand(VIEWS, means2d.shape[1], 3, generator=torch.Generator().manual_seed(1))
    fwd_t, bwd_t = [], []
    for _ in range(args.repeats):
        start = clock()
        out = ops.rasterize_to_pixels_fwd(means2d, conics, feats, opac, depths, radii, WIDTH,
                                          HEIGHT, 16)
        fwd_t.append(clock() - start)
        v_colors = torch.ones_like(out[0])
        v_alphas = torch.ones_like(out[1])
        start = clock()
        ops.rasterize_to_pixels_bwd(means2d, conics, feats, opac, radii, out[1], out[2], out[3],
                                    out[4], v_colors, v_alphas, WIDTH, HEIGHT, 16)
        bwd_t.append(clock() - start)
    pairs = gaussian_pixel_pairs(means2d, radii)
    visible = (radii > 0).all(-1)
    fwd, bwd = statistics.median(fwd_t), statistics.median(bwd_t)
    cores = 1 if args.clock == "cpu" else args.threads  # CPU time already sums the threads
    return dict(step_ms=1e3 * statistics.median(times), fwd_ms=1e3 * fwd, bwd_ms=1e3 * bwd,
                pairs=pairs, fwd_pairs_per_s_core=pairs / fwd / cores,
                bwd_pairs_per_s_core=pairs / bwd / cores,
                mean_radius_px=float(radii[visible].float().mean()),
                intersections=int(out[4].numel()))


def run_reference(args, sources: str) -> dict:
    """This benchmark in a subprocess whose kernel is built from ``sources``."""
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeats",
           str(args.repeats), "--points", str(args.points), "--clock", args.clock, "--json",
           "--_sources", sources]
    if args.reference_torch_sh:
        cmd.append("--torch-sh")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_nerfstudio(inp: dict, targets: torch.Tensor, folder: Path) -> None:
    from PIL import Image

    frames = []
    for k in range(VIEWS):
        name = f"view{k}.png"
        img = (targets[k].clamp(0, 1) * 255).round().byte().numpy()
        Image.fromarray(img).save(folder / name)
        c2w = torch.linalg.inv(inp["viewmats"][k])
        c2w[:3, 1:3] *= -1  # OpenCV -> OpenGL camera axes
        frames.append({"file_path": name, "transform_matrix": c2w.tolist()})
    K = inp["Ks"][0]
    meta = {"w": WIDTH, "h": HEIGHT, "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]),
            "cx": float(K[0, 2]), "cy": float(K[1, 2]), "camera_model": "OPENCV",
            "k1": 0, "k2": 0, "p1": 0, "p2": 0, "frames": frames,
            "ply_file_path": "points.ply"}
    (folder / "transforms.json").write_text(json.dumps(meta))
    pts = inp["means"].numpy().astype(np.float32)
    rgb = ((inp["sh"][:, 0] * 0.28209479 + 0.5).clamp(0, 1) * 255).byte().numpy()
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(pts)}\nproperty float x\nproperty float y\n"
              "property float z\nproperty uchar red\nproperty uchar green\n"
              "property uchar blue\nend_header\n")
    rec = np.zeros(len(pts), dtype=[("p", "<f4", 3), ("c", "u1", 3)])
    rec["p"], rec["c"] = pts, rgb
    with open(folder / "points.ply", "wb") as f:
        f.write(header.encode())
        f.write(rec.tobytes())


def bench_opensplat(args, binary: str) -> float:
    torch.set_num_threads(args.threads)
    inp = make_input(args.points)
    with torch.no_grad():
        targets, _, _ = render(inp, inp["means"], inp["quats"], inp["scales"].log(),
                               torch.logit(inp["opacities"]), inp["target_sh"])
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as tmp:
        folder = Path(tmp)
        write_nerfstudio(inp, targets, folder)
        walls = {}
        for n in (2, 2 + args.opensplat_steps):
            cmd = [binary, str(folder), "-n", str(n), "-o", str(folder / "out.ply"), "--cpu",
                   "--num-downscales", "0", "--sh-degree", str(SH_DEGREE),
                   "--sh-degree-interval", "1", "--ssim-weight", "0", "--keep-crs"]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=folder)
            walls[n] = time.perf_counter() - start
        return 1e3 * (walls[2 + args.opensplat_steps] - walls[2]) / args.opensplat_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kernel-sources", help="a cuda/ folder to time as the reference")
    parser.add_argument("--opensplat", help="path to a user-built OpenSplat binary")
    parser.add_argument("--opensplat-steps", type=int, default=10)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time wall-clock (default) or this process's CPU time, steadier "
                             "on a machine shared with other jobs (all threads summed: with "
                             "--threads 1 it is the single-core time)")
    parser.add_argument("--torch-sh", action="store_true",
                        help="evaluate SH colours in PyTorch instead of the native op")
    parser.add_argument("--reference-torch-sh", action="store_true",
                        help="with --kernel-sources: the reference evaluates SH in PyTorch "
                             "(the code before the native SH op; needed for kernels without it)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_sources", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._sources:
        import geometry.ops.loader as loader

        loader.sources_dir = lambda: Path(args._sources)
    if args.torch_sh:
        use_torch_sh()
    ours = bench_ours(args)
    if args.json:
        print(json.dumps(ours))
        return
    rows = [("this checkout" + (" (PyTorch SH)" if args.torch_sh else ""), ours)]
    if args.kernel_sources:
        name = f"kernel from {args.kernel_sources}"
        if args.reference_torch_sh:
            name += " (PyTorch SH)"
        rows.append((name, run_reference(args, args.kernel_sources)))
    print(f"{args.points} points, {VIEWS} views {WIDTH}x{HEIGHT}, SH {SH_DEGREE}, L1 + Adam, "
          f"{args.threads} threads, {args.clock} clock (median of {args.repeats}); mean radius "
          f"{ours['mean_radius_px']:.1f} px, {ours['intersections']} tile intersections, "
          f"{ours['pairs']:.3e} Gaussian-pixel pairs per pass")
    print(f"{'':48}{'step ms':>9}{'fwd ms':>9}{'bwd ms':>9}{'fwd pairs/s/core':>18}"
          f"{'bwd pairs/s/core':>18}")
    for name, r in rows:
        print(f"{name[:48]:48}{r['step_ms']:9.1f}{r['fwd_ms']:9.1f}{r['bwd_ms']:9.1f}"
              f"{r['fwd_pairs_per_s_core']:18.3e}{r['bwd_pairs_per_s_core']:18.3e}")
    if len(rows) > 1:
        print(f"step speed-up vs reference kernel: {rows[1][1]['step_ms'] / ours['step_ms']:.2f}x")
    if args.opensplat:
        ms = bench_opensplat(args, args.opensplat)
        print(f"OpenSplat --cpu: {ms:.1f} ms per step; ours is {ms / ours['step_ms']:.2f}x faster")


if __name__ == "__main__":
    main()

"""How much the live viewer slows a training loop (``recon fit ... --view``).

A fake but honest optimisation: N Gaussians, one ``rasterization`` of a W x H view per
step, L1 loss against a target image, backward, Adam. It runs without a viewer, then with
:class:`viewer.live.LiveTrainingViewer` refreshed every K steps while a websocket client
(standing in for a browser on another machine) receives everything the server sends.
Prints steps/s and the slowdown; the issue's budget is 10 %.

    .venv/bin/python tests/benchmarks/bench_viewer_live.py [--gaussians 20000] [--steps 300]
"""

from __future__ import annotations

import argparse
import math
import statistics
import threading
import time

import torch


def make_problem(n: int, width: int, height: int, seed: int = 0):
    from geometry.se3 import look_at
    from reconstruction.splatting import rasterization

    g = torch.Generator().manual_seed(seed)
    params = {
        "means": (torch.randn(n, 3, generator=g) * 0.5).requires_grad_(),
        "quats": torch.randn(n, 4, generator=g).requires_grad_(),
        "log_scales": torch.full((n, 3), math.log(0.02)).requires_grad_(),
        "logit_opacities": torch.zeros(n).requires_grad_(),
        "sh0": (torch.randn(n, 1, 3, generator=g) * 0.3).requires_grad_(),
        "shN": torch.zeros(n, 0, 3).requires_grad_(),
    }
    T = torch.tensor(look_at([0.0, -0.5, -3.0], [0.0, 0.0, 0.0], [0.0, -1.0, 0.0]),
                     dtype=torch.float32)
    viewmat = torch.linalg.inv(T)[None]
    f = 0.9 * width
    K = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]])
    target = torch.rand(1, height, width, 3, generator=g)

    def step(optimizer) -> float:
        colors, _, _ = rasterization(
            params["means"], params["quats"], torch.exp(params["log_scales"]),
            torch.sigmoid(params["logit_opacities"]),
            torch.cat([params["sh0"], params["shN"]], 1), viewmat, K, width, height,
            sh_degree=0)
        loss = (colors - target).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return params, step, T, K


def scene_of(params):
    from reconstruction.gaussians import GaussianScene

    return GaussianScene(**params)


def drain(url: str, stop: threading.Event, counter: list[int]) -> None:
    """A stand-in browser: receive every message the viewer sends."""
    import viser
    from websockets.sync.client import connect

    with connect(url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None) as ws:
        while not stop.is_set():
            try:
                message = ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            counter[0] += len(message)


def run(n: int, steps: int, width: int, height: int, every: int | None) -> tuple[float, dict]:
    from geometry.cameras import Cameras

    torch.manual_seed(0)
    params, step, T, K = make_problem(n, width, height)
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    cameras = Cameras(K=K.double(), T_world_cam=T[None].double(), width=width, height=height)
    live, stop, received, client = None, threading.Event(), [0], None
    if every is not None:
        from viewer.live import LiveTrainingViewer

        live = LiveTrainingViewer(port=0, every=every, min_interval_s=0.0, verbose=False)
        client = threading.Thread(target=drain, args=(
            f"ws://127.0.0.1:{live.port}", stop, received), daemon=True)
        client.start()
        time.sleep(1.0)
    for i in range(5):  # warm-up (kernel load, allocator)
        step(optimizer)
        if live is not None:
            live.update(i * every, scene_of(params), cameras)
    if live is not None:
        live.wait(30)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(optimizer)
        if live is not None:
            live.update(i, scene_of(params), cameras)
    if live is not None:
        live.wait(60)  # the last update's work counts too
    seconds = time.perf_counter() - t0
    info = {"cpu_per_step": (time.process_time() - cpu0) / steps}
    if live is not None:
        info.update(updates=live.updates_sent, MiB_sent=received[0] / 2**20, error=live.error)
        stop.set()
        client.join(5)
        live.close()
    return steps / seconds, info


def update_cost(n: int, width: int, height: int, repeats: int = 10) -> tuple[float, float]:
    """Median CPU seconds (all threads: copy, conversion, serialisation, sending) and wall
    seconds of one viewer refresh of ``n`` Gaussians, with a client receiving."""
    from geometry.cameras import Cameras
    from viewer.live import LiveTrainingViewer

    params, _, T, K = make_problem(n, width, height)
    cameras = Cameras(K=K.double(), T_world_cam=T[None].double(), width=width, height=height)
    live = LiveTrainingViewer(port=0, every=1, min_interval_s=0.0, verbose=False)
    stop, received = threading.Event(), [0]
    client = threading.Thread(target=drain, args=(f"ws://127.0.0.1:{live.port}", stop,
                                                  received), daemon=True)
    client.start()
    time.sleep(1.0)
    live.update(0, scene_of(params), cameras)  # the first one builds the GUI
    live.wait(30)
    time.sleep(0.5)
    cpu, wall = [], []
    for i in range(1, repeats + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        live.update(i, scene_of(params), cameras)
        live.wait(30)
        wall.append(time.perf_counter() - t0)
        time.sleep(0.3)  # viser's own thread sends meanwhile: its CPU time counts
        cpu.append(time.process_time() - c0)
    stop.set()
    client.join(5)
    live.close()
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gaussians", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--every", type=int, nargs="+", default=[100, 20])
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds (no viewer, then each --every); medians")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (recon fit uses 1 on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.gaussians} Gaussians, {args.width}x{args.height}, {args.steps} steps, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} interleaved rounds")
    rates: dict[int | None, list[float]] = {None: [], **{e: [] for e in args.every}}
    cpus: dict[int | None, list[float]] = {k: [] for k in rates}
    infos: dict[int, dict] = {}
    for _ in range(args.repeats):
        for every in rates:
            rate, info = run(args.gaussians, args.steps, args.width, args.height, every)
            rates[every].append(rate)
            cpus[every].append(info["cpu_per_step"])
            if every is not None:
                infos[every] = info
    base = statistics.median(rates[None])
    base_cpu = statistics.median(cpus[None])
    spread = 100 * (max(rates[None]) - min(rates[None])) / base
    print(f"  no viewer          : {base:7.2f} steps/s  {1000 * base_cpu:7.1f} ms CPU/step  "
          f"(wall-clock spread over rounds {spread:.0f} %)")
    for every in args.every:
        rate, cpu = statistics.median(rates[every]), statistics.median(cpus[every])
        info = infos[every]
        print(f"  viewer every {every:4d}  : {rate:7.2f} steps/s  {1000 * cpu:7.1f} ms CPU/step  "
              f"slowdown wall {100 * (1 - rate / base):5.1f} %, CPU "
              f"{100 * (cpu / base_cpu - 1):5.1f} %  ({info['updates']} updates, "
              f"{info['MiB_sent']:.1f} MiB to the client in the last round, "
              f"error {info['error']})")
    print("CPU % = extra process CPU time per step (all threads): the slowdown on cores "
          "that are not shared; wall % also carries the machine's other load.")
    cost, latency = update_cost(args.gaussians, args.width, args.height)
    print(f"one refresh of {args.gaussians} Gaussians: {1000 * cost:.1f} ms CPU "
          f"(all threads), {1000 * latency:.1f} ms until handed to viser")
    for every in sorted({*args.every, 100}):
        print(f"  => expected CPU overhead at every {every:4d}: "
              f"{100 * cost / (every * base_cpu):5.2f} % of the training's CPU time")


if __name__ == "__main__":
    main()

"""Training: one process on the CPU or a GPU, or several GPUs/processes with ``torchrun``
(DDP: each rank trains on its share of the samples, gradients are averaged).

Samples are prepared once (points, resized images, targets) and cached in memory (and,
with ``cache_dir``, on disk, so runs of the ablation share the work). The optimiser is
AdamW with a linear warm-up and a cosine decay; training stops after ``epochs`` or
``max_minutes``, whichever comes first, and writes the checkpoint (and the resumable
training state) after every epoch and at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from geometry.errors import UserError
from geometry.io.atomic import atomic_path
from geometry.progress import progress_bar
from geometry.threads import set_threads
from perception.sparsefusion.checkpoint import STATE, save_checkpoint
from perception.sparsefusion.config import SparseFusionConfig
from perception.sparsefusion.data import PreparedSample, collate, prepare_sample


@dataclass
class TrainSettings:
    epochs: int = 20
    max_minutes: float = 30.0
    batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 10.0
    seed: int = 0
    threads: int | None = None
    """CPU threads (default: all cores); :func:`train` sets it to the count it used."""
    device: str = "cpu"
    log_every: int = 10


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def load_samples(dataroot: Path, version: str, split: str, config: SparseFusionConfig,
                 cache_dir: Path | None = None, limit: int = 0, progress=None
                 ) -> list[PreparedSample]:
    """Prepared samples of a split (from the on-disk cache when it matches)."""
    from perception.data import NuScenesDataset

    # Only what prepare_sample uses goes into the key (voxel sizes do not).
    key_src = json.dumps({"root": str(Path(dataroot).resolve()), "version": version,
                          "split": split, "range": list(config.voxel.point_range),
                          "sweeps": config.voxel.sweeps,
                          "image": list(config.camera.image_size), "limit": limit})
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"samples_{split}_{key}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        return _read_cache(cache)
    # Points and images both, whatever the modality: the cache serves every variant.
    dataset = NuScenesDataset(dataroot, version, split, sweeps=config.voxel.sweeps)
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    samples = []
    for i in range(n):
        samples.append(prepare_sample(dataset[i], config))
        if progress is not None:
            progress(i + 1, n)
    if cache is not None:
        payload = [{**asdict(s), "T_global_lidar": torch.from_numpy(s.T_global_lidar)}
                   for s in samples]
        with atomic_path(cache) as tmp:
            torch.save(payload, tmp)
    return samples


def _read_cache(cache: Path) -> list[PreparedSample]:
    """The prepared samples of a cache file written by :func:`load_samples`."""
    from dataclasses import fields

    from geometry.io.checkpoints import torch_load_weights_only

    what = "a sample cache written by 'perception train'"
    hint = "delete it (it is rebuilt) or pass another --cache-dir."
    data = torch_load_weights_only(cache, what, hint)
    names = {f.name for f in fields(PreparedSample)}
    if not isinstance(data, list) or not all(isinstance(d, dict) and set(d) == names
                                             for d in data):
        raise UserError(f"{cache} is not {what} (its entries are not prepared samples); {hint}")
    return [PreparedSample(**{**d, "T_global_lidar": np.asarray(d["T_global_lidar"])})
            for d in data]


def _lr_factor(step: int, total: int, warmup: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 5 % over the steps or the time budget,
    whichever runs out first (so a time-limited run still ends at a low rate)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def init_from_checkpoints(model: torch.nn.Module, folders: list[Path]) -> int:
    """Copy every weight whose name and shape match from earlier checkpoints (later
    folders win), e.g. a fusion model from its LiDAR-only and camera-only pretrainings, as
    SparseFusion is trained. Returns how many tensors were copied."""
    from geometry.io.checkpoints import load_safetensors

    own = model.state_dict()
    copied: dict[str, torch.Tensor] = {}
    for folder in folders:
        path = Path(folder) / "model.safetensors"
        if not path.is_file():
            raise UserError(f"{path} does not exist; --init-from takes checkpoint folders.")
        weights = load_safetensors(path, "a SparseFusion weights file",
                                   "--init-from takes checkpoint folders written by "
                                   "'perception train'; restore or retrain that one.")
        for name, value in weights.items():
            if name in own and own[name].shape == value.shape:
                copied[name] = value
    model.load_state_dict(copied, strict=False)
    return len(copied)


def train(config: SparseFusionConfig, samples: list[PreparedSample], out_dir: Path,
          settings: TrainSettings, resume: bool = False,
          init_from: list[Path] | None = None) -> dict:
    """Train and write ``out_dir/{model.safetensors, config.json, train_state.pt}``.

    Returns:
        a summary (steps, epochs, minutes, last losses).
    """
    from perception.sparsefusion.model import SparseFusion

    rank, world = _start_distributed(settings)
    settings.threads = set_threads(settings.threads)
    if not samples:
        raise UserError("no training samples; check --dataroot and --split.")
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    device = torch.device(settings.device)
    model = SparseFusion(config)
    initialised = init_from_checkpoints(model, init_from) if init_from else 0
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    start_epoch, step, elapsed = 0, 0, 0.0
    if resume and (Path(out_dir) / STATE).is_file():
        start_epoch, step, elapsed = _load_train_state(out_dir, model, optimizer)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, find_unused_parameters=True)
    mine = list(range(rank, len(samples), world))
    total_steps = math.ceil(len(mine) / settings.batch_size) * settings.epochs
    t0 = time.monotonic() - elapsed
    budget = settings.max_minutes * 60.0
    last: dict[str, float] = {}
    stopped_early = False
    epochs_done = start_epoch
    with progress_bar(None, ["{task.fields[info]}"], quiet=rank != 0) as progress:
        task = progress.add_task(f"train {config.modality}", total=total_steps,
                                 completed=step, info="")
        for epoch in range(start_epoch, settings.epochs):
            order = random.Random(settings.seed * 1000 + epoch).sample(mine, len(mine))
            model.train()
            for first in range(0, len(order), settings.batch_size):
                batch = collate([samples[i] for i in order[first:first + settings.batch_size]],
                                config).to(device)
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * _lr_factor(
                        step, total_steps, settings.warmup_steps,
                        (time.monotonic() - t0) / budget)
                last = _optimiser_step(net, model, optimizer, batch, settings.grad_clip)
                step += 1
                if not math.isfinite(last["total"]):
                    raise RuntimeError(f"the loss became {last['total']} at step {step}")
                progress.update(task, completed=step, info=f"loss {last['total']:.3f}")
                if time.monotonic() - t0 > budget:
                    stopped_early = True
                    break
            epochs_done = epoch + 1
            if rank == 0:
                _save(out_dir, model, optimizer, config, epochs_done, step,
                      time.monotonic() - t0, settings, last)
            if stopped_early:
                break
    minutes = (time.monotonic() - t0) / 60.0
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return {"steps": step, "epochs": epochs_done, "minutes": minutes, "losses": last,
            "initialised_tensors": initialised,
            "stopped_by_time": stopped_early}


def _start_distributed(settings: TrainSettings) -> tuple[int, int]:
    """``(rank, world size)``; under ``torchrun``, joins the process group and moves a CUDA
    ``settings.device`` to the rank's ``LOCAL_RANK`` GPU."""
    rank, world = _dist_info()
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if settings.device.startswith("cuda") else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        if settings.device.startswith("cuda"):
            settings.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(settings.device)
    return rank, world


def _load_train_state(out_dir: Path, model: torch.nn.Module,
                      optimizer: torch.optim.Optimizer) -> tuple[int, int, float]:
    """Load the weights and optimiser state written by :func:`_save` into ``model`` and
    ``optimizer``; returns ``(epochs done, steps done, seconds trained)``."""
    from geometry.io.checkpoints import load_safetensors, torch_load_weights_only

    hint = "train again without --resume (or into a new --out)."
    path = Path(out_dir) / STATE
    what = "the training state 'perception train' writes"
    state = torch_load_weights_only(path, what, hint)
    weights = load_safetensors(Path(out_dir) / "model.safetensors",
                               "a SparseFusion weights file", hint)
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        return int(state["epoch"]), int(state["step"]), float(state["elapsed"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError):
        raise UserError(f"{out_dir} holds a checkpoint of another model or a damaged "
                        f"{STATE}; {hint}") from None


def _optimiser_step(net: torch.nn.Module, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, batch, grad_clip: float
                    ) -> dict[str, float]:
    """One forward/backward/update on ``batch`` (``net`` is ``model`` or its DDP wrapper);
    the losses by name."""
    out = net(batch)
    losses = model.loss(out, batch)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def _save(out_dir: Path, model, optimizer, config, epoch: int, step: int, elapsed: float,
          settings: TrainSettings, losses: dict) -> None:
    save_checkpoint(out_dir, model, config, {"train": asdict(settings), "epoch": epoch,
                                             "step": step, "minutes": elapsed / 60.0,
                                             "losses": losses})
    with atomic_path(Path(out_dir) / STATE) as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                    "elapsed": elapsed}, tmp)

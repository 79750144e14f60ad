"""The one training loop of the learned methods, their checkpoints and data parallelism.

Every learned model of the suite (ADen, UpSRT, NeO 360, ShAPO's priors and network, ...)
trains through :func:`train_loop`: the method supplies a model, an optimiser, a
``batch_fn(step, rank, world_size)`` and a ``loss_fn(model, batch)`` returning a dict of
scalar tensors with the total under ``"loss"``; the loop does the rest, the same way for
all of them:

- learning rate: linear warm-up, then a cosine decay over the budget (steps or
  ``--max-minutes``, whichever ends first), as a factor on each group's initial rate;
- gradient clipping, a progress bar (geometry.progress), the terms logged every
  ``log_every`` steps into ``history.json`` and drawn into ``loss.png``;
- checkpoints every ``checkpoint_every_s`` seconds, on Ctrl-C and at the end, written
  atomically (an interrupted run keeps the previous checkpoint);
- ``resume``: continue from the checkpoint in ``out`` (weights, optimiser, step, elapsed
  time, history), refused for another model's checkpoint or another configuration (the
  error names the first option that differs); options the checkpoint predates (keys its
  configuration lacks) take their current values, with a note;
- data parallel over processes started by ``torchrun``: :func:`ddp_setup` joins the process
  group (gloo on CPU, nccl on CUDA), parameters are broadcast from rank 0 and gradients are
  averaged over ranks after every backward (what ``DistributedDataParallel`` does, without
  its constraints on which parameters a step may use, e.g. a generator and a discriminator
  trained by one loss); rank 0 alone writes, and its time limit stops every rank.

A checkpoint folder holds ``config.json`` (``{"format", "version", "kind", "config",
"step", "elapsed_s", ...}``), ``model.safetensors`` and, for resuming,
``trainer_state.pt`` (optimiser state and history; read with ``weights_only=True``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geometry.errors import UserError

__all__ = [
    "CHECKPOINT_FORMAT",
    "DistInfo",
    "TrainLoop",
    "TrainResult",
    "config_differences",
    "ddp_cleanup",
    "ddp_setup",
    "load_weights",
    "plot_history",
    "read_checkpoint_config",
    "save_checkpoint",
    "train_loop",
]

CHECKPOINT_FORMAT = "sparseview.checkpoint"
CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------------- parallelism


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ddp_setup(device: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Without ``WORLD_SIZE`` > 1 this is a single process and nothing is initialised. With
    it, the backend is nccl when the processes run on CUDA devices (one per local rank) and
    gloo otherwise.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (a single process on GPU N; under
            ``torchrun`` each process takes the GPU of its local rank) or ``None`` (CUDA
            when available).

    Raises:
        UserError: ``device`` is misspelt or names a GPU this machine lacks.
    """
    import torch.distributed as dist

    from geometry.device import check_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None:
        check_device(device)
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda and world == 1 and device is not None and ":" in device:
        local = int(device.split(":")[1])
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def ddp_cleanup() -> None:
    """Leave the process group (no-op for a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # every rank reaches this point before any tears gloo down: a rank that leaves
        # while another still has a collective in flight aborts the other process
        dist.barrier()
        dist.destroy_process_group()


def _broadcast_parameters(model: nn.Module) -> None:
    import torch.distributed as dist

    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


def _average_gradients(model: nn.Module, world_size: int) -> None:
    """All-reduce the gradients in one flat buffer (a parameter without a gradient this
    step contributes zeros, so every rank sends the same layout)."""
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _any_rank(flag: bool, dist_info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on rank 0 (rank 0's clock decides)."""
    if not dist_info.distributed:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.broadcast(t, src=0)
    return bool(t.item())


# ------------------------------------------------------------------------- checkpoints


def save_checkpoint(out: str | os.PathLike, model: nn.Module, kind: str,
                    config: dict[str, Any], *, step: int = 0, elapsed_s: float = 0.0,
                    optimizer: torch.optim.Optimizer | None = None,
                    history: list[dict[str, float]] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint folder atomically (see the module docstring).

    Args:
        out: the folder (replaced as a whole).
        model: its ``state_dict`` goes to ``model.safetensors``.
        kind: the model's name (``"aden"``, ``"upsrt"``, ...), checked when reading.
        config: the JSON-able configuration that rebuilds the model.
        step, elapsed_s: training progress, for resuming and for the record.
        optimizer, history: written to ``trainer_state.pt`` when given.
        extra: more JSON-able entries for ``config.json``.
    """
    from safetensors.torch import save_file

    from geometry.io.atomic import atomic_directory
    from geometry.io.jsonio import dumps_json

    record = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind,
              "config": config, "step": int(step), "elapsed_s": float(elapsed_s),
              **(extra or {})}
    with atomic_directory(out) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        if optimizer is not None or history is not None:
            torch.save({"optimizer": optimizer.state_dict() if optimizer is not None else None,
                        "history": history or []}, tmp / "trainer_state.pt")
        (tmp / "config.json").write_text(dumps_json(record) + "\n")
        if history:
            (tmp / "history.json").write_text(dumps_json(history) + "\n")
            plot_history(history, tmp / "loss.png", title=kind)


def check_checkpoint_out(out: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a training ``--out`` that would lose something: a file, a
    folder that already holds a checkpoint (without ``--resume`` or ``--overwrite``) or a
    non-empty folder that is not a checkpoint. With ``resume`` the loop itself checks the
    checkpoint (kind and configuration)."""
    from geometry.io.atomic import check_output_folder

    out = Path(out)
    check_output_folder(out)
    if resume or not out.is_dir():
        return
    if (out / "config.json").is_file():
        if not overwrite:
            raise UserError(f"{out} already holds a checkpoint; pass --resume to continue "
                            "it, --overwrite to replace it, or choose a new --out.")
    elif any(out.iterdir()):
        raise UserError(f"{out} is a non-empty folder that is not a checkpoint; choose a "
                        "new --out.")


def _a(kind: str) -> str:
    """``kind`` with its indefinite article (``an aden``, ``a sparp``)."""
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def read_checkpoint_config(folder: str | os.PathLike, kind: str,
                           command: str | None = None) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder of model ``kind``, checked.

    Args:
        folder: the checkpoint folder.
        kind: the model it must hold.
        command: the command that writes such checkpoints, for the message
            (e.g. ``"pose aden train"``).

    Raises:
        UserError: not a checkpoint folder, unreadable, another model's, another version.
    """
    folder = Path(folder)
    writer = f"the folder written by '{command}'" if command else f"{_a(kind)} checkpoint folder"
    path = folder / "config.json"
    if not path.is_file() or not (folder / "model.safetensors").is_file():
        raise UserError(f"{folder} is not {_a(kind)} checkpoint (config.json and "
                        f"model.safetensors expected); give {writer}.")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path} ({err}); give {writer}.") from None
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a sparseview checkpoint config; give {writer}.")
    if record.get("kind") != kind:
        raise UserError(f"{folder} holds {_a(str(record.get('kind')))} model, not "
                        f"{_a(kind)} model; give {writer}.")
    if record.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path} has checkpoint version {record.get('version')}, this version "
                        f"reads {CHECKPOINT_VERSION}; retrain the model.")
    if not isinstance(record.get("config"), dict):
        raise UserError(f"{path} has no model configuration; give {writer}.")
    return record


def load_weights(folder: str | os.PathLike, model: nn.Module, kind: str,
                 command: str | None = None) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (built from its config); returns the
    checked ``config.json``.

    Raises:
        UserError: as :func:`read_checkpoint_config`, or weights that do not fit ``model``.
    """
    from geometry.io.checkpoints import load_safetensors

    record = read_checkpoint_config(folder, kind, command)
    folder = Path(folder)
    weights = load_safetensors(folder / "model.safetensors", f"{_a(kind)} weights file",
                               "retrain or restore the checkpoint")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"the weights in {folder} do not fit its {kind} configuration "
                        f"({first}); retrain or restore the checkpoint.") from None
    return record


def _load_trainer_state(folder: Path, kind: str) -> dict[str, Any]:
    from geometry.io.checkpoints import torch_load_weights_only

    path = folder / "trainer_state.pt"
    hint = "train again without --resume"
    if not path.is_file():
        raise UserError(f"{folder} has no trainer state to resume from; {hint}.")
    state = torch_load_weights_only(path, f"{_a(kind)} trainer state file", hint)
    if not isinstance(state, dict) or "history" not in state:
        raise UserError(f"{path} is not {_a(kind)} trainer state file; {hint}.")
    return state


def plot_history(history: list[dict[str, float]], path: str | os.PathLike,
                 title: str | None = None) -> None:
    """Draw every logged term against the step (log scale where all values are positive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for row in history for k in row if k not in ("step", "lr", "elapsed_s")},
                  key=lambda k: (k != "loss", k))
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [row["step"] for row in history]
    for key in keys:
        xs = [s for s, row in zip(steps, history, strict=True) if key in row]
        ys = [row[key] for row in history if key in row]
        ax.plot(xs, ys, label=key, linewidth=2 if key == "loss" else 1)
    if all(row[k] > 0 for row in history for k in keys if k in row):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def config_differences(stored: Any, current: Any, prefix: str = ""
                       ) -> tuple[list[tuple[str, Any]], list[tuple[str, Any, Any]]]:
    """How a checkpoint's stored configuration differs from the current one (both JSON
    values, nested dicts compared key by key).

    Returns:
        ``newer``: ``(key, current value)`` of the keys the stored configuration lacks
        (options added to the code after the checkpoint was written); ``changed``:
        ``(key, stored, current)`` of every other difference (a value changed, or a key
        that the current configuration no longer has). Keys are dotted paths.
    """
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return [], ([] if stored == current else [(prefix or "config", stored, current)])
    newer: list[tuple[str, Any]] = []
    changed: list[tuple[str, Any, Any]] = []
    for key in list(stored) + [k for k in current if k not in stored]:
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in stored:
            newer.append((path, current[key]))
        elif key not in current:
            changed.append((path, stored[key], None))
        else:
            sub_newer, sub_changed = config_differences(stored[key], current[key], path)
            newer += sub_newer
            changed += sub_changed
    return newer, changed


# ------------------------------------------------------------------------- the loop


@dataclass
class TrainLoop:
    """What :func:`train_loop` does besides the method's own batch and loss."""

    out: Path | None
    """Checkpoint folder (None: keep nothing on disk)."""
    kind: str
    """The model's name, written into the checkpoint and checked on resume/load."""
    config: dict[str, Any]
    """JSON-able configuration that rebuilds the model (checked equal on resume)."""
    steps: int
    """Optimiser steps in all."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) after this much training time, resumed time included."""
    resume: bool = False
    """Continue from the checkpoint in ``out``."""
    warmup_steps: int = 0
    """Linear warm-up of the learning rate."""
    schedule: str = "cosine"
    """``cosine`` decay to zero over the budget, or ``constant``."""
    grad_clip: float | None = 1.0
    """Clip the gradient norm to this (None: no clipping)."""
    log_every: int = 20
    """Log the loss terms (history, progress bar) every this many steps."""
    checkpoint_every_s: float = 300.0
    """Checkpoint at least this often (seconds)."""
    desc: str | None = None
    """Title of the progress bar (default: ``train <kind>``)."""
    quiet: bool = False
    """No progress bar."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More JSON-able entries for ``config.json`` (e.g. the data it was trained on)."""


@dataclass
class TrainResult:
    """How a :func:`train_loop` call ended."""

    step: int
    """Optimiser steps done in all (resumed ones included)."""
    history: list[dict[str, float]]
    """One row per logged step: ``step``, ``lr``, ``elapsed_s`` and the loss terms."""
    stopped_by: str
    """``steps`` (the budget of steps was done) or ``time`` (``max_minutes``)."""
    elapsed_s: float
    """Training time in all, resumed time included."""


def _lr_factor(step: int, progress: float, warmup: int, schedule: str) -> float:
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return warm
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_loop(model: nn.Module, optimizer: torch.optim.Optimizer,
               batch_fn: Callable[[int, int, int], Any],
               loss_fn: Callable[[nn.Module, Any], dict[str, Tensor]],
               loop: TrainLoop, dist: DistInfo | None = None) -> TrainResult:
    """Train ``model`` (see the module docstring); leaves it in eval mode.

    Args:
        model: on its device already; in data-parallel runs every rank builds the same one
            (rank 0's initial parameters are broadcast).
        optimizer: over ``model``'s parameters; its groups' ``lr`` are the peak rates.
        batch_fn: ``(step, rank, world_size) -> batch`` (each rank its own share).
        loss_fn: ``(model, batch) -> {"loss": total, other terms...}``, scalar tensors.
        loop: budget, schedule, checkpointing (:class:`TrainLoop`).
        dist: from :func:`ddp_setup` (default: one process).

    Raises:
        UserError: ``resume`` without a checkpoint of this kind and configuration.
    """
    from geometry.progress import progress_bar

    if loop.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {loop.schedule!r}")
    if loop.steps < 1:
        raise UserError(f"the number of training steps ({loop.steps}) must be at least 1.")
    if loop.max_minutes is not None and loop.max_minutes <= 0:
        raise UserError(f"--max-minutes {loop.max_minutes} must be positive.")
    dist = dist or DistInfo()
    out = Path(loop.out) if loop.out is not None else None
    step, elapsed_before, history = 0, 0.0, []
    if loop.resume:
        if out is None:
            raise ValueError("resume needs an output folder")
        if not (out / "config.json").is_file():
            raise UserError(f"{out} holds no {loop.kind} checkpoint to continue; train "
                            "without --resume.")
        record = load_weights(out, model, loop.kind)
        newer, changed = config_differences(record["config"], json.loads(json.dumps(loop.config)))
        if changed:
            key, was, now = changed[0]
            raise UserError(f"the checkpoint in {out} has another {loop.kind} configuration "
                            f"({key}: {json.dumps(was)} in the checkpoint, {json.dumps(now)} "
                            "now); resume with the same options or train into a new folder.")
        if newer and dist.rank == 0:
            print(f"note: the checkpoint in {out} predates option(s) "
                  f"{', '.join(f'{k}={json.dumps(v)}' for k, v in newer)}; resuming with these "
                  "current values")
        state = _load_trainer_state(out, loop.kind)
        if state.get("optimizer") is not None:
            try:
                optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError, RuntimeError):
                raise UserError(f"the optimiser state in {out} does not fit this model; "
                                "train again without --resume.") from None
        history = list(state["history"])
        step, elapsed_before = int(record["step"]), float(record["elapsed_s"])
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    if dist.distributed:
        _broadcast_parameters(model)

    max_s = loop.max_minutes * 60.0 if loop.max_minutes is not None else math.inf
    start = time.monotonic()
    last_ckpt = start
    stopped_by = "steps"

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - start

    def checkpoint() -> None:
        if out is not None and dist.is_main:
            model.eval()
            save_checkpoint(out, model, loop.kind, loop.config, step=step,
                            elapsed_s=elapsed(), optimizer=optimizer, history=history,
                            extra=loop.extra)
            model.train()

    model.train()
    running: dict[str, float] = {}
    count = 0
    quiet = loop.quiet or not dist.is_main
    with progress_bar(None, ["{task.fields[info]}"], quiet=quiet, counts=False) as bar:
        task = bar.add_task(loop.desc or f"train {loop.kind}", total=1000,
                            info=f"step {step}")
        try:
            first = step
            while step < loop.steps:
                # every run takes at least one step, so a checkpoint after the time limit
                # always holds this run's work
                if step > first and _any_rank(elapsed() >= max_s, dist):
                    stopped_by = "time"
                    break
                progress = max(step / loop.steps, elapsed() / max_s)
                factor = _lr_factor(step, progress, loop.warmup_steps, loop.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
                batch = batch_fn(step, dist.rank, dist.world_size)
                terms = loss_fn(model, batch)
                if "loss" not in terms:
                    raise ValueError("loss_fn must return the total under 'loss'")
                loss = terms["loss"]
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(
                        f"the {loop.kind} loss is {loss.item()} at step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if dist.distributed:
                    _average_gradients(model, dist.world_size)
                if loop.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
                optimizer.step()
                step += 1
                for key, value in terms.items():
                    running[key] = running.get(key, 0.0) + float(value.detach())
                count += 1
                if step % loop.log_every == 0 or step == loop.steps:
                    row = {"step": step, "lr": optimizer.param_groups[0]["lr"],
                           "elapsed_s": round(elapsed(), 3),
                           **{k: v / count for k, v in running.items()}}
                    history.append(row)
                    running, count = {}, 0
                    bar.update(task, completed=int(1000 * min(1.0, progress)),
                               info=f"step {step} loss {row['loss']:.4g}")
                if out is not None and time.monotonic() - last_ckpt > loop.checkpoint_every_s:
                    checkpoint()
                    last_ckpt = time.monotonic()
        except KeyboardInterrupt:
            checkpoint()
            if out is not None and dist.is_main:
                bar.stop()
                print(f"saved checkpoint {out} at step {step}; continue with --resume")
            raise
        bar.update(task, completed=1000)
    if count:
        history.append({"step": step, "lr": optimizer.param_groups[0]["lr"],
                        "elapsed_s": round(elapsed(), 3),
                        **{k: v / count for k, v in running.items()}})
    checkpoint()
    model.eval()
    return TrainResult(step=step, history=history, stopped_by=stopped_by,
                       elapsed_s=elapsed())

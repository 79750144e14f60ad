"""Losses, the training loop and checkpoints (safetensors weights + JSON config).

Losses (weights in :class:`LossWeights`), on the current and the previous frame of each
window, all in the canonical frame:

- ``rot``: L1 between predicted and true 6D local rotations of the 21 joints;
- ``root``: L1 on the pelvis's 6D orientation;
- ``trans``: L1 on the pelvis position (divided by the body scale);
- ``fk``: L1 on all 22 joint positions from FK of the scaled default skeleton (metres);
- ``track``: L1 on the head and wrist positions (the paper's hand alignment term);
- ``vel``: L1 on the joints' velocity between the two frames (m/s; smoothness).

A checkpoint folder holds ``config.json`` (model and FoV configuration, training state),
``model.safetensors`` and, for resuming, ``optimizer.safetensors``. It is replaced
atomically, so an interrupted run leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geometry.errors import UserError
from geometry.io.atomic import atomic_directory
from geometry.so3 import matrix_to_rot6d
from pose.body.egoposer.config import FovConfig, LossWeights, ModelConfig, TrainConfig
from pose.body.egoposer.data import PreparedData, sample_batch
from pose.body.egoposer.features import decode_outputs
from pose.body.egoposer.model import build_model
from pose.body.egoposer.skeleton import TRACKED_JOINTS, forward_kinematics, scaled_default_skeleton

CHECKPOINT_FORMAT = "sparseview.egoposer"
CHECKPOINT_VERSION = 1


def pose_loss(out: Tensor, batch: dict[str, Tensor], weights: LossWeights,
              fps: float) -> tuple[Tensor, dict[str, float]]:
    """Weighted training loss.

    Args:
        out: ``[B, 2, 135]`` network outputs (previous, current frame).
        batch: from :func:`pose.body.egoposer.data.sample_batch`.
        weights: loss weights.
        fps: frame rate (for velocities).

    Returns:
        ``(total, {term: value})``.
    """
    rots, root = decode_outputs(out)
    gt_rots, gt_root = batch["rots_c"], batch["root_c"]
    d6, gt_d6 = matrix_to_rot6d(rots), matrix_to_rot6d(gt_rots)
    scale = batch["scale"]
    # the default skeleton is built on the CPU: scale it there, then move it to the batch
    rest = scaled_default_skeleton(scale.cpu(), dtype=out.dtype).to(out.device)[:, None]
    # rest: [B, 1, 22, 3]
    _, joints = forward_kinematics(rots, root * scale[:, None, None], rest)
    gt_joints = batch["joints_c"]
    vel = (joints[:, 1] - joints[:, 0]) * fps
    gt_vel = (gt_joints[:, 1] - gt_joints[:, 0]) * fps
    trk = list(TRACKED_JOINTS)
    terms = {
        "rot": (d6[..., 1:, :] - gt_d6[..., 1:, :]).abs().mean(),
        "root": (d6[..., 0, :] - gt_d6[..., 0, :]).abs().mean(),
        "trans": (root - gt_root).abs().mean(),
        "fk": (joints - gt_joints).abs().mean(),
        "track": (joints[..., trk, :] - gt_joints[..., trk, :]).abs().mean(),
        "vel": (vel - gt_vel).abs().mean(),
    }
    total = sum(getattr(weights, f"w_{k}") * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}


# ----------------------------------------------------------------------------- checkpoints


def _from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    """Build a (nested) dataclass from JSON, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise UserError(f"checkpoint config '{what}' is not an object; give an EgoPoser "
                        "checkpoint folder.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise UserError(f"checkpoint config '{what}' has unknown keys {sorted(unknown)}; it "
                        "was written by another version.")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        proto = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if proto is not None and dataclasses.is_dataclass(proto):
            value = _from_dict(type(proto), value, f"{what}.{name}")
        else:
            default = f.default if proto is None else proto
            if isinstance(value, list):
                value = tuple(value)
            numeric = isinstance(default, int | float) and not isinstance(default, bool)
            if (numeric and (not isinstance(value, int | float) or isinstance(value, bool))) \
                    or (isinstance(default, str) and not isinstance(value, str)):
                raise UserError(f"checkpoint config '{what}.{name}' has the wrong type; "
                                "retrain or restore the checkpoint.")
        kwargs[name] = value
    return cls(**kwargs)


def save_checkpoint(out_dir: Path, model: nn.Module, model_cfg: ModelConfig, fov: FovConfig,
                    state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write a checkpoint folder atomically (see the module docstring)."""
    from safetensors.torch import save_file

    config = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
              "model": asdict(model_cfg), "fov": asdict(fov), "state": state}
    with atomic_directory(out_dir) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        if optimizer is not None:
            opt = optimizer.state_dict()
            tensors: dict[str, Tensor] = {}
            for pid, st in opt["state"].items():
                for key, val in st.items():
                    tensors[f"{pid}.{key}"] = torch.as_tensor(val).cpu().contiguous()
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            config["optimizer_param_groups"] = opt["param_groups"]
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")


_RESTORE_HINT = "restore the folder written by 'pose egoposer train' or retrain the model."


def read_checkpoint_config(ckpt_dir: Path) -> dict[str, Any]:
    """The checkpoint's ``config.json``, checked."""
    path = Path(ckpt_dir) / "config.json"
    if not path.is_file() or not (Path(ckpt_dir) / "model.safetensors").is_file():
        raise UserError(f"{ckpt_dir} is not an EgoPoser checkpoint (config.json and "
                        "model.safetensors expected); give the folder written by "
                        "'pose egoposer train'.")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path} ({err}); retrain or restore the checkpoint.") \
            from None
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an EgoPoser checkpoint config; give the folder "
                        "written by 'pose egoposer train'.")
    if config.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path} has checkpoint version {config.get('version')}, this "
                        f"version reads {CHECKPOINT_VERSION}; retrain the model.")
    return config


def load_checkpoint(ckpt_dir: Path, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ModelConfig, FovConfig, dict[str, Any]]:
    """Load a checkpoint: ``(model in eval mode on device, model config, FoV config, full
    config)``."""
    from geometry.io.checkpoints import load_safetensors

    config = read_checkpoint_config(ckpt_dir)
    model_cfg = _from_dict(ModelConfig, config.get("model", {}), "model")
    fov = _from_dict(FovConfig, config.get("fov", {}), "fov")
    model = build_model(model_cfg)
    weights = load_safetensors(Path(ckpt_dir) / "model.safetensors",
                               "an EgoPoser weights file", _RESTORE_HINT)
    try:
        model.load_state_dict(weights)
    except (OSError, RuntimeError) as err:
        raise UserError(f"the weights in {ckpt_dir} do not match its config ({err}); "
                        "retrain or restore the checkpoint.") from None
    model.to(device).eval()
    return model, model_cfg, fov, config


def _load_optimizer(ckpt_dir: Path, optimizer: torch.optim.Optimizer,
                    config: dict[str, Any]) -> None:
    from geometry.io.checkpoints import load_safetensors

    path = Path(ckpt_dir) / "optimizer.safetensors"
    hint = "train again without --resume."
    if not path.is_file() or "optimizer_param_groups" not in config:
        raise UserError(f"{ckpt_dir} has no optimizer state to resume from; {hint}")
    tensors = load_safetensors(path, "an EgoPoser optimizer state file", hint)
    try:
        state: dict[int, dict[str, Tensor]] = {}
        for key, val in tensors.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = val
        optimizer.load_state_dict({"state": state,
                                   "param_groups": config["optimizer_param_groups"]})
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError):
        raise UserError(f"the optimizer state in {ckpt_dir} does not fit this model; "
                        f"{hint}") from None


# ----------------------------------------------------------------------------- training


def _lr_factor(step: int, progress: float, warmup: int) -> float:
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(data: PreparedData, model_cfg: ModelConfig, cfg: TrainConfig, fov: FovConfig,
          out_dir: Path | None = None, resume: bool = False, show_progress: bool = True,
          extra_state: dict[str, Any] | None = None,
          device: str | torch.device = "cpu") -> tuple[nn.Module, list[float]]:
    """Train a network on ``device``; returns it (eval mode, on ``device``) and the loss of
    every step.

    With ``out_dir``, saves resumable checkpoints every ``checkpoint_every_s`` seconds, on
    Ctrl-C (then re-raises) and at the end (weights and optimiser state moved to the CPU).
    ``resume`` continues from ``out_dir``. The batches are drawn on the CPU (one generator:
    the same data on every device) and moved to ``device``.
    """
    from geometry.progress import progress_bar

    if abs(data.fps - model_cfg.fps) > 1e-6:
        raise ValueError("data and model frame rates differ")
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed_before = 0, 0.0
    if resume:
        if out_dir is None:
            raise ValueError("resume needs out_dir")
        loaded, loaded_cfg, _, config = load_checkpoint(out_dir)
        if loaded_cfg != model_cfg:
            raise UserError(f"the checkpoint in {out_dir} has a different model configuration;"
                            " resume with the same options or train into a new folder.")
        model.load_state_dict(loaded.state_dict())
        _load_optimizer(out_dir, optimizer, config)
        step = int(config["state"].get("step", 0))
        elapsed_before = float(config["state"].get("elapsed_s", 0.0))
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    max_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    losses: list[float] = []
    model.train()
    start = time.monotonic()
    last_ckpt = start

    def state() -> dict[str, Any]:
        return {"step": step, "elapsed_s": elapsed_before + time.monotonic() - start,
                "train": asdict(cfg), "last_loss": losses[-1] if losses else None,
                **(extra_state or {})}

    def checkpoint() -> None:
        if out_dir is not None:
            model.eval()
            save_checkpoint(out_dir, model, model_cfg, fov, state(), optimizer)
            model.train()

    # The bar shows the fraction of the budget (steps or time, whichever ends first), in
    # thousandths: no M/N count.
    with progress_bar(None, ["{task.fields[info]}"], quiet=not show_progress,
                      counts=False) as bar:
        task = bar.add_task(f"train {model_cfg.kind}", total=1000, info=f"step {step}")
        try:
            while step < cfg.steps:
                elapsed = elapsed_before + time.monotonic() - start
                if elapsed >= max_s:
                    break
                progress = max(step / cfg.steps, elapsed / max_s)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * _lr_factor(step, progress, cfg.warmup_steps)
                batch = sample_batch(data, cfg.batch_size, model_cfg.frame_offsets(),
                                     cfg.visibility, gen)
                batch = {k: v.to(device) for k, v in batch.items()}
                out = model(batch["features"])
                loss, terms = pose_loss(out, batch, cfg.loss, data.fps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                step += 1
                losses.append(loss.item())
                if step % 20 == 0 or step == cfg.steps:
                    bar.update(task, completed=int(1000 * min(1.0, progress)),
                               info=f"step {step} loss {losses[-1]:.4f} "
                                    f"fk {terms['fk'] * 100:.1f} cm")
                if out_dir is not None and time.monotonic() - last_ckpt > cfg.checkpoint_every_s:
                    checkpoint()
                    last_ckpt = time.monotonic()
        except KeyboardInterrupt:
            checkpoint()
            if out_dir is not None:
                bar.stop()  # the bar is on stderr; this line stays on stdout, under it
                print(f"saved checkpoint {out_dir} at step {step}; continue with --resume")
            raise
    checkpoint()
    model.eval()
    return model, losses

"""Losses, the training loop and checkpoints (safetensors weights + JSON config).

Losses (weights in :class:`LossWeights`), on the current and the previous frame of each
window, all in the canonical frame:

- ``rot``: L1 between predicted and true 6D local rotations of the 21 joints;
- ``root``: L1 on the pelvis's 6D orientation;
- ``trans``: L1 on the pelvis position (divided by the body scale);
- ``fk``: L1 on all 22 joint positions from FK of the scaled default skeleton (metres);
- ``track``: L1 on the head and wrist positions (the paper's hand alignment term);
- ``vel``: L1 on the joints' velocity between the two frames (m/s; smoothness).

Training runs :func:`geometry.training.train_loop`: one process on a CPU or GPU, or one
process per rank under ``torchrun`` (gloo on the CPU, NCCL on GPUs; every rank draws its
own batches of ``batch_size`` windows). The checkpoint folder is the suite's (kind
``egoposer``): ``config.json`` (the model and FoV configuration, the training options and
data, step, elapsed time), ``model.safetensors``, and ``trainer_state.pt``, ``history.json``
and ``loss.png`` for resuming and the record. It is replaced atomically, so an interrupted
run leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geometry.errors import UserError
from geometry.so3 import matrix_to_rot6d
from pose.body.egoposer.config import FovConfig, LossWeights, ModelConfig, TrainConfig
from pose.body.egoposer.data import PreparedData, sample_batch
from pose.body.egoposer.features import decode_outputs
from pose.body.egoposer.model import build_model
from pose.body.egoposer.skeleton import TRACKED_JOINTS, forward_kinematics, scaled_default_skeleton

KIND = "egoposer"
COMMAND = "pose egoposer train"


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
    rest = scaled_default_skeleton(scale, dtype=out.dtype)[:, None]
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


def checkpoint_config(model_cfg: ModelConfig, fov: FovConfig, cfg: TrainConfig | None = None,
                      data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config`` of an EgoPoser checkpoint: what rebuilds the model and its inputs, and
    what a resumed run must share (the training options but the step and time budgets and
    the checkpoint interval; the data)."""
    config: dict[str, Any] = {"model": asdict(model_cfg), "fov": asdict(fov)}
    if cfg is not None:
        config["train"] = {k: v for k, v in asdict(cfg).items()
                           if k not in ("steps", "max_minutes", "checkpoint_every_s")}
    if data is not None:
        config["data"] = data
    return config


def save_model(out_dir: Path, model: nn.Module, model_cfg: ModelConfig, fov: FovConfig,
               extra: dict[str, Any] | None = None) -> None:
    """Write a trained network as a checkpoint folder (no optimiser state: not resumable)."""
    from geometry.training import save_checkpoint

    save_checkpoint(out_dir, model, KIND, checkpoint_config(model_cfg, fov), extra=extra)


def load_checkpoint(ckpt_dir: Path, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ModelConfig, FovConfig, dict[str, Any]]:
    """Load a checkpoint: ``(model in eval mode on device, model config, FoV config, the
    checked config.json)``."""
    from geometry.training import load_weights, read_checkpoint_config

    record = read_checkpoint_config(ckpt_dir, KIND, COMMAND)
    model_cfg = _from_dict(ModelConfig, record["config"].get("model", {}), "model")
    fov = _from_dict(FovConfig, record["config"].get("fov", {}), "fov")
    model = build_model(model_cfg)
    load_weights(ckpt_dir, model, KIND, COMMAND)
    model.to(device).eval()
    return model, model_cfg, fov, record


# ----------------------------------------------------------------------------- training


def make_batch_fn(data: PreparedData, model_cfg: ModelConfig, cfg: TrainConfig,
                  device: str | torch.device = "cpu"):
    """``batch_fn(step, rank, world_size)``: ``cfg.batch_size`` windows drawn on the CPU by a
    generator seeded by (seed, step, rank), so that a resumed run draws what an
    uninterrupted one would and every rank its own; moved to ``device``."""
    offsets = model_cfg.frame_offsets()

    def batch_fn(step: int, rank: int, world_size: int) -> dict[str, Tensor]:
        seed = ((cfg.seed * 1_000_003 + step) * 1_009 + rank) * 1_013 + world_size
        gen = torch.Generator().manual_seed(seed % (2**63))
        batch = sample_batch(data, cfg.batch_size, offsets, cfg.visibility, gen)
        return {k: v.to(device) for k, v in batch.items()}

    return batch_fn


def train(data: PreparedData, model_cfg: ModelConfig, cfg: TrainConfig, fov: FovConfig,
          out_dir: Path | None = None, resume: bool = False, show_progress: bool = True,
          data_source: dict[str, Any] | None = None, device: str | torch.device = "cpu",
          dist=None):
    """Train a network; returns ``(model in eval mode, TrainResult)``.

    With ``out_dir``, saves resumable checkpoints every ``checkpoint_every_s`` seconds, on
    Ctrl-C (then re-raises) and at the end; ``resume`` continues from ``out_dir`` (refused
    for another configuration or data). ``dist``: from :func:`geometry.training.ddp_setup`
    (its device then replaces ``device``); default one process.
    """
    from geometry.training import DistInfo, TrainLoop, train_loop

    if abs(data.fps - model_cfg.fps) > 1e-6:
        raise ValueError("data and model frame rates differ")
    dist = dist or DistInfo(device=torch.device(device))
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(dist.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss_fn(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        total, terms = pose_loss(net(batch["features"]), batch, cfg.loss, data.fps)
        return {"loss": total, **{k: torch.tensor(v) for k, v in terms.items()}}

    loop = TrainLoop(out=out_dir, kind=KIND,
                     config=checkpoint_config(model_cfg, fov, cfg, data_source),
                     steps=cfg.steps, max_minutes=cfg.max_minutes, resume=resume,
                     warmup_steps=cfg.warmup_steps, grad_clip=cfg.grad_clip,
                     checkpoint_every_s=cfg.checkpoint_every_s,
                     desc=f"train {model_cfg.kind}", quiet=not show_progress,
                     extra={"train_options": asdict(cfg)})
    result = train_loop(model, optimizer, make_batch_fn(data, model_cfg, cfg, dist.device),
                        loss_fn, loop, dist=dist)
    return model, result

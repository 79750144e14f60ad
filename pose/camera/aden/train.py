"""``pose aden train``: ADen (or a baseline) on synthetic object sequences or CO3D.

Runs :func:`geometry.training.train_loop` (single process, or one process per rank under
``torchrun``: gloo on the CPU, NCCL on GPUs; every rank draws its own batches). The
checkpoint folder holds ``model.safetensors``, ``config.json`` (kind ``aden``; the model,
training and data configs), ``trainer_state.pt`` (``--resume``), ``history.json`` and
``loss.png``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from geometry.errors import UserError
from geometry.training import check_checkpoint_out
from pose.camera.aden.config import AdenConfig, AdenTrainConfig, SynthData
from pose.camera.aden.data import PoseSequence, batch_from, co3d_sequences, synthetic_sequences
from pose.camera.aden.model import AdenNet

__all__ = ["KIND", "build_model", "load_model", "make_batch_fn", "run_train"]

KIND = "aden"


def build_model(config: AdenConfig, seed: int = 0) -> AdenNet:
    """A freshly initialised network (deterministic for a seed)."""
    torch.manual_seed(seed)
    return AdenNet(config)


def _model_config(saved: dict) -> AdenConfig:
    saved = saved.get("config", saved) if "kind" in saved else saved
    cfg = AdenConfig.from_dict(saved.get("model", saved))
    cfg.backbone_weights = None  # the checkpoint holds the encoder already
    return cfg


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> AdenNet:
    """The network of a ``pose aden train`` checkpoint folder, in eval mode.

    Raises:
        UserError: the folder is not a checkpoint, or another model's.
    """
    from geometry.training import load_weights, read_checkpoint_config

    cfg = _model_config(read_checkpoint_config(Path(checkpoint), kind=KIND))
    model = AdenNet(cfg)
    load_weights(Path(checkpoint), model, kind=KIND)
    return model.to(device).eval()


def make_batch_fn(sequences: list[PoseSequence], train: AdenTrainConfig,
                  device: torch.device | str = "cpu"):
    """``batch_fn(step, rank, world_size)``: a batch drawn from a generator seeded by
    (seed, step, rank), so that a resumed run draws what an uninterrupted one would; the
    view count is drawn per step, the same on every rank."""
    lo, hi = train.view_range()
    hi = min(hi, min(len(s.images) for s in sequences))
    lo = min(lo, hi)

    def batch_fn(step: int, rank: int, world_size: int) -> dict:
        views = int(np.random.default_rng([train.seed, step]).integers(lo, hi + 1))
        rng = np.random.default_rng([train.seed, step, rank, world_size])
        batch = batch_from(sequences, train.batch, views, rng, train.mirror)
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    return batch_fn


def run_train(out: Path, synthetic: bool, co3d: Path | None, model: AdenConfig,
              train: AdenTrainConfig, synth: SynthData, max_minutes: float | None = None,
              resume: bool = False, overwrite: bool = False, quiet: bool = False,
              device: str | None = "cpu"):
    """Train and write the checkpoint folder ``out``; returns the
    :class:`geometry.training.TrainResult`. With ``resume`` the options must be those of
    the checkpoint (the loop refuses others)."""
    from geometry.training import ddp_cleanup, ddp_setup

    if synthetic == (co3d is not None):
        raise UserError("give exactly one of --synthetic and --co3d DIR.")
    try:
        lo, hi = train.view_range()
    except ValueError:
        raise UserError(f"--views {train.views} is not a view range such as 2-8 (at least "
                        "2 views).") from None
    if synthetic and synth.frames < hi:
        raise UserError(f"--synth.frames {synth.frames} is below the most views per "
                        f"sequence ({hi}); raise it or lower --views.")
    check_checkpoint_out(Path(out), resume, overwrite)
    dist = ddp_setup(device)
    try:
        return _train(out, synthetic, co3d, model, train, synth, max_minutes, resume, quiet,
                      dist, min_views=lo)
    finally:
        ddp_cleanup()


def _train(out: Path, synthetic: bool, co3d: Path | None, model: AdenConfig,
           train: AdenTrainConfig, synth: SynthData, max_minutes: float | None, resume: bool,
           quiet: bool, dist, min_views: int):
    """:func:`run_train` after its checks, inside the process group."""
    from geometry.progress import log_stage
    from geometry.training import TrainLoop, train_loop

    if synthetic:
        log_stage(f"rendering {synth.sequences} object sequences of {synth.frames} views…",
                  quiet=quiet or not dist.is_main)
        sequences = synthetic_sequences(
            synth.sequences, synth.frames, model.image_size, synth.seed, synth.render_size,
            synth.supersample, synth.cache if dist.is_main else None, synth.workers,
            synth.background, quiet=quiet or not dist.is_main)
    else:
        sequences = co3d_sequences(co3d, model.image_size, min_views=min_views)
    net = build_model(model, train.seed).to(dist.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=train.lr,
                                  weight_decay=train.weight_decay)
    # what a resumed run must share (the step budget, logging and checkpointing may change)
    fixed = {k: v for k, v in asdict(train).items()
             if k not in ("steps", "log_every", "checkpoint_every_s")}
    config = {"model": model.to_dict(), "train": fixed,
              "data": ({k: v for k, v in asdict(synth).items() if k not in ("cache", "workers")}
                       if synthetic else {"co3d": str(co3d)})}
    loop = TrainLoop(out=Path(out), kind=KIND, config=config, steps=train.steps,
                     max_minutes=max_minutes, resume=resume,
                     checkpoint_every_s=train.checkpoint_every_s, log_every=train.log_every,
                     warmup_steps=train.warmup_steps, grad_clip=train.grad_clip,
                     desc=f"ADen ({model.mode})", quiet=quiet,
                     extra={"train_options": asdict(train)})
    return train_loop(net, optimizer, make_batch_fn(sequences, train, dist.device),
                      lambda m, batch: m(batch), loop, dist=dist)

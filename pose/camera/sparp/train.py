"""``pose sparp-train``: fine-tune the small SpaRP model on generated object sequences.

Runs :func:`geometry.training.train_loop` (one process, or one per rank under ``torchrun``:
gloo on the CPU, NCCL on GPUs; every rank draws its own batches). The checkpoint folder holds
``model.safetensors``, ``config.json`` (kind ``sparp``: the model, training and data
configs), ``trainer_state.pt`` (``--resume``), ``history.json`` and ``loss.png``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from geometry.errors import UserError
from geometry.training import check_checkpoint_out
from pose.camera.sparp.config import SparpData, SparpTrainConfig
from pose.camera.sparp.data import make_batch, render_examples
from pose.camera.sparp.model import SparpModel, SparpModelConfig

__all__ = ["KIND", "SparpTrainConfig", "build_model", "load_model", "run_train"]

KIND = "sparp"
COMMAND = "pose sparp-train"


def build_model(config: SparpModelConfig, seed: int = 0) -> SparpModel:
    """A freshly initialised model (deterministic for a seed)."""
    torch.manual_seed(seed)
    return SparpModel(config)


def load_model(checkpoint: str | Path,
               device: str | torch.device = "cpu") -> tuple[SparpModel, dict]:
    """The model of a ``pose sparp-train`` checkpoint folder (eval mode, on ``device``) and
    its record.

    Raises:
        UserError: not a checkpoint folder, another model's, weights that do not fit.
    """
    from geometry.training import load_weights, read_checkpoint_config

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise UserError(f"--checkpoint {checkpoint} does not exist; give the folder written "
                        f"by '{COMMAND}'.")
    record = read_checkpoint_config(checkpoint, KIND, COMMAND)
    try:
        cfg = SparpModelConfig.from_dict(record["config"]["model"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{checkpoint}/config.json has no valid SpaRP model configuration; "
                        f"give the folder written by '{COMMAND}'.") from None
    model = SparpModel(cfg)
    load_weights(checkpoint, model, KIND, COMMAND)
    return model.to(device).eval(), record


def run_train(out: Path, model: SparpModelConfig, train: SparpTrainConfig, data: SparpData,
              max_minutes: float | None = None, resume: bool = False, overwrite: bool = False,
              quiet: bool = False, cache: Path | None = None, device: str | None = "cpu"):
    """Render the data (or read it from the ``cache`` .npz), train on ``device`` (``cpu``,
    ``cuda``, ``cuda:N``; under ``torchrun`` each process takes the GPU of its local rank),
    write the checkpoint folder ``out``; returns the
    :class:`geometry.training.TrainResult`."""
    from geometry.progress import log_stage
    from geometry.training import TrainLoop, ddp_cleanup, ddp_setup, train_loop

    views = train.view_range()
    if data.frames < views[1]:
        raise UserError(f"--data.frames {data.frames} is below the most input views "
                        f"({views[1]}); raise it or lower --views.")
    if data.sequences < 1 or train.batch < 1:
        raise UserError("--data.sequences and --batch must be at least 1.")
    if not 0.0 <= train.p_nocs <= 1.0:
        raise UserError(f"--p-nocs {train.p_nocs} is not a share; give 0 to 1.")
    if model.tile < 8 or model.tile % 8:
        raise UserError(f"--tile {model.tile} must be a multiple of 8 (at least 8).")
    check_checkpoint_out(Path(out), resume, overwrite)
    dist = ddp_setup(device)
    try:
        main_quiet = quiet or not dist.is_main
        log_stage(f"rendering {data.sequences} objects ({data.frames} photos + 6 novel views, "
                  f"{model.tile} px)…", main_quiet)
        examples = render_examples(data, model.tile, quiet=main_quiet,
                                   cache=cache if dist.is_main else None)
        net = build_model(model, train.seed).to(dist.device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=train.lr,
                                      weight_decay=train.weight_decay)
        fixed = {k: v for k, v in asdict(train).items()
                 if k not in ("steps", "log_every", "checkpoint_every_s")}
        config = {"model": model.to_dict(), "train": fixed, "data": asdict(data)}

        def batch_fn(step: int, rank: int, world_size: int) -> dict:
            rng = np.random.default_rng([train.seed, step, rank, world_size])
            batch = make_batch(examples, train.batch, views, train.p_nocs, rng)
            batch = {k: v.to(dist.device) for k, v in batch.items()}
            # the timesteps and noise of this step (a resumed run draws the same; drawn on
            # the CPU, so that every device trains on the same noise)
            batch["noise_seed"] = int(rng.integers(1 << 62))
            return batch

        def loss_fn(m: SparpModel, batch: dict) -> dict:
            g = torch.Generator().manual_seed(batch["noise_seed"])
            return m.loss(batch["cond"], batch["target"], batch["domain"], generator=g)

        loop = TrainLoop(out=Path(out), kind=KIND, config=config, steps=train.steps,
                         max_minutes=max_minutes, resume=resume,
                         checkpoint_every_s=train.checkpoint_every_s,
                         log_every=train.log_every, warmup_steps=train.warmup_steps,
                         grad_clip=train.grad_clip, desc="SpaRP", quiet=quiet,
                         extra={"train_options": asdict(train)})
        result = train_loop(net, optimizer, batch_fn, loss_fn, loop, dist=dist)
    finally:
        ddp_cleanup()
    last = result.history[-1] if result.history else {}
    log_stage(f"trained {result.step} steps in {result.elapsed_s / 60:.1f} min (stopped by "
              f"{result.stopped_by}; last loss {last.get('loss', float('nan')):.4g}); "
              f"wrote {out}", quiet or not dist.is_main)
    return result

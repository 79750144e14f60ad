"""Training of ShAPO's priors (``pose shapo train-priors``) through the shared loop.

Runs :func:`geometry.training.train_loop` (one process, or one per rank under
``torchrun``: every rank generates the same instances, draws its own batches, and the
gradients are averaged). The checkpoint folder holds the decoders and every training
instance's codes (``kind = "shapo_priors"``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from geometry.errors import UserError
from pose.object.shapo.priors import (
    KIND,
    PriorConfig,
    PriorModel,
    PriorTrainConfig,
    build_model,
    make_batch_fn,
    make_prior_data,
)

COMMAND = "pose shapo train-priors"

__all__ = ["load_priors", "run_train_priors"]


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    from geometry.io.atomic import check_output_folder

    check_output_folder(out)
    if resume or not out.exists():
        return
    if (out / "config.json").is_file():
        if not overwrite:
            raise UserError(f"{out} already holds a checkpoint; pass --resume to continue "
                            "it, --overwrite to replace it, or choose a new --out.")
    elif any(out.iterdir()):
        raise UserError(f"{out} is a non-empty folder that is not a checkpoint; choose a "
                        "new --out.")


def run_train_priors(out: Path, synthetic: bool, model: PriorConfig, train: PriorTrainConfig,
                     max_minutes: float | None = None, resume: bool = False,
                     overwrite: bool = False, quiet: bool = False):
    """Train the priors into the checkpoint folder ``out``; returns the
    :class:`geometry.training.TrainResult`."""
    from geometry.progress import log_stage
    from geometry.training import TrainLoop, ddp_setup, train_loop

    if not synthetic:
        raise UserError("give --synthetic: the priors train on the generated categories "
                        "(training on NOCS's object models is not supported yet).")
    if train.instances_per_category < 1 or train.sdf_samples < 10 or train.color_samples < 1:
        raise UserError("--instances-per-category, --sdf-samples and --color-samples must be "
                        "at least 1, 10 and 1.")
    _check_out(Path(out), resume, overwrite)
    dist = ddp_setup()
    log_stage(f"sampling {6 * train.instances_per_category} generated shapes…",
              quiet=quiet or not dist.is_main)
    data = make_prior_data(train, quiet=quiet or not dist.is_main)
    net = build_model(model, data.instance_class, train.seed).to(dist.device)
    decoders = [p for n, p in net.named_parameters() if not n.endswith("_codes.weight")]
    codes = [net.shape_codes.weight, net.app_codes.weight]
    optimizer = torch.optim.Adam([{"params": decoders, "lr": train.lr},
                                  {"params": codes, "lr": train.code_lr}])
    config = {"model": model.to_dict(), "train": asdict(train),
              "num_instances": len(data.instance_class)}
    loop = TrainLoop(out=Path(out), kind=KIND, config=config, steps=train.steps,
                     max_minutes=max_minutes, resume=resume,
                     checkpoint_every_s=train.checkpoint_every_s, log_every=train.log_every,
                     warmup_steps=train.warmup_steps, grad_clip=None,
                     desc="ShAPO priors", quiet=quiet)
    return train_loop(net, optimizer, make_batch_fn(data, train, dist.device),
                      lambda m, batch: m.losses(batch, train.code_reg), loop, dist=dist)


def load_priors(folder: str | Path) -> PriorModel:
    """The priors in a checkpoint folder written by ``pose shapo train-priors`` (eval mode).

    Raises:
        UserError: not such a checkpoint (one sentence).
    """
    from geometry.training import load_weights, read_checkpoint_config

    record = read_checkpoint_config(folder, KIND, COMMAND)
    try:
        config = PriorConfig(**record["config"]["model"])
        num = int(record["config"]["num_instances"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder}/config.json does not describe ShAPO priors; give the "
                        f"folder written by '{COMMAND}'.") from None
    net = PriorModel(config, torch.zeros(num, dtype=torch.long))
    load_weights(folder, net, KIND, COMMAND)
    return net.eval()

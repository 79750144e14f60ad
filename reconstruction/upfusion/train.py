"""Training UpSRT (``recon upsrt train``) on the shared loop, and its held-out evaluation
(``recon upsrt eval``): PSNR of rendered held-out views against 1, 3, 6 input views.

Training follows the official recipe at a small scale: a batch of view sets with one
number of inputs per batch (drawn uniformly from ``--views``), random query pixels from any
view of each sequence (``--foreground-queries`` of them on the object where masks exist),
MSE on the colours (:func:`upsrt_loss`). Each rank draws its own
batches from generators seeded by ``(seed, step, rank)`` (and the view count from
``(seed, step)``, the same on every rank), so runs are reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from geometry.errors import UserError
from reconstruction.upfusion.data import Batch, ObjectSequence, sample_batch, view_set
from reconstruction.upfusion.upsrt import UpSRT, UpSRTConfig

KIND = "upsrt"
COMMAND = "recon upsrt train"


@dataclass
class UpSRTTrainOptions:
    """Options of UpSRT training (the data and the optimisation)."""

    steps: int = 20000
    """Optimiser steps (--max-minutes may stop earlier)."""
    batch_size: int = 8
    """View sets per step (per process under torchrun)."""
    queries: int = 512
    """Query rays per view set."""
    lr: float = 1e-3
    """Peak learning rate (AdamW; warm-up then cosine decay)."""
    weight_decay: float = 0.01
    warmup_steps: int = 100
    views: str = "1-6"
    """Input views per set: a range ``MIN-MAX`` (one count per batch, uniform) or one
    number."""
    foreground_queries: float = 0.2
    """Share of the query pixels drawn on the object (sequences with masks: --synthetic);
    the rest uniform over the photo."""
    scenes: int = 160
    """Generated object sequences to train on (--synthetic)."""
    frames: int = 24
    """Views per sequence."""
    size: int = 64
    """Photo side (pixels)."""
    seed: int = 0


def parse_views(text: str) -> tuple[int, int]:
    """``"1-6"`` -> ``(1, 6)``; ``"3"`` -> ``(3, 3)``."""
    try:
        parts = [int(p) for p in str(text).split("-")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise UserError(f"--views {text} is not a view count or range; give e.g. 1-6 or 3.")
    return parts[0], parts[1]


def upsrt_loss(model: UpSRT, batch: Batch) -> dict[str, Tensor]:
    """MSE of the predicted colours of the query rays; PSNR logged."""
    pred = model(batch.images, batch.K, batch.image_size, batch.rays, batch.T_ref_world,
                 batch.T_world_cam)
    mse = torch.mean((pred - batch.colours) ** 2)
    return {"loss": mse, "psnr": -10.0 * torch.log10(mse.detach().clamp_min(1e-10))}


def make_batch_fn(sequences: list[ObjectSequence], options: UpSRTTrainOptions, device):
    lo, hi = parse_views(options.views)

    def batch_fn(step: int, rank: int, world_size: int) -> Batch:
        views_gen = torch.Generator().manual_seed(options.seed * 1_000_003 + step)
        views = int(torch.randint(lo, hi + 1, (1,), generator=views_gen))
        gen = torch.Generator().manual_seed((options.seed * 1_000_003 + step) * 64 + rank)
        return sample_batch(sequences, options.batch_size, views, options.queries,
                            gen, options.foreground_queries).to(device)

    return batch_fn


def load_sequences(synthetic: bool, co3d: Path | None, options: UpSRTTrainOptions,
                   quiet: bool = False) -> list[ObjectSequence]:
    """The training sequences of ``--synthetic`` or ``--co3d DIR``."""
    from reconstruction.upfusion.data import co3d_sequences, synthetic_sequences

    if synthetic == (co3d is not None):
        raise UserError("give exactly one of --synthetic or --co3d DIR.")
    if co3d is not None:
        return co3d_sequences(co3d, options.size, options.frames)
    return synthetic_sequences(range(options.seed, options.seed + options.scenes),
                               options.frames, options.size, supersample=1, quiet=quiet)


def run_train(out: Path, synthetic: bool, co3d: Path | None, config: UpSRTConfig,
              options: UpSRTTrainOptions, max_minutes: float | None = None,
              resume: bool = False, overwrite: bool = False, device: str | None = "cpu",
              quiet: bool = False):
    """Train an UpSRT into the checkpoint folder ``out`` (see the module doc)."""
    from geometry.progress import log_stage
    from geometry.training import (
        TrainLoop,
        check_checkpoint_out,
        ddp_cleanup,
        ddp_setup,
        train_loop,
    )

    parse_views(options.views)
    out = Path(out)
    check_checkpoint_out(out, resume, overwrite)
    dist = ddp_setup(device)
    try:
        torch.manual_seed(options.seed)
        sequences = load_sequences(synthetic, co3d, options, quiet or not dist.is_main)
        model = UpSRT(config).to(dist.device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
        log_stage(f"UpSRT: {sum(p.numel() for p in params) / 1e6:.2f} M trainable parameters, "
                  f"{len(sequences)} sequences, views {options.views}", quiet or not dist.is_main)
        loop = TrainLoop(out=out, kind=KIND, config=config.to_json(), steps=options.steps,
                         max_minutes=max_minutes, resume=resume,
                         warmup_steps=options.warmup_steps, grad_clip=1.0, log_every=20,
                         checkpoint_every_s=120.0, desc="train UpSRT", quiet=quiet,
                         extra={"train": dataclasses.asdict(options),
                                "data": "co3d" if co3d is not None else "synthetic"})
        result = train_loop(model, optimizer, make_batch_fn(sequences, options, dist.device),
                            upsrt_loss, loop, dist)
    finally:
        ddp_cleanup()
    return model, result


def load_upsrt(folder: Path, device: str = "cpu") -> UpSRT:
    """An UpSRT from a ``recon upsrt train`` checkpoint folder."""
    from geometry.training import load_weights, read_checkpoint_config

    record = read_checkpoint_config(folder, KIND, COMMAND)
    try:
        config = UpSRTConfig.from_json(record["config"])
    except (TypeError, ValueError) as err:
        raise UserError(f"{folder}/config.json has an invalid UpSRT configuration ({err}); "
                        f"give the folder written by '{COMMAND}'.") from None
    model = UpSRT(config)
    load_weights(folder, model, KIND, COMMAND)
    return model.to(device).eval()


# ---------------------------------------------------------------------------- evaluation


def input_indices(num_frames: int, count: int) -> list[int]:
    """Inputs of the evaluation: ``count`` of 6 evenly spaced views (view 0 first), so the
    1-, 3- and 6-view sets are nested."""
    six = [round(k * num_frames / 6) % num_frames for k in range(6)]
    order = [0, 2, 4, 1, 3, 5]  # 1 view: 0; 3 views: 0, 120, 240 deg; 6: all
    return [six[i] for i in order[:count]]


def heldout_indices(num_frames: int) -> list[int]:
    """Held-out views: every view that is none of the six input positions (18 of 24), the
    same for 1, 3 and 6 inputs. (Only the views halfway between the six positions would be
    the one set where 3 inputs are as near as 6: each 30 degrees from its nearest input.)"""
    six = set(input_indices(num_frames, 6))
    return [k for k in range(num_frames) if k not in six]


def psnr(pred: Tensor, target: Tensor) -> float:
    mse = float(torch.mean((pred.float() - target.float()) ** 2))
    return -10.0 * math.log10(max(mse, 1e-10))


@torch.no_grad()
def evaluate(model: UpSRT, sequences: list[ObjectSequence],
             view_counts: tuple[int, ...] = (1, 3, 6)) -> dict[str, float]:
    """Mean held-out PSNR per input-view count (:func:`input_indices`,
    :func:`heldout_indices`); also of the trivial prediction (all background) for scale."""
    model.eval()
    sums = {n: 0.0 for n in view_counts}
    blank = 0.0
    for seq in sequences:
        held = torch.as_tensor(heldout_indices(len(seq)))
        target = seq.images[held]
        blank += psnr(torch.ones_like(target), target)
        for n in view_counts:
            views = view_set(seq, input_indices(len(seq), n))
            pred = model.render(views, seq.cameras[held])
            sums[n] += psnr(pred.cpu(), target)
    out = {f"psnr_{n}": sums[n] / len(sequences) for n in view_counts}
    out["psnr_background"] = blank / len(sequences)
    return out


def run_eval(checkpoint: Path, synthetic: bool, co3d: Path | None, seed: int, sequences: int,
             size: int, frames: int, out: Path | None = None, quiet: bool = False
             ) -> dict[str, float]:
    """``recon upsrt eval``: held-out PSNR at 1/3/6 input views on unseen sequences."""
    from geometry.io.atomic import atomic_write_text

    model = load_upsrt(checkpoint)
    options = UpSRTTrainOptions(scenes=sequences, frames=frames, size=size, seed=seed)
    start = time.time()
    seqs = load_sequences(synthetic, co3d, options, quiet)
    metrics = evaluate(model, seqs)
    metrics["sequences"] = len(seqs)
    metrics["seconds"] = round(time.time() - start, 1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics

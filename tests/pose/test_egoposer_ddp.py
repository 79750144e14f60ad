"""``pose egoposer train`` data-parallel: one step with two CPU processes (gloo), started as
torchrun starts them, against the same step computed in one process with the gradients of
both ranks' batches averaged."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

TINY = ["--model.d-model", "16", "--model.layers", "1", "--model.heads", "2",
        "--model.ff-dim", "32", "--model.head-dim", "32", "--model.tokens", "6",
        "--model.slow-stride", "2", "--synthetic-sequences", "2", "--synth.seconds", "3",
        "--batch-size", "8", "--threads", "1", "--warmup-steps", "2", "--seed", "4"]


def test_one_ddp_step_two_cpu_processes(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from ddp_ranks import run_ranks

    from pose.body.egoposer.commands import load_motion
    from pose.body.egoposer.config import FovConfig, ModelConfig, SynthConfig, TrainConfig
    from pose.body.egoposer.data import prepare_sequences
    from pose.body.egoposer.model import build_model
    from pose.body.egoposer.train import load_checkpoint, make_batch_fn, pose_loss

    out = tmp_path / "ck"
    run_ranks([sys.executable, "-m", "pose.cli", "egoposer", "train", "--synthetic", "--out",
               str(out), "--steps", "1", "--quiet", *TINY], timeout=180)

    # the same step in one process: the seeded model, both ranks' batches, gradients
    # averaged, clipped and applied by AdamW at the first warm-up step's rate
    model_cfg = ModelConfig(d_model=16, layers=1, heads=2, ff_dim=32, head_dim=32, tokens=6,
                            slow_stride=2)
    cfg = TrainConfig(steps=1, batch_size=8, warmup_steps=2, seed=4)
    fov = FovConfig()
    seqs = load_motion(None, True, model_cfg.fps, cfg.seed, SynthConfig(seconds=3.0), 2)
    data = prepare_sequences(seqs, fov)
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    batch_fn = make_batch_fn(data, model_cfg, cfg)
    grads = []
    for rank in range(2):
        model.zero_grad()
        batch = batch_fn(0, rank, 2)
        pose_loss(model(batch["features"]), batch, cfg.loss, data.fps)[0].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert not all(torch.equal(a, b) for a, b in zip(*grads, strict=True))  # own batches
    for p, g0, g1 in zip(model.parameters(), *grads, strict=True):
        p.grad = (g0 + g1) / 2
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr / 2, weight_decay=cfg.weight_decay)
    opt.step()

    trained, *_ = load_checkpoint(out)
    for (name, want), got in zip(model.state_dict().items(), trained.state_dict().values(),
                                 strict=True):
        assert torch.allclose(want, got, atol=1e-6), name

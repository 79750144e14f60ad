"""The SlowFast network and the MLP baseline: outputs, stream sampling, a tiny overfit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose.body.egoposer.config import FovConfig, LossWeights, ModelConfig, VisibilityMix
from pose.body.egoposer.data import prepare_sequences, sample_batch
from pose.body.egoposer.features import NUM_FEATURES, NUM_OUTPUTS, decode_outputs
from pose.body.egoposer.model import build_model
from pose.body.egoposer.synth import SynthConfig, synthesize_dataset
from pose.body.egoposer.train import pose_loss

SMALL = {"d_model": 32, "layers": 1, "heads": 2, "ff_dim": 64, "head_dim": 64, "tokens": 10,
         "slow_stride": 3, "mlp_hidden": 64, "mlp_layers": 2}


@pytest.mark.parametrize("kind", ["egoposer", "mlp"])
def test_output_shape_and_identity_start(kind: str) -> None:
    cfg = ModelConfig(kind=kind)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randn(3, len(cfg.frame_offsets()), NUM_FEATURES)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 2, NUM_OUTPUTS)
    rots, root = decode_outputs(out)
    assert rots.shape == (3, 2, 22, 3, 3) and root.shape == (3, 2, 3)
    # The output layers start at the identity rotation (tiny weights, identity bias).
    np.testing.assert_allclose(rots.numpy(), np.broadcast_to(np.eye(3), rots.shape), atol=0.05)


def test_slow_and_fast_streams_sample_the_right_frames() -> None:
    """Slow: every ``slow_stride``-th frame ending at the current one; fast: the last
    ``tokens`` frames. Checked by feeding the frame offsets as features."""
    cfg = ModelConfig(tokens=5, slow_stride=4, d_model=16, heads=2, ff_dim=16, head_dim=16)
    offsets = cfg.frame_offsets()
    assert offsets == (-16, -12, -8, -4, -3, -2, -1, 0)
    model = build_model(cfg).eval()
    seen = {}
    model.slow_embed.register_forward_hook(lambda m, i, o: seen.__setitem__("slow", i[0]))
    model.fast_embed.register_forward_hook(lambda m, i, o: seen.__setitem__("fast", i[0]))
    x = torch.tensor(offsets, dtype=torch.float32)[None, :, None].expand(2, -1, NUM_FEATURES)
    with torch.no_grad():
        model(x)
    assert seen["slow"][0, :, 0].tolist() == [-16, -12, -8, -4, 0]
    assert seen["fast"][0, :, 0].tolist() == [-4, -3, -2, -1, 0]
    assert ModelConfig(kind="mlp").frame_offsets() == (-1, 0)
    assert len(ModelConfig().frame_offsets()) == 35  # 20 slow + 20 fast - 5 shared


def test_temporal_model_uses_the_past_mlp_does_not() -> None:
    cfg = ModelConfig(**SMALL)
    torch.manual_seed(0)
    x = torch.randn(2, len(cfg.frame_offsets()), NUM_FEATURES)
    x2 = x.clone()
    x2[:, :3] += 1.0  # change only old frames
    for kind, changes in (("egoposer", True), ("mlp", False)):
        model = build_model(ModelConfig(**{**SMALL, "kind": kind})).eval()
        for p in model.parameters():
            p.data.normal_(0, 0.1)
        with torch.no_grad():
            diff = (model(x) - model(x2)).abs().max().item()
        assert (diff > 1e-4) == changes, (kind, diff)


def test_previous_frame_output_does_not_see_the_current_frame() -> None:
    """Causal attention: the previous-frame output is an online prediction of that frame."""
    cfg = ModelConfig(**SMALL)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    x = torch.randn(2, len(cfg.frame_offsets()), NUM_FEATURES)
    x2 = x.clone()
    x2[:, -1] += 1.0  # the current frame only
    with torch.no_grad():
        out, out2 = model(x), model(x2)
    np.testing.assert_allclose(out2[:, 0].numpy(), out[:, 0].numpy(), atol=1e-6)
    assert (out2[:, 1] - out[:, 1]).abs().max() > 1e-3


def test_tiny_overfit_loss_falls() -> None:
    """Fitting one fixed batch: the loss must fall below a fifth of its start."""
    seqs = synthesize_dataset(2, seed=0, cfg=SynthConfig(seconds=4.0))
    data = prepare_sequences(seqs, FovConfig())
    cfg = ModelConfig(**SMALL)
    gen = torch.Generator().manual_seed(0)
    batch = sample_batch(data, 16, cfg.frame_offsets(), VisibilityMix(), gen)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss, _ = pose_loss(model(batch["features"]), batch, LossWeights(), data.fps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.2 * losses[0], (losses[0], losses[-10:])


def test_loss_is_zero_for_the_truth() -> None:
    """Feeding the targets back as outputs gives zero rotation, translation and velocity
    loss; the FK terms are the (small) mismatch of the scaled default skeleton."""
    from geometry.so3 import matrix_to_rot6d

    seqs = synthesize_dataset(1, seed=3, cfg=SynthConfig(seconds=3.0, proportion_jitter=0.0))
    data = prepare_sequences(seqs, FovConfig())
    batch = sample_batch(data, 8, ModelConfig().frame_offsets(), VisibilityMix(),
                         torch.Generator().manual_seed(0))
    d6 = matrix_to_rot6d(batch["rots_c"]).flatten(-2)
    out = torch.cat([d6, batch["root_c"]], -1)
    _, terms = pose_loss(out, batch, LossWeights(), data.fps)
    for k in ("rot", "root", "trans"):
        assert terms[k] < 1e-6, (k, terms[k])
    # Without proportion jitter the scaled default skeleton is the subject's exactly.
    for k in ("fk", "track", "vel"):
        assert terms[k] < 1e-5, (k, terms[k])

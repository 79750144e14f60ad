"""Online (streaming, batch 1) prediction equals offline prediction over a recording."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose.body.egoposer.config import ModelConfig
from pose.body.egoposer.infer import StreamingPredictor, predict_sequence
from pose.body.egoposer.model import build_model
from pose.body.egoposer.synth import SynthConfig, synthesize_sequence
from pose.body.egoposer.tracking import tracker_trajectories


@pytest.mark.parametrize("trace", [False, True])
def test_streaming_matches_offline(trace: bool) -> None:
    seq = synthesize_sequence(np.random.default_rng(0), SynthConfig(seconds=4.0))
    g, j = seq.fk()
    rot, pos = tracker_trajectories(g, j)
    vis = torch.rand(seq.num_frames, 2, generator=torch.Generator().manual_seed(0)) > 0.3
    cfg = ModelConfig(tokens=8, slow_stride=3)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    rots, root = predict_sequence(model, cfg, rot, pos, vis, 1.05, chunk=37)
    stream = StreamingPredictor(model, cfg, scale=1.05, trace=trace)
    for t in range(seq.num_frames):
        r, p = stream.push(rot[t], pos[t], vis[t])
        np.testing.assert_allclose(r.numpy(), rots[t].numpy(), atol=2e-5)
        np.testing.assert_allclose(p.numpy(), root[t].numpy(), atol=2e-5)

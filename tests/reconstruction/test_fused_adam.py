"""The trainer's FusedAdam is numerically torch.optim.Adam(fused=True): bit-identical
parameters and state over steps with per-group learning rates, missing gradients and a
state_dict round trip (the trainer's rollback)."""

from __future__ import annotations

import copy

import torch

from reconstruction.engine.trainer import FusedAdam


def test_fused_adam_equals_torch_adam_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    shapes = [(50, 3), (7,), (20, 15, 3)]
    lrs = [1e-2, 0.0, 3e-3]
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    reference = torch.optim.Adam([{"params": [p], "lr": lr, "eps": 1e-15}
                                  for p, lr in zip(theirs, lrs, strict=True)], fused=True)
    optimizer = FusedAdam([{"params": [p], "lr": lr, "eps": 1e-15, "name": str(i)}
                           for i, (p, lr) in enumerate(zip(ours, lrs, strict=True))])
    for step in range(30):
        for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if step % 7 == 3 and k == 2:  # no gradient: this step skips the parameter
                a.grad = b.grad = None
                continue
            grad = torch.randn(a.shape, generator=gen) * 10.0 ** (step % 3 - 1)
            a.grad, b.grad = grad.clone(), grad.clone()
        optimizer.step()
        reference.step()
        if step == 15:
            optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[a][key], reference.state[b][key]), key
        assert optimizer.state[a]["step"].dtype == torch.float32
    optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in ours)

"""The shared training loop: schedule, checkpoints, resume, time limit, data parallelism."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from torch import nn

from geometry.errors import UserError
from geometry.training import (
    DistInfo,
    TrainLoop,
    _lr_factor,
    config_differences,
    load_weights,
    read_checkpoint_config,
    train_loop,
)

W_TRUE = torch.tensor([[2.0, -1.0, 0.5]])


def _data(step: int, rank: int = 0, world: int = 1, n: int = 8):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(n, 3, generator=g)
    y = x @ W_TRUE.T
    share = n // world
    return x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]


def _loss(model, batch):
    x, y = batch
    mse = ((model(x) - y) ** 2).mean()
    return {"loss": mse, "mse": mse.detach()}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(3, 1, bias=False)


def _loop(out, steps=40, **kw) -> TrainLoop:
    return TrainLoop(out=out, kind="toy", config={"width": 3}, steps=steps, log_every=5,
                     schedule="constant", quiet=True, **kw)


def test_trains_and_writes_a_checkpoint(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    result = train_loop(model, opt, _data, _loss, _loop(tmp_path / "ck", steps=200))
    assert result.step == 200 and result.stopped_by == "steps"
    assert torch.allclose(model.weight, W_TRUE, atol=1e-2)
    assert result.history[0]["loss"] > 100 * result.history[-1]["loss"]
    assert [row["step"] for row in result.history][:3] == [5, 10, 15]
    record = read_checkpoint_config(tmp_path / "ck", "toy")
    assert record["step"] == 200 and record["config"] == {"width": 3}
    assert {p.name for p in (tmp_path / "ck").iterdir()} >= {
        "config.json", "model.safetensors", "trainer_state.pt", "history.json", "loss.png"}
    fresh = _model(seed=5)
    load_weights(tmp_path / "ck", fresh, "toy")
    assert torch.equal(fresh.weight, model.weight)
    assert not model.training


def test_resume_continues_exactly(tmp_path):
    whole = _model()
    train_loop(whole, torch.optim.Adam(whole.parameters(), lr=0.05), _data, _loss,
               _loop(None, steps=30))
    part = _model()
    train_loop(part, torch.optim.Adam(part.parameters(), lr=0.05), _data, _loss,
               _loop(tmp_path / "ck", steps=15))
    again = _model(seed=9)  # the weights come from the checkpoint, not the seed
    result = train_loop(again, torch.optim.Adam(again.parameters(), lr=0.05), _data, _loss,
                        _loop(tmp_path / "ck", steps=30, resume=True))
    assert result.step == 30
    assert torch.allclose(again.weight, whole.weight, atol=1e-6)
    assert [row["step"] for row in result.history] == [5, 10, 15, 20, 25, 30]


def test_resume_accepts_options_the_checkpoint_predates(tmp_path, capsys):
    """A checkpoint written before an option existed resumes (the option takes its current
    value, with a note naming it); an option whose value changed is refused by name."""
    model = _model()
    train_loop(model, torch.optim.SGD(model.parameters(), lr=0.01), _data, _loss,
               _loop(tmp_path / "ck", steps=5))
    newer = TrainLoop(out=tmp_path / "ck", kind="toy",
                      config={"width": 3, "model": {"mirror": True}}, steps=8, resume=True,
                      quiet=True)
    result = train_loop(_model(), torch.optim.SGD(model.parameters(), lr=0.01), _data, _loss,
                        newer)
    assert result.step == 8
    assert "predates option(s) model={\"mirror\": true}" in capsys.readouterr().out
    # the checkpoint now records the new option: a nested change is named by its path
    changed = TrainLoop(out=tmp_path / "ck", kind="toy",
                        config={"width": 3, "model": {"mirror": False}}, steps=9,
                        resume=True, quiet=True)
    with pytest.raises(UserError, match=r"\(model.mirror: true in the checkpoint, false now\)"):
        train_loop(_model(), torch.optim.SGD(model.parameters(), lr=0.01), _data, _loss,
                   changed)


def test_config_differences():
    stored = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "gone": 0}
    current = {"a": 1, "b": {"c": [1, 3], "d": "x", "e": True}, "f": None}
    newer, changed = config_differences(stored, current)
    assert newer == [("b.e", True), ("f", None)]
    assert changed == [("b.c", [1, 2], [1, 3]), ("gone", 0, None)]
    assert config_differences(stored, stored) == ([], [])


def test_cosine_schedule_and_warmup():
    assert _lr_factor(0, 0.0, 4, "cosine") == pytest.approx(0.25)
    assert _lr_factor(10, 0.5, 4, "cosine") == pytest.approx(0.5)
    assert _lr_factor(10, 1.0, 0, "cosine") == pytest.approx(0.0)
    assert _lr_factor(10, 0.7, 0, "constant") == 1.0


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    model = _model()
    result = train_loop(model, torch.optim.SGD(model.parameters(), lr=0.01), _data, _loss,
                        _loop(tmp_path / "ck", steps=10**9, max_minutes=1e-4))
    assert result.stopped_by == "time" and 0 < result.step < 10**9
    assert read_checkpoint_config(tmp_path / "ck", "toy")["step"] == result.step


def test_checkpoint_errors(tmp_path):
    with pytest.raises(UserError, match="is not a toy checkpoint"):
        read_checkpoint_config(tmp_path, "toy", "toy train")
    model = _model()
    train_loop(model, torch.optim.SGD(model.parameters(), lr=0.01), _data, _loss,
               _loop(tmp_path / "ck", steps=5))
    with pytest.raises(UserError, match="holds a toy model, not an aden model"):
        read_checkpoint_config(tmp_path / "ck", "aden")
    with pytest.raises(UserError, match="do not fit"):
        load_weights(tmp_path / "ck", nn.Linear(4, 1, bias=False), "toy")
    other = TrainLoop(out=tmp_path / "ck", kind="toy", config={"width": 4}, steps=10,
                      resume=True, quiet=True)
    with pytest.raises(UserError, match=r"another toy configuration \(width: 3 in the "
                                        r"checkpoint, 4 now\)"):
        train_loop(_model(), torch.optim.SGD(model.parameters(), lr=0.01), _data, _loss, other)
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        read_checkpoint_config(tmp_path / "ck", "toy")
    with pytest.raises(UserError, match="without --resume"):
        train_loop(_model(), torch.optim.SGD(model.parameters(), lr=0.01), _data, _loss,
                   _loop(tmp_path / "none", steps=5, resume=True))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from geometry.training import ddp_cleanup, ddp_setup

    info = ddp_setup("cpu")
    model = _model(seed=rank)  # different on each rank: rank 0's are broadcast
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train_loop(model, opt, lambda s, r, w: _data(s, r, w), _loss,
               _loop(out if info.is_main else None, steps=6), dist=info)
    torch.save(model.weight.detach(), f"{out}.rank{rank}.pt")
    ddp_cleanup()
    os._exit(0)  # no interpreter finalisation (see tests/pose/test_aden_ddp.py's worker)


def test_two_process_data_parallel_matches_one_process(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    w0 = torch.load(f"{out}.rank0.pt")
    w1 = torch.load(f"{out}.rank1.pt")
    single = _model(seed=0)
    train_loop(single, torch.optim.SGD(single.parameters(), lr=0.05), _data, _loss,
               _loop(None, steps=6), dist=DistInfo())
    assert torch.equal(w0, w1)
    # the mean of two half-batch gradients is the full batch's gradient
    assert torch.allclose(w0, single.weight.detach(), atol=1e-6)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["step"] == 6


def test_check_checkpoint_out(tmp_path):
    from geometry.training import check_checkpoint_out

    check_checkpoint_out(tmp_path / "new", resume=False, overwrite=False)  # absent: fine
    model = _model()
    train_loop(model, torch.optim.SGD(model.parameters(), lr=0.01), _data, _loss,
               _loop(tmp_path / "ck", steps=2))
    with pytest.raises(UserError, match="already holds a checkpoint; pass --resume"):
        check_checkpoint_out(tmp_path / "ck", resume=False, overwrite=False)
    check_checkpoint_out(tmp_path / "ck", resume=True, overwrite=False)
    check_checkpoint_out(tmp_path / "ck", resume=False, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="non-empty folder that is not a checkpoint"):
        check_checkpoint_out(tmp_path / "other", resume=False, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_checkpoint_out(tmp_path / "file", resume=False, overwrite=False)

"""The shared weight-file loaders and the standard-JSON writer of geometry.io."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from geometry.io.checkpoints import load_safetensors, torch_load_weights_only
from geometry.io.jsonio import dumps_json, json_safe


class _Payload:
    """A pickled class: what a malicious or non-weights .pt file holds."""


def _one_sentence(message: str) -> None:
    assert "\n" not in message and ". " not in message.rstrip(".")
    assert "`weights_only`" not in message and "Re-running" not in message


def test_safetensors_round_trip_and_bad_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([7], dtype=torch.int64)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    loaded = load_safetensors(tmp_path / "w.safetensors", "a test weights file")
    assert set(loaded) == {"a", "b"}
    torch.testing.assert_close(loaded["a"], tensors["a"], rtol=0, atol=0)
    assert int(loaded["b"]) == 7

    (tmp_path / "text.safetensors").write_text("hello, not a safetensors file")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 8])
    for name in ("text.safetensors", "cut.safetensors"):
        with pytest.raises(UserError) as info:
            load_safetensors(tmp_path / name, "a test weights file", "write it again.")
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name} is not a test weights file (it is not "
                                  "a readable safetensors file")
        assert message.endswith("; write it again.")
        _one_sentence(message)
    with pytest.raises(UserError, match="does not exist"):
        load_safetensors(tmp_path / "missing.safetensors", "a test weights file")
    with pytest.raises(UserError, match="is a folder"):
        load_safetensors(tmp_path, "a test weights file")


def test_torch_load_weights_only(tmp_path: Path) -> None:
    state = {"w": torch.ones(2, 2), "step": 3, "name": "x"}
    torch.save(state, tmp_path / "ok.pt")
    loaded = torch_load_weights_only(tmp_path / "ok.pt", "a state file")
    assert loaded["step"] == 3 and loaded["name"] == "x"
    torch.testing.assert_close(loaded["w"], torch.ones(2, 2))

    torch.save({"w": _Payload()}, tmp_path / "objects.pt")
    with pytest.raises(UserError) as info:
        torch_load_weights_only(tmp_path / "objects.pt", "a state file", "train again.")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'objects.pt'} is not a state file (it holds "
                              "Python objects other than tensors")
    _one_sentence(message)

    (tmp_path / "text.pt").write_text("not a checkpoint")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    for name in ("text.pt", "cut.pt"):
        with pytest.raises(UserError) as info:
            torch_load_weights_only(tmp_path / name, "a state file", "train again.")
        assert str(info.value).startswith(f"{tmp_path / name} is not a state file")
        _one_sentence(str(info.value))


def test_json_writes_null_for_non_finite_numbers() -> None:
    value = {"ap": float("nan"), "err": [1.5, math.inf, -math.inf], "n": np.int64(4),
             "x": np.float32(0.25), "arr": np.array([1.0, np.nan]), "t": (1, 2),
             "flag": np.bool_(True), "path": Path("a/b")}
    text = dumps_json(value)

    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    parsed = json.loads(text, parse_constant=refuse)
    assert parsed == {"ap": None, "err": [1.5, None, None], "n": 4, "x": 0.25,
                      "arr": [1.0, None], "t": [1, 2], "flag": True, "path": "a/b"}
    assert json_safe({1: 2.0}) == {"1": 2.0}
    with pytest.raises(TypeError):
        dumps_json({"f": object()})

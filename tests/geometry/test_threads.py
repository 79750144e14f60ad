"""geometry.threads: one meaning of --threads (None = all cores, < 1 is the user's error)."""

from __future__ import annotations

import pytest
import torch

from geometry.errors import UserError
from geometry.threads import choose_threads, set_threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_requested_count_is_kept():
    assert choose_threads(1) == 1
    assert choose_threads(7) == 7


def test_none_means_every_core(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 12)
    assert choose_threads(None) == 12
    monkeypatch.setattr("os.cpu_count", lambda: None)  # unknown: one thread
    assert choose_threads(None) == 1


def test_torchrun_processes_share_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 12)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert choose_threads(None) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert choose_threads(None) == 1
    assert choose_threads(5) == 5  # an explicit count wins


@pytest.mark.parametrize("bad", [0, -2])
def test_below_one_is_a_user_error(bad):
    with pytest.raises(UserError, match=f"--threads {bad} must be at least 1"):
        choose_threads(bad)


def test_set_threads_sets_torch_and_returns_the_count(monkeypatch):
    assert set_threads(1) == 1
    assert torch.get_num_threads() == 1
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert set_threads(None) == 2
    assert torch.get_num_threads() == 2

"""Fixtures of every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """CLIs run in-process set torch's thread count (``--threads``, default all cores):
    each test starts with the count the session started with."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)

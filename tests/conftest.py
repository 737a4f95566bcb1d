"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.operator import Operator, require_postgres


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def operator(state_dir: Path) -> Iterator[Operator]:
    """A running `sdb up` on a fresh state directory (stopped cleanly afterwards)."""
    require_postgres()
    running = Operator(state_dir)
    running.start()
    try:
        yield running
    finally:
        if running.process is not None:
            running.stop()

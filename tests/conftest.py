"""Fixtures shared by every test directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from kubeapi import KubeApiDouble
from support.cluster import cluster
from support.operator import Operator, running_operator
from support.postgres import Server, running_server
from support.requirements import require_postgres

from controller.runtime.local import accounts

# Property tests judge what is decided, not how fast: on a busy machine an example's time is noise.
settings.register_profile("untimed", deadline=None)
settings.load_profile("untimed")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state directory the postgres server user can reach.

    Not under pytest's own temporary directory: pytest resets that to mode 0700 whenever a
    session starts, which would cut a running server off from its data directory.
    """
    root = Path(tempfile.mkdtemp(prefix="sdb-test-"))
    yield root / "state"
    shutil.rmtree(root, ignore_errors=True)
    accounts.remove_all(root / "state")  # the databases' accounts go with their storage


@pytest.fixture
def operator(state_dir: Path) -> Iterator[Operator]:
    """A running `sdb up` on a fresh state directory (stopped cleanly afterwards)."""
    require_postgres()
    with running_operator(state_dir) as running:
        yield running


@pytest.fixture(scope="session")
def pods() -> Iterator[Server]:
    """A real Postgres that stands in for the pods of the databases on the API double."""
    with running_server(any_password=True) as server:
        yield server


@pytest.fixture
def kube() -> Iterator[KubeApiDouble]:
    """The Kubernetes API double, with the project's CRD installed."""
    with cluster() as double:
        yield double

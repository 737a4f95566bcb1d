"""The process table a reading of the local fleet shares: read once, then each server's tree from it."""

from __future__ import annotations

import os
import subprocess
import sys

from controller.runtime.local.server import ProcessTable


def test_descendants_come_from_one_read_of_the_table_until_it_is_old() -> None:
    table = ProcessTable(max_age=3600)
    table.descendants(os.getpid())  # the first call reads the table
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid not in table.descendants(os.getpid())  # the table read before it started
        fresh = ProcessTable(max_age=0)
        assert child.pid in fresh.descendants(os.getpid())
    finally:
        child.kill()
        child.wait()

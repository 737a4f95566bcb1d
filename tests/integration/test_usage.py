"""status.usage outlives the operator, on both runtimes: what a restarted operator bills is what an
operator that never stopped would have billed.

The compute runs on while the operator is away (local servers have their own process group; pods do
not depend on the operator), so the time nobody watched is billed at the size status records, and
nothing accounted before the end is lost. Locally the end is a `kill -9`; on Kubernetes the cluster
operator writes nothing on its way out, so a stop leaves status as a kill would.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubeapi import KubeApiDouble
from support.cluster import activator_slice, create, eventually, operator, reading, sdb
from support.operator import Operator, database, wait_for
from support.postgres import Server
from support.requirements import require_postgres

from controller.api import codec, types
from controller.runtime.local.runtime import free_port

pytestmark = pytest.mark.postgres

SIZE = 0.5
STEADY: dict[str, Any] = {"capacity": {"min": SIZE, "max": SIZE}, "autoPause": {"enabled": False}}
"""One size all along, never paused: every second of its life costs the same."""
TOUCHED: dict[str, Any] = {**STEADY, "autoPark": {"idleAfter": "2h"}}
"""A spec change that changes nothing billable, for a status write at a moment of the test's choosing."""
CU_SECONDS = "sdb_compute_unit_seconds_total"
ROUNDING = 1e-8
"""CU-hours are kept to 1e-9 and rounded at each write; a few writes apart, this much may differ."""


def cu_seconds(usage: types.UsageStatus, at: datetime | None = None) -> float:
    """The usage's total, in CU-seconds, carried at the steady size to `at` (its own moment if None)."""
    carried = 0.0 if at is None else (at - usage.accounted_until).total_seconds() * SIZE
    return usage.total.compute_unit_hours * 3600 + carried


def assert_goes_on_from(before: types.UsageStatus, after: types.UsageStatus) -> None:
    """`after` is `before` plus the time between them at the steady size, all of it metered."""
    assert after.total.start == before.total.start  # the same accounting, not one begun afresh
    gap = (after.accounted_until - before.accounted_until).total_seconds()
    assert gap > 0
    assert after.total.compute_unit_hours == pytest.approx(
        before.total.compute_unit_hours + SIZE * gap / 3600, abs=ROUNDING
    )
    assert after.total.unmetered_compute_unit_hours == 0.0  # a restart is far shorter than the gap limit
    covered = sum(after.total.phase_seconds.values()) - sum(before.total.phase_seconds.values())
    assert covered == pytest.approx(gap, abs=1e-5)


def test_locally_usage_survives_a_kill_9_of_the_operator(state_dir: Path) -> None:
    require_postgres()
    operator = Operator(state_dir, tick=0.2, metrics_port=free_port())
    operator.start()
    try:
        operator.apply(database("billed", **STEADY))
        operator.wait_phase("billed", types.Phase.ACTIVE)
        with operator.connect("billed") as conn:
            started = conn.execute("select pg_postmaster_start_time()").fetchone()
        wait_for(lambda: operator.metric(CU_SECONDS, database="billed") >= 1.0, what="a CU-second served")
        served = operator.metric(CU_SECONDS, database="billed")  # what the last pass before the kill knew
        operator.kill()
        killed = datetime.now(UTC)
        before = operator.get("billed").status.usage
        assert before is not None
        # Status may be up to a flush behind the passes, but carried at the size it records to the
        # moment of the kill it holds all that was served: a kill loses nothing.
        assert before.accounted_until <= killed
        assert cu_seconds(before, killed) >= served - ROUNDING * 3600

        operator.start()
        operator.apply(database("billed", **TOUCHED))
        wait_for(
            lambda: operator.get("billed").status.observed_generation == 2, what="the new operator's write"
        )
        with operator.connect("billed") as conn:  # the same server ran on through the kill
            assert conn.execute("select pg_postmaster_start_time()").fetchone() == started
        after = operator.get("billed").status.usage
        assert after is not None
        assert_goes_on_from(before, after)
        assert after.accounted_until > killed  # the time nobody watched is billed too
        # The counter Prometheus scrapes goes on from status: its first value from the new process
        # is no lower than the last from the killed one, so no reset across the kill.
        first = wait_for(lambda: operator.metric(CU_SECONDS, database="billed"), what="the counter")
        assert first >= served - ROUNDING * 3600

        operator.stop()  # status stands still from here: what the CLI shows can be compared with it
        shown_usage = operator.get("billed").status.usage
        assert shown_usage is not None
        _, table, _ = operator.sdb("get", "-o", "wide")
        header, row = (line.split() for line in table.splitlines()[:2])
        assert header[-2:] == ["CU-HOURS", "PERIOD"]  # the last columns (LAST-ACTIVITY may hold a space)
        assert row[-2:] == [
            f"{shown_usage.period.compute_unit_hours:.3f}",
            f"{shown_usage.period.start:%Y-%m}",
        ]
        _, described, _ = operator.sdb("describe", "billed")
        month = f"{shown_usage.period.compute_unit_hours:.3f} CU-hours in {shown_usage.period.start:%Y-%m}"
        assert f"Usage:            {month}" in described
    finally:
        operator.stop()


async def test_on_kubernetes_a_new_operator_goes_on_from_status(kube: KubeApiDouble, pods: Server) -> None:
    kube.create(activator_slice())
    create(kube, **STEADY)
    async with operator(kube, pods) as first:
        first.readings["shop/orders"] = reading(sessions=1)
        await eventually(lambda: sdb(kube).get("status", {}).get("phase") == "Active", what="Active")
    # What the API server kept, through the CRD's schema (it prunes what the schema does not name).
    before = codec.decode_status(sdb(kube)["status"]).usage
    assert before is not None
    assert sdb(kube)["status"]["usage"] == codec.encode_status(types.DatabaseStatus(usage=before))["usage"]
    stopped = datetime.now(UTC)

    async with operator(kube, pods, identity="op-2") as second:
        second.readings["shop/orders"] = reading(sessions=1)
        kube.apply(
            {
                "apiVersion": types.API_VERSION,
                "kind": types.KIND,
                "metadata": {"name": "orders", "namespace": "shop"},
                "spec": TOUCHED,
            },
            manager="kubectl",
        )
        await eventually(
            lambda: sdb(kube)["status"].get("observedGeneration") == 2, what="the new operator's write"
        )
        after = codec.decode_status(sdb(kube)["status"]).usage
        assert after is not None
        assert_goes_on_from(before, after)
        assert after.accounted_until > stopped
        registry = second.operator.reconciler.exposition.registry
        labels = {"namespace": "shop", "database": "orders"}
        # A new process's counter starts from status, not from zero.
        first = await eventually(lambda: registry.get_sample_value(CU_SECONDS, labels), what="the counter")
        assert first >= cu_seconds(before) - ROUNDING * 3600

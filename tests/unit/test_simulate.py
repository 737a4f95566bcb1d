"""The simulator as a user runs it: any CSV trace in, a report and one key=value line out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import simulate  # noqa: E402
import traces  # noqa: E402

LAST_LINE_KEYS = [
    "ours_vs_oracle",
    "ours_underprovisioned",
    "hpa_vs_oracle",
    "hpa_underprovisioned",
    "neon_vs_oracle",
    "neon_underprovisioned",
    "neonws_vs_oracle",
    "neonws_underprovisioned",
    "max_underprovisioned",
]


def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> None:
    """`bench/simulate.py ARGS`, its report written under tmp_path instead of bench/reports."""
    monkeypatch.setattr(common, "REPORTS", tmp_path / "reports")
    monkeypatch.setattr(sys, "argv", ["simulate.py", "--workers", "1", *args])
    simulate.main()


def test_any_csv_trace_ends_with_every_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "mine.csv"
    # Written elsewhere: a ramp, a jump, an idle gap long enough to pause, and a visit after it.
    rows = [(s, round(0.1 + 0.002 * s, 3)) for s in range(0, 600, 30)]
    rows += [(600, 2.5), (900, 0.0), (1500, 0.6), (1800, 0.0), (1860, 0.0)]
    trace.write_text("seconds,demand_cu\n" + "".join(f"{s},{d}\n" for s, d in rows))

    run(monkeypatch, tmp_path, "--trace", str(trace))

    last = capsys.readouterr().out.strip().splitlines()[-1]
    pairs = dict(field.split("=", 1) for field in last.split())
    assert list(pairs) == LAST_LINE_KEYS
    values = {key: float(value) for key, value in pairs.items()}
    assert values["ours_vs_oracle"] >= 1.0  # nothing spends less than the oracle, which sees the future
    assert all(0.0 <= values[key] <= 1.0 for key in LAST_LINE_KEYS if key.endswith("underprovisioned"))
    assert (tmp_path / "reports" / "simulate-mine.json").exists()


def test_a_csv_without_the_columns_is_refused_by_name(tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("time,cpu\n0,1\n")
    with pytest.raises(ValueError, match="seconds,demand_cu"):
        traces.read_csv(trace)


def test_the_seed_sets_are_apart_and_each_trace_is_reproducible() -> None:
    assert not set(traces.TUNING_SEEDS) & set(traces.HELD_OUT_SEEDS)
    for family in traces.SINGLE:
        first, again = traces.generate(family, 101), traces.generate(family, 101)
        assert (first.demand["db"] == again.demand["db"]).all()
        other = traces.generate(family, 1)
        assert (
            len(other.demand["db"]) != len(first.demand["db"])
            or (other.demand["db"] != first.demand["db"]).any()
        ), f"{family}: another seed, another trace"
        assert first.demand["db"].max() <= traces.CEILING

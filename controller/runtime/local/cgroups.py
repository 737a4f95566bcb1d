"""Per-database cgroups for CPU and memory limits, on cgroup v1 or v2, where the host lets us write them.

Detection looks at what is mounted and tries to make the operator's own group; where either fails,
limits are advisory and `message` says why (status carries it to the user).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from controller.postgres.usage import Usage

CPU_PERIOD_US = 100_000
MOUNTINFO = Path("/proc/self/mountinfo")
OWN_CGROUPS = Path("/proc/self/cgroup")


class Version(StrEnum):
    V1 = "v1"
    V2 = "v2"
    NONE = "none"


@dataclass(frozen=True)
class _Mount:
    path: Path
    options: frozenset[str]
    v2: bool


def _mounts() -> list[_Mount]:
    mounts = []
    for line in MOUNTINFO.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, super_options = [*right.split(), "", "", ""][:3]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mounts.append(_Mount(Path(left.split()[4]), frozenset(super_options.split(",")), fstype == "cgroup2"))
    return mounts


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per controller ("" for the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    for line in OWN_CGROUPS.read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


class Cgroups:
    """The operator's cgroup subtree (one per state directory) and a group per database in it."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.version = Version.NONE
        self.enforced = False
        self.message = "cgroups not yet detected"
        self._roots: dict[str, Path] = {}

    def detect(self) -> None:
        """Find the cpu and memory hierarchies and make the operator's group in each; never raises."""
        try:
            mounts = _mounts()
            own = _own_paths()
        except OSError as error:
            self._advisory(Version.NONE, f"cannot read cgroup mounts ({error})")
            return
        v1: dict[str, _Mount] = {
            c: m for m in mounts if not m.v2 for c in ("cpu", "cpuacct", "memory") if c in m.options
        }
        if "cpu" in v1 and "memory" in v1:
            roots = {c: m.path / own.get(c, "/").lstrip("/") / self.group for c, m in v1.items()}
            self._claim(Version.V1, roots)
            return
        unified = next((m for m in mounts if m.v2), None)
        if unified is None:
            self._advisory(Version.NONE, "no cgroup hierarchy with cpu and memory controllers is mounted")
            return
        available = (unified.path / "cgroup.controllers").read_text().split()
        if not {"cpu", "memory"} <= set(available):
            self._advisory(
                Version.V2, f"cgroup v2 at {unified.path} does not offer cpu and memory controllers"
            )
            return
        # v2 forbids processes in inner groups: the operator's group goes beside its own, under the parent.
        own_path = Path(own.get("", "/"))
        parent = unified.path / (own_path.parent if own_path != Path("/") else own_path).relative_to("/")
        self._claim(Version.V2, {"unified": parent / self.group})

    def _claim(self, version: Version, roots: dict[str, Path]) -> None:
        try:
            for root in roots.values():
                root.mkdir(parents=True, exist_ok=True)
            if version is Version.V2:
                root = roots["unified"]
                (root.parent / "cgroup.subtree_control").write_text("+cpu +memory")
                (root / "cgroup.subtree_control").write_text("+cpu +memory")
        except OSError as error:
            self._advisory(
                version, f"cgroup {version.value} is not writable here ({error.strerror or error})"
            )
            return
        self.version = version
        self._roots = roots
        self.enforced = True
        self.message = f"cgroup {version.value}: CPU and memory limits are enforced"

    def _advisory(self, version: Version, why: str) -> None:
        self.version = version
        self.enforced = False
        self.message = f"{why}: CPU and memory limits are advisory"

    def _dirs(self, name: str) -> dict[str, Path]:
        return {controller: root / name for controller, root in self._roots.items()}

    def ensure(self, name: str, *, owner: tuple[int, int] | None = None) -> list[Path]:
        """Make the database's group; returns the cgroup.procs files a new server process joins."""
        if not self.enforced:
            return []
        procs = []
        for directory in self._dirs(name).values():
            directory.mkdir(exist_ok=True)
            procs.append(directory / "cgroup.procs")
            if owner is not None:
                os.chown(directory / "cgroup.procs", *owner)
        return procs

    def set_limits(self, name: str, *, cpu_cores: float, memory_bytes: int) -> None:
        """Apply limits; raises OSError when the kernel refuses (e.g. memory below what is in use)."""
        if not self.enforced:
            return
        dirs = self._dirs(name)
        quota = max(int(cpu_cores * CPU_PERIOD_US), 1000)
        if self.version is Version.V1:
            (dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))
            (dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
        else:
            (dirs["unified"] / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
            (dirs["unified"] / "memory.max").write_text(str(memory_bytes))

    def limits(self, name: str) -> tuple[float, int] | None:
        """The (cores, bytes) limits in force, or None without a group."""
        dirs = self._dirs(name)
        try:
            if self.version is Version.V1:
                quota = int((dirs["cpu"] / "cpu.cfs_quota_us").read_text())
                period = int((dirs["cpu"] / "cpu.cfs_period_us").read_text())
                memory = int((dirs["memory"] / "memory.limit_in_bytes").read_text())
                return quota / period, memory
            if self.version is Version.V2:
                quota_text, period_text = (dirs["unified"] / "cpu.max").read_text().split()
                memory_text = (dirs["unified"] / "memory.max").read_text().strip()
                cores = float("inf") if quota_text == "max" else int(quota_text) / int(period_text)
                return cores, (2**63 - 1 if memory_text == "max" else int(memory_text))
        except (OSError, KeyError, ValueError):
            return None
        return None

    def usage(self, name: str) -> Usage | None:
        if not self.enforced:
            return None
        dirs = self._dirs(name)
        try:
            if self.version is Version.V1:
                cpu = int((dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
                throttling = _stat(dirs["cpu"] / "cpu.stat")
                memory = int((dirs["memory"] / "memory.usage_in_bytes").read_text())
                stat = _stat(dirs["memory"] / "memory.stat")
                inactive, cache = stat.get("total_inactive_file", 0), stat.get("total_cache", 0)
            else:
                throttling = _stat(dirs["unified"] / "cpu.stat")
                cpu = throttling["usage_usec"] / 1e6
                memory = int((dirs["unified"] / "memory.current").read_text())
                stat = _stat(dirs["unified"] / "memory.stat")
                inactive, cache = stat.get("inactive_file", 0), stat.get("file", 0)
        except (OSError, KeyError, ValueError):
            return None
        return Usage(
            cpu_seconds=cpu,
            working_set_bytes=max(memory - inactive, 0),
            cache_bytes=cache,
            cpu_periods=throttling.get("nr_periods", 0),
            cpu_throttled_periods=throttling.get("nr_throttled", 0),
        )

    def remove(self, name: str) -> None:
        """Remove the database's group (once its processes are gone)."""
        for directory in self._dirs(name).values():
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()

    def remove_all(self) -> None:
        for root in self._roots.values():
            with contextlib.suppress(OSError):
                for child in root.iterdir():
                    if child.is_dir():
                        child.rmdir()
                root.rmdir()


def _stat(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out

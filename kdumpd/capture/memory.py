"""Where the crash kernel's memory is just before the collector starts.

The capture agent logs one line of it on the console (and keeps it in
kdumpd-metadata.json), so a serial log of a capture that ran short of memory says
what held the reservation: MemAvailable, the RAM file systems (the unpacked image
live in Shmem), the largest slab caches and the largest processes by resident size.
tests/vm/bench_capture.py reads it back to explain the smallest working size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kdumpd.paths import Paths

#: /proc/meminfo fields reported, in this order.
MEMINFO_FIELDS: tuple[str, ...] = ("MemTotal", "MemAvailable", "MemFree", "Shmem", "Slab")
#: How many processes (and slab caches) the report names.
TOP_PROCESSES = 5
TOP_SLABS = 3
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class MemorySnapshot:
    """A few /proc/meminfo fields (KiB), the largest processes and slab caches (name, KiB)."""

    meminfo: dict[str, int] = field(default_factory=dict)
    largest: list[tuple[str, int]] = field(default_factory=list)
    slabs: list[tuple[str, int]] = field(default_factory=list)

    def line(self) -> str:
        """One console line: ``MemAvailable 41.2 MiB, ...; largest: systemd 9.8 MiB, ...``."""
        fields = ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in self.meminfo.items())
        users = ", ".join(f"{name} {kib / 1024:.1f} MiB" for name, kib in self.largest)
        line = f"memory: {fields or 'meminfo unreadable'}; largest: {users or 'none readable'}"
        if self.slabs:
            line += "; slab: " + ", ".join(f"{n} {kib / 1024:.1f} MiB" for n, kib in self.slabs)
        return line

    def to_json(self) -> dict[str, object]:
        return {
            "meminfo_kib": dict(self.meminfo),
            "largest_kib": [list(p) for p in self.largest],
            "slab_kib": [list(s) for s in self.slabs],
        }


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        # A process can end between listing /proc and reading it; a report never fails.
        return ""


def _meminfo(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        value = rest.split()
        if name in MEMINFO_FIELDS and value and value[0].isdigit():
            found[name] = int(value[0])
    return {name: found[name] for name in MEMINFO_FIELDS if name in found}


def _process(status: str) -> tuple[str, int] | None:
    name, rss = "", None
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key == "Name":
            name = rest.strip()
        elif key == "VmRSS":
            value = rest.split()
            if value and value[0].isdigit():
                rss = int(value[0])
    if not name or rss is None:
        return None  # kernel threads have no VmRSS
    return name, rss


def _slabs(text: str) -> list[tuple[str, int]]:
    """Slab caches by memory (KiB): num_slabs x pages per slab, from /proc/slabinfo 2.1."""
    caches: list[tuple[str, int]] = []
    for line in text.splitlines():
        words = line.split()
        # name active_objs num_objs objsize objperslab pagesperslab : tunables ... : slabdata
        # active_slabs num_slabs sharedavail
        if len(words) < 16 or words[0].startswith("#") or words[-4] != "slabdata":
            continue
        try:
            pages_per_slab, num_slabs = int(words[5]), int(words[-2])
        except ValueError:
            continue
        caches.append((words[0], pages_per_slab * num_slabs * _PAGE_KIB))
    caches.sort(key=lambda c: (-c[1], c[0]))
    return caches


def snapshot(
    paths: Paths, *, top: int = TOP_PROCESSES, top_slabs: int = TOP_SLABS
) -> MemorySnapshot:
    """Read /proc (under ``paths``' root) now."""
    proc_dir = paths.under_root("/proc")
    processes: list[tuple[str, int]] = []
    try:
        entries = sorted(p for p in proc_dir.iterdir() if p.name.isdigit())
    except OSError:
        entries = []
    for entry in entries:
        found = _process(_read(entry / "status"))
        if found is not None:
            processes.append(found)
    processes.sort(key=lambda p: (-p[1], p[0]))
    return MemorySnapshot(
        meminfo=_meminfo(_read(paths.proc_meminfo)),
        largest=processes[:top],
        slabs=_slabs(_read(paths.under_root("/proc/slabinfo")))[:top_slabs],
    )

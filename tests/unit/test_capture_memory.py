"""The capture agent's memory report (kdumpd.capture.memory) against a fake /proc."""

from __future__ import annotations

import os
from pathlib import Path

from kdumpd.capture.memory import MemorySnapshot, snapshot
from kdumpd.paths import Paths

MEMINFO = """MemTotal:          98304 kB
MemFree:           20480 kB
MemAvailable:      40960 kB
Buffers:               0 kB
Shmem:             31744 kB
Slab:               8192 kB
"""


PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
SLAB_HEAD = (
    "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> <objperslab> "
    "<pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata "
    "<active_slabs> <num_slabs> <sharedavail>\n"
)


def _slab(name: str, pages_per_slab: int, kib: int) -> str:
    slabs = kib // PAGE_KIB // pages_per_slab
    return f"{name} 10 10 192 21 {pages_per_slab} : tunables 0 0 0 : slabdata {slabs} {slabs} 0\n"


SLABINFO = (
    SLAB_HEAD
    + _slab("dentry", 1, 2048)
    + _slab("kmalloc-1k", 8, 8192)
    + _slab("empty_cache", 1, 0)
    + _slab("inode_cache", 2, 1024)
)


def _process(root: Path, pid: int, name: str, rss_kib: int | None) -> None:
    where = root / "proc" / str(pid)
    where.mkdir(parents=True)
    rss = f"VmRSS:\t{rss_kib} kB\n" if rss_kib is not None else ""
    (where / "status").write_text(f"Name:\t{name}\nState:\tS (sleeping)\n{rss}")


def test_snapshot_names_meminfo_and_the_largest_processes(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(MEMINFO)
    _process(tmp_path, 1, "systemd", 10240)
    _process(tmp_path, 2, "kthreadd", None)  # a kernel thread: no VmRSS, not a user
    _process(tmp_path, 150, "systemd-journal", 6144)
    _process(tmp_path, 151, "systemd-udevd", 5120)
    _process(tmp_path, 300, "python3", 12288)
    (tmp_path / "proc" / "self").mkdir()  # not a pid
    (tmp_path / "proc" / "slabinfo").write_text(SLABINFO)

    now = snapshot(Paths(root=tmp_path), top=3)

    assert now.meminfo == {
        "MemTotal": 98304,
        "MemAvailable": 40960,
        "MemFree": 20480,
        "Shmem": 31744,
        "Slab": 8192,
    }
    assert now.largest == [("python3", 12288), ("systemd", 10240), ("systemd-journal", 6144)]
    assert now.line() == (
        "memory: MemTotal 96.0 MiB, MemAvailable 40.0 MiB, MemFree 20.0 MiB, "
        "Shmem 31.0 MiB, Slab 8.0 MiB; largest: python3 12.0 MiB, systemd 10.0 MiB, "
        "systemd-journal 6.0 MiB; slab: kmalloc-1k 8.0 MiB, dentry 2.0 MiB, inode_cache 1.0 MiB"
    )
    assert now.to_json()["largest_kib"] == [
        ["python3", 12288],
        ["systemd", 10240],
        ["systemd-journal", 6144],
    ]


def test_slab_caches_count_pages_of_all_their_slabs(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "slabinfo").write_text(SLABINFO + "garbage line\n")
    now = snapshot(Paths(root=tmp_path), top_slabs=10)
    assert now.slabs == [
        ("kmalloc-1k", 8192),
        ("dentry", 2048),
        ("inode_cache", 1024),
        ("empty_cache", 0),
    ]


def test_snapshot_without_proc_is_a_report_not_an_error(tmp_path: Path) -> None:
    now = snapshot(Paths(root=tmp_path))
    assert now == MemorySnapshot()
    assert now.line() == "memory: meminfo unreadable; largest: none readable"

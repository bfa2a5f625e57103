"""Dumps new since the daemon's last run: listing by core file, what was announced, reports.

A dump is a directory ``<path>/<ip>-<YYYY-MM-DD-HH:MM:SS>/`` holding ``vmcore``
(or ``vmcore.flat``, or ``vmcore-incomplete`` when the capture did not finish).
Which dumps were already announced is recorded in the state directory by
name, so that each one is reported once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kdumpd.paths import Paths
from kdumpd.postcrash.report import CrashReport, triage

CORE_FILES = ("vmcore", "vmcore.flat", "vmcore-incomplete")
DMESG_FILE = "vmcore-dmesg.txt"
REPORT_TEXT = "crash-report.txt"
REPORT_JSON = "crash-report.json"


@dataclass(frozen=True)
class Dump:
    """One saved dump directory."""

    directory: Path
    core: Path
    mtime: float
    size_bytes: int

    @property
    def complete(self) -> bool:
        return self.core.name != "vmcore-incomplete"


def _size(directory: Path) -> int:
    total = 0
    for entry in directory.iterdir():
        try:
            if entry.is_file():
                # st_blocks: a sparse core takes less room than its length says.
                total += entry.stat().st_blocks * 512
        except OSError:
            continue
    return total


def list_dumps(crash_dir: Path) -> list[Dump]:
    """The dumps under ``crash_dir``, oldest first (by the core file's time, then name)."""
    found: list[Dump] = []
    try:
        entries = list(crash_dir.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.is_dir() or entry.is_symlink():
            continue
        for name in CORE_FILES:
            core = entry / name
            if core.is_file():
                found.append(
                    Dump(
                        directory=entry,
                        core=core,
                        mtime=core.stat().st_mtime,
                        size_bytes=_size(entry),
                    )
                )
                break
    found.sort(key=lambda d: (d.mtime, d.directory.name))
    return found


def _dirs_path(paths: Paths) -> Path:
    return paths.state_dir / "dump-dirs.json"


def remember_dir(paths: Paths, crash_dir: Path) -> None:
    """Record a directory a capture kernel was armed to write to.

    The next boot looks in every such directory: kdump.conf may have changed
    ``path`` (or be broken) since the kernel that saved the dump was armed.
    """
    known = known_dirs(paths)
    if crash_dir in known:
        return
    target = _dirs_path(paths)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(sorted(map(str, [*known, crash_dir])), indent=2) + "\n")
    os.replace(tmp, target)


def known_dirs(paths: Paths) -> list[Path]:
    try:
        data = json.loads(_dirs_path(paths).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [Path(item) for item in data] if isinstance(data, list) else []


def _seen_path(paths: Paths) -> Path:
    return paths.state_dir / "dumps-seen.json"


def _read_seen(paths: Paths) -> set[str]:
    try:
        data = json.loads(_seen_path(paths).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {str(item) for item in data} if isinstance(data, list) else set()


def new_dumps(paths: Paths, *crash_dirs: Path) -> list[Dump]:
    """Dumps under any of ``crash_dirs`` not announced before, oldest first."""
    seen = _read_seen(paths)
    found: dict[Path, Dump] = {}
    for crash_dir in crash_dirs:
        for dump in list_dumps(crash_dir):
            if str(dump.directory) not in seen:
                found[dump.directory] = dump
    return sorted(found.values(), key=lambda d: (d.mtime, d.directory.name))


def mark_seen(paths: Paths, dumps: list[Dump]) -> None:
    """Record ``dumps`` as announced (names of gone dumps are dropped)."""
    seen = {s for s in _read_seen(paths) if Path(s).exists()}
    seen.update(str(d.directory) for d in dumps)
    target = _seen_path(paths)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(sorted(seen), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def write_report(dump: Dump) -> CrashReport:
    """Triage the dump's kernel log; write crash-report.txt and .json beside the core."""
    try:
        log = (dump.directory / DMESG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        log = ""
    report = triage(log)
    text = report.to_text()
    if not log:
        text += f"\n(no {DMESG_FILE} in {dump.directory}: the kernel log was not saved)"
    (dump.directory / REPORT_TEXT).write_text(text + "\n", encoding="utf-8")
    document = {"dump": str(dump.directory), "core": dump.core.name, **report.to_json()}
    (dump.directory / REPORT_JSON).write_text(
        json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return report

"""The saved dumps of this machine: where they are, what each one is, its crash report.

:func:`dump_roots` says where the configuration puts dumps that this machine can
see (the ``path`` below the root filesystem or below a mounted dump filesystem,
and /var/crash, where raw-device dumps are imported). :func:`list_dumps` reads
every dump directory there into a :class:`DumpInfo`, newest first, from the
capture metadata (``kdumpd-metadata.json``), the saved kernel log and the dump
file's own headers, in that order of preference. :func:`crash_report` is the
text an administrator reads first. Nothing here runs a program.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.contract.layout import (
    DMESG,
    DMESG_INCOMPLETE,
    METADATA,
    VMCORE,
    VMCORE_FLAT,
    VMCORE_INCOMPLETE,
)
from kdumpd.errors import KdumpError
from kdumpd.paths import Paths
from kdumpd.postcrash.report import CrashReport, triage
from kdumpd.vmcore.dump import DumpError, open_dump
from kdumpd.vmcore.printk import KernelLogError, read_kernel_log

#: Dump file names, the finished ones first.
VMCORE_NAMES = (VMCORE, VMCORE_FLAT, VMCORE_INCOMPLETE)
_DIR_TIME = re.compile(r"-(\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d)$")
_FS_KINDS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "minix"})


class DumpNotFound(KdumpError):
    """A dump named on the command line is not a dump."""


@dataclass(frozen=True)
class DumpInfo:
    """One saved dump, as the listing and the crash report show it."""

    directory: Path
    crash_time: datetime | None
    kernel_release: str | None
    cause: str | None
    complete: bool
    size: int  # bytes of all files in the directory
    saved_by: str  # the collector command line, or how else the dump got here
    vmcore: Path | None
    dmesg: Path | None
    problems: tuple[str, ...] = ()  # why it is incomplete; what the collector warned about
    collector_warnings: tuple[str, ...] = ()
    report: CrashReport | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "crash_time": self.crash_time.isoformat() if self.crash_time else None,
            "kernel_release": self.kernel_release,
            "cause": self.cause,
            "state": "complete" if self.complete else "incomplete",
            "size": self.size,
            "saved_by": self.saved_by,
            "vmcore": str(self.vmcore) if self.vmcore else None,
            "dmesg": str(self.dmesg) if self.dmesg else None,
            "problems": list(self.problems),
            "collector_warnings": list(self.collector_warnings),
        }


def dump_roots(paths: Paths, config: KdumpConfig) -> tuple[list[Path], list[str]]:
    """Directories that hold this machine's dumps, and notes on targets it cannot see."""
    notes: list[str] = []
    roots: list[Path] = []
    target = config.target
    rel = config.path.lstrip("/")
    if target is None or target.kind == "raw":
        roots.append(paths.under_root(config.path))
    elif target.kind in _FS_KINDS:
        mountpoint = _mountpoint_of(paths, target.value)
        if mountpoint is None:
            notes.append(
                f"the dump filesystem {target.value} is not mounted: mount it to list its dumps"
            )
        else:
            roots.append(paths.under_root(mountpoint) / rel)
    else:
        notes.append(f"dumps go to a {target.kind} target ({target.value}): list them there")
    # Raw-device imports and dump_to_rootfs land here whatever the target.
    if paths.var_crash not in roots:
        roots.append(paths.var_crash)
    return roots, notes


def _mountpoint_of(paths: Paths, spec: str) -> str | None:
    from kdumpd.targets import fs

    device = fs.device_for_spec(paths, spec)
    if device is None:
        return None
    for entry in reversed(fs.read_mounts(paths)):
        if entry.root == "/" and fs._same_device(paths, fs._entry_device(paths, entry), device):
            return entry.mountpoint
    return None


def list_dumps(paths: Paths, config: KdumpConfig) -> list[DumpInfo]:
    """Every dump under the configured target that this machine sees, newest first."""
    roots, _notes = dump_roots(paths, config)
    return read_dump_dirs(roots)


def read_dump_dirs(roots: Iterable[Path]) -> list[DumpInfo]:
    found: list[DumpInfo] = []
    seen: set[Path] = set()
    for root in roots:
        try:
            children = sorted(root.iterdir())
        except OSError:
            continue
        for child in children:
            if child.is_dir() and child.resolve() not in seen and is_dump_dir(child):
                seen.add(child.resolve())
                found.append(read_dump_dir(child))
    epoch = datetime.fromtimestamp(0, UTC)
    return sorted(found, key=lambda d: (d.crash_time or epoch, str(d.directory)), reverse=True)


def is_dump_dir(directory: Path) -> bool:
    names = (*VMCORE_NAMES, METADATA, DMESG, DMESG_INCOMPLETE)
    return any((directory / name).exists() for name in names)


def _metadata(directory: Path) -> tuple[dict[str, Any], str | None]:
    path = directory / METADATA
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return {}, f"{path}: unreadable capture metadata ({exc})"
    return (data, None) if isinstance(data, dict) else ({}, f"{path}: not a JSON object")


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _saved_by(meta: dict[str, Any], dump_format: str | None) -> str:
    fallback = meta.get("fallback") or {}
    if fallback.get("used"):
        return f"sparse copy of the ELF core ({fallback.get('reason') or 'collector failed'})"
    argv = (meta.get("collector") or {}).get("argv")
    if isinstance(argv, list) and argv:
        # Drop the input and output paths: the rest is how the dump was made.
        words = [str(w) for w in argv if not str(w).startswith("/")]
        return " ".join(words)
    if meta.get("imported_from"):
        return f"imported from {meta['imported_from']}"
    return dump_format or "unknown"


def read_dump_dir(directory: Path) -> DumpInfo:
    """What one dump directory holds; never raises for a damaged dump, it says so instead."""
    meta, meta_problem = _metadata(directory)
    problems = [meta_problem] if meta_problem else []
    vmcore = next((directory / n for n in VMCORE_NAMES if (directory / n).is_file()), None)
    dmesg = next(
        (directory / n for n in (DMESG, DMESG_INCOMPLETE) if (directory / n).is_file()), None
    )
    complete = vmcore is not None and "incomplete" not in vmcore.name
    if vmcore is None:
        problems.append("no vmcore file in the directory")
    elif not complete:
        problems.append(f"{vmcore.name}: the capture did not finish writing it")
    if meta.get("result") == "failure":
        complete = False
        problems.append(f"the capture failed: {meta.get('failure_reason') or 'no reason recorded'}")

    release = (meta.get("kernel_release") or {}).get("vmcoreinfo")
    crash_time = _parse_time(meta.get("crash_time"))
    dump_format = None
    log_text = None
    if dmesg is not None:
        try:
            log_text = dmesg.read_text(errors="replace")
        except OSError as exc:
            problems.append(f"{dmesg}: {exc.strerror}")
    if vmcore is not None:
        try:
            with open_dump(vmcore) as dump:
                dump_format = dump.format + (f" ({dump.compression})" if dump.compression else "")
                release = release or dump.osrelease
                if crash_time is None and dump.crash_time is not None:
                    crash_time = datetime.fromtimestamp(dump.crash_time, UTC)
                if not dump.complete:
                    complete = False
                    problems.append(f"{vmcore.name}: the dump file is marked incomplete")
                if log_text is None:
                    log_text = read_kernel_log(dump).text()
        except (DumpError, KernelLogError) as exc:
            problems.append(str(exc))
    if crash_time is None and (m := _DIR_TIME.search(directory.name)):
        crash_time = datetime.strptime(m.group(1), "%Y-%m-%d-%H:%M:%S").replace(tzinfo=UTC)
    report = triage(log_text) if log_text is not None else None
    warnings = tuple(str(w) for w in (meta.get("collector") or {}).get("warnings") or ())
    size = 0
    for child in directory.iterdir():
        if child.is_file():
            size += child.stat().st_size
    return DumpInfo(
        directory=directory,
        crash_time=crash_time,
        kernel_release=release or (report.kernel_release if report else None),
        cause=report.cause if report else None,
        complete=complete,
        size=size,
        saved_by=_saved_by(meta, dump_format),
        vmcore=vmcore,
        dmesg=dmesg,
        problems=tuple(problems),
        collector_warnings=warnings,
        report=report,
    )


def find_dump(target: Path) -> Path:
    """The dump file of ``target`` (a dump file, or a dump directory)."""
    if target.is_dir():
        for name in VMCORE_NAMES:
            if (target / name).is_file():
                return target / name
        raise DumpNotFound(
            f"{target}: no dump file in this directory (looked for {', '.join(VMCORE_NAMES)})"
        )
    if target.is_file():
        return target
    raise DumpNotFound(f"{target}: no such dump file or directory")


def crash_report(info: DumpInfo) -> str:
    """The crash report of one dump, as text."""
    when = info.crash_time.isoformat() if info.crash_time else "unknown"
    lines = [
        f"dump:      {info.directory}",
        f"state:     {'complete' if info.complete else 'incomplete'}",
        f"crashed:   {when}",
        f"saved by:  {info.saved_by}",
        f"size:      {info.size} bytes",
    ]
    if info.report is not None:
        lines += info.report.to_text().splitlines()
    else:
        lines.append("cause:     unknown (no kernel log could be read)")
        lines.append(f"kernel:    {info.kernel_release or 'unknown'}")
    if info.collector_warnings:
        lines.append("the collector warned (the dump may be filtered or incomplete):")
        lines += [f"  {w}" for w in info.collector_warnings]
    if info.problems:
        lines.append("problems:")
        lines += [f"  {p}" for p in info.problems]
    return "\n".join(lines)

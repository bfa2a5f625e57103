"""Deep analysis of a dump: find the crashed kernel's debug vmlinux, then crash or a report.

:func:`find_debug_kernel` looks for the vmlinux whose GNU build-id equals the
dump's ``BUILD-ID`` (VMCOREINFO): an explicit file, the distribution's debug
paths (Debian's ``/usr/lib/debug/boot/vmlinux-<release>``, Fedora's
``/usr/lib/debug/lib/modules/<release>/vmlinux``), the ``/usr/lib/debug/.build-id``
tree, and debuginfod (``debuginfod-find``) when ``DEBUGINFOD_URLS`` is set. When
none matches, :class:`DebugKernelMissing` names the package to install.

:func:`report` is the non-interactive report (every task with its state, the
backtraces of the panicking task and of tasks in D state, a memory summary).
It uses drgn (python3-drgn), not crash: Debian 12's crash 8.0.2 is older than
Debian 12's kernel and lists only the tasks that were running on a CPU.
"""

from __future__ import annotations

import importlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from kdumpd import proc
from kdumpd.errors import KdumpError
from kdumpd.paths import Paths

_PT_NOTE = 4
_NT_GNU_BUILD_ID = 3


class DebugKernelMissing(KdumpError):
    """No vmlinux with the dump's build-id was found."""


class AnalysisError(KdumpError):
    """The dump could not be analysed."""


def elf_build_id(path: Path) -> str | None:
    """The GNU build-id (hex) of an ELF file, from its PT_NOTE segments; None if it has none."""
    try:
        with path.open("rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
                return None
            bo = "<" if ident[5] == 1 else ">"
            phoff = struct.unpack_from(bo + "Q", ident, 32)[0]
            phentsize, phnum = struct.unpack_from(bo + "HH", ident, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                p_type, _flags, offset, _v, _p, filesz = struct.unpack_from(
                    bo + "IIQQQQ", table, i * phentsize
                )
                if p_type != _PT_NOTE or filesz > 1 << 20:
                    continue
                f.seek(offset)
                found = _gnu_build_id(f.read(filesz), bo)
                if found:
                    return found
    except (OSError, struct.error):
        return None
    return None


def _gnu_build_id(blob: bytes, bo: str) -> str | None:
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from(bo + "III", blob, pos)
        pos += 12
        name = blob[pos : pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        desc = blob[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        if name == b"GNU" and ntype == _NT_GNU_BUILD_ID:
            return desc.hex()
    return None


def debug_package(paths: Paths, release: str) -> str:
    """The distribution package that holds the debug vmlinux of ``release``."""
    try:
        os_release = paths.under_root("/etc/os-release").read_text()
    except OSError:
        os_release = ""
    ids = {
        line.split("=", 1)[1].strip().strip('"')
        for line in os_release.splitlines()
        if line.startswith(("ID=", "ID_LIKE="))
    }
    words = {w for value in ids for w in value.split()}
    if words & {"fedora", "rhel", "centos", "rocky", "almalinux"}:
        return f"kernel-debuginfo-{release}"
    if "suse" in " ".join(words):
        return "kernel-default-debuginfo"
    return f"linux-image-{release}-dbg"


@dataclass(frozen=True)
class DebugKernel:
    path: Path
    build_id: str | None
    how: str  # where it was found


def find_debug_kernel(
    paths: Paths,
    release: str | None,
    build_id: str | None,
    *,
    explicit: Path | None = None,
    environ: dict[str, str] | None = None,
) -> DebugKernel:
    """The debug vmlinux matching the dump, or DebugKernelMissing naming the package."""
    env = os.environ if environ is None else environ
    candidates: list[tuple[Path, str]] = []
    if explicit is not None:
        candidates.append((explicit, "given with --vmlinux"))
    if release:
        candidates += [
            (paths.under_root(f"/usr/lib/debug/boot/vmlinux-{release}"), "distribution debug path"),
            (
                paths.under_root(f"/usr/lib/debug/lib/modules/{release}/vmlinux"),
                "distribution debug path",
            ),
        ]
    if build_id:
        candidates.append(
            (
                paths.under_root(f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"),
                "build-id tree",
            )
        )
    mismatched: list[str] = []
    for path, how in candidates:
        if not path.is_file():
            if explicit is not None and path == explicit:
                raise DebugKernelMissing(f"{path}: no such file (given with --vmlinux)")
            continue
        found = elf_build_id(path)
        if build_id is None or found == build_id:
            return DebugKernel(path, found, how)
        mismatched.append(f"{path} has build-id {found or 'none'}")
    if build_id and env.get("DEBUGINFOD_URLS", "").strip():
        fetched = _debuginfod(build_id)
        if fetched is not None:
            return DebugKernel(fetched, build_id, "debuginfod")
    package = debug_package(paths, release) if release else "the kernel's debug package"
    detail = f" ({'; '.join(mismatched)}, the dump has {build_id})" if mismatched else ""
    raise DebugKernelMissing(
        f"no debug kernel matches this dump (kernel {release or 'unknown'}, build-id "
        f"{build_id or 'not recorded'}){detail}. Install {package} "
        f"(apt install {package} on Debian), or pass --vmlinux FILE"
        + ("" if env.get("DEBUGINFOD_URLS") else ", or set DEBUGINFOD_URLS")
        + "."
    )


def _debuginfod(build_id: str) -> Path | None:
    try:
        result = proc.run(["debuginfod-find", "debuginfo", build_id], timeout=3600)
    except (proc.ProgramError, OSError):
        return None
    path = Path(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None
    return path if path is not None and path.is_file() else None


def crash_argv(vmlinux: Path, dump: Path) -> list[str]:
    return ["crash", str(vmlinux), str(dump)]


# --- the report (drgn) ---------------------------------------------------------------


@dataclass
class TaskLine:
    pid: int
    ppid: int
    state: str
    cpu: int | None
    comm: str


@dataclass
class Report:
    kernel_release: str
    vmlinux: str
    tasks: list[TaskLine] = field(default_factory=list)
    panic_task: str | None = None
    panic_backtrace: list[str] = field(default_factory=list)
    blocked: dict[str, list[str]] = field(default_factory=dict)  # "comm (pid N)" -> frames
    memory: dict[str, int | None] = field(default_factory=dict)  # bytes
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel_release": self.kernel_release,
            "vmlinux": self.vmlinux,
            "task_count": len(self.tasks),
            "tasks": [vars(t) for t in self.tasks],
            "panic_task": self.panic_task,
            "panic_backtrace": self.panic_backtrace,
            "blocked_tasks": self.blocked,
            "memory": self.memory,
            "notes": self.notes,
        }

    def to_text(self) -> str:
        out = [f"kernel:  {self.kernel_release}", f"vmlinux: {self.vmlinux}", ""]
        out.append(f"panicking task: {self.panic_task or 'unknown'}")
        out += [f"  {frame}" for frame in self.panic_backtrace]
        out.append("")
        out.append(f"tasks: {len(self.tasks)}")
        out.append(f"{'PID':>7} {'PPID':>7} ST {'CPU':>3}  COMM")
        for t in self.tasks:
            cpu = "-" if t.cpu is None else str(t.cpu)
            out.append(f"{t.pid:>7} {t.ppid:>7} {t.state:<2} {cpu:>3}  {t.comm}")
        out.append("")
        out.append(f"tasks in D state: {len(self.blocked)}")
        for name, frames in self.blocked.items():
            out.append(f"  {name}")
            out += [f"    {frame}" for frame in frames]
        out.append("")
        out.append("memory:")
        for key, value in self.memory.items():
            shown = "unknown" if value is None else f"{value // 1024} kB"
            out.append(f"  {key:<22} {shown}")
        if self.notes:
            out.append("")
            out += [f"note: {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def _drgn() -> ModuleType:
    try:
        return importlib.import_module("drgn")
    except ImportError as exc:
        raise AnalysisError(
            "the report needs drgn: install python3-drgn (Debian 12 packages it)"
        ) from exc


def report(dump: Path, vmlinux: Path, release: str) -> Report:
    """Read tasks, backtraces and memory counters of ``dump`` with drgn and ``vmlinux``."""
    drgn = _drgn()
    helpers = importlib.import_module("drgn.helpers.linux.pid")
    sched = importlib.import_module("drgn.helpers.linux.sched")
    prog = drgn.Program()
    try:
        prog.set_core_dump(str(dump))
        prog.load_debug_info([str(vmlinux)])
    except Exception as exc:  # drgn raises its own error types and OSError
        raise AnalysisError(f"drgn cannot open {dump} with {vmlinux}: {exc}") from exc
    result = Report(kernel_release=release, vmlinux=str(vmlinux))
    for task in helpers.for_each_task(prog):
        try:
            state = sched.task_state_to_char(task)
            cpu: int | None = int(sched.task_cpu(task))
        except Exception:  # a damaged task struct: keep the task, mark what is unknown
            state, cpu = "?", None
        result.tasks.append(
            TaskLine(
                pid=int(task.pid),
                ppid=int(task.real_parent.pid) if task.real_parent else 0,
                state=state,
                cpu=cpu,
                comm=task.comm.string_().decode(errors="replace"),
            )
        )
        if state == "D":
            name = f"{result.tasks[-1].comm} (pid {result.tasks[-1].pid})"
            result.blocked[name] = _frames(prog, task, result.notes)
    try:
        crashed = prog.crashed_thread()
        comm = crashed.object.comm.string_().decode(errors="replace")
        result.panic_task = f"{comm} (pid {crashed.tid})"
        result.panic_backtrace = [_frame_text(f) for f in crashed.stack_trace()]
    except Exception as exc:
        result.notes.append(f"no backtrace of the panicking task: {exc}")
    result.memory = _memory(prog)
    return result


def _frames(prog: Any, task: Any, notes: list[str]) -> list[str]:
    try:
        return [_frame_text(f) for f in prog.stack_trace(task)]
    except Exception as exc:
        notes.append(f"no backtrace of pid {int(task.pid)}: {exc}")
        return []


def _frame_text(frame: Any) -> str:
    name = str(frame.name or "")
    if not name:
        try:
            sym = frame.symbol()
            name = f"{sym.name}+{frame.pc - sym.address:#x}"
        except (LookupError, ValueError):
            name = f"{frame.pc:#x}" if frame.pc else "??"
    try:
        source, line, _col = frame.source()
        return f"{name} ({source}:{line})"
    except LookupError:
        return name


def _memory(prog: Any) -> dict[str, int | None]:
    page = int(prog["PAGE_SIZE"]) if _has(prog, "PAGE_SIZE") else 4096

    def zone(name: str) -> int | None:
        try:
            return int(prog["vm_zone_stat"][prog.constant(name)].counter) * page
        except Exception:
            return None

    def node(name: str, unit: int = page) -> int | None:
        try:
            return int(prog["vm_node_stat"][prog.constant(name)].counter) * unit
        except Exception:
            return None

    try:
        total: int | None = int(prog["_totalram_pages"].counter) * page
    except Exception:
        total = None
    # The *_B slab counters are kept in pages in vm_node_stat (mm/vmstat.c shifts them).
    return {
        "total": total,
        "free": zone("NR_FREE_PAGES"),
        "file pages": node("NR_FILE_PAGES"),
        "anonymous pages": node("NR_ANON_MAPPED"),
        "slab reclaimable": node("NR_SLAB_RECLAIMABLE_B"),
        "slab unreclaimable": node("NR_SLAB_UNRECLAIMABLE_B"),
        "kernel stacks": node("NR_KERNEL_STACK_KB", 1024),
    }


def _has(prog: Any, name: str) -> bool:
    try:
        prog[name]
    except Exception:
        return False
    return True

"""Post-crash triage: what a saved kernel log says about the crash.

Reads the text of a crashed kernel's log (vmcore-dmesg.txt, or what
``makedumpfile --dump-dmesg`` extracts) and picks out what an administrator
reads first: the panic or oops line, the kernel and task, and the call trace.
Pure text in, :class:`CrashReport` out; rendering as text or JSON.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

# "[  483.226586] " (printk time) and "<4>" (level) prefixes, in either order.
_PREFIX = re.compile(r"^(?:<\d+>)?(?:\[\s*\d+\.\d+\]\s?)?")
# The first line that says why the kernel went down, most specific first.
_CAUSES = (
    re.compile(r"Kernel panic - not syncing: .*"),
    re.compile(r"BUG: .*"),
    re.compile(r"Oops: .*"),
    re.compile(r"general protection fault.*"),
    re.compile(r"kernel BUG at .*"),
    re.compile(r"sysrq: Trigger a crash"),
)
_TASK = re.compile(
    r"CPU: (?P<cpu>\d+) PID: (?P<pid>\d+) Comm: (?P<comm>\S+).*?(?P<release>\d+\.\S+)"
)
# Frames as x86/arm64 print them: " func+0x16/0x20", "? func+...", "[<ffff...>] func+..."
_FRAME = re.compile(
    r"^\s*(?:\?\s*)?(?:\[<[0-9a-f]+>\]\s*)?([A-Za-z0-9_.]+\+0x[0-9a-f]+/0x[0-9a-f]+)"
)


@dataclass(frozen=True)
class CrashReport:
    cause: str | None
    kernel_release: str | None
    task: str | None
    call_trace: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["call_trace"] = list(self.call_trace)
        return data

    def to_text(self) -> str:
        lines = [
            f"cause:   {self.cause or 'unknown (no panic or oops line in the log)'}",
            f"kernel:  {self.kernel_release or 'unknown'}",
            f"task:    {self.task or 'unknown'}",
        ]
        if self.call_trace:
            lines.append("call trace (reliable frames):")
            lines += [f"  {frame}" for frame in self.call_trace]
        return "\n".join(lines)


def _strip(line: str) -> str:
    return _PREFIX.sub("", line.rstrip())


def triage(log_text: str, *, max_frames: int = 16) -> CrashReport:
    """Read the crash out of a kernel log: the LAST panic in the log is the one that counts."""
    lines = [_strip(line) for line in log_text.splitlines()]
    cause_at = None
    cause = None
    for pattern in _CAUSES:
        for index in range(len(lines) - 1, -1, -1):
            match = pattern.search(lines[index])
            if match:
                cause_at, cause = index, match.group(0)
                break
        if cause is not None:
            break
    start = cause_at if cause_at is not None else 0
    task = release = None
    frames: list[str] = []
    in_trace = False
    for line in lines[start:]:
        if task is None and (m := _TASK.search(line)):
            task = f"{m['comm']} (pid {m['pid']}, cpu {m['cpu']})"
            release = m["release"]
        if "Call Trace:" in line:
            if frames:
                break
            in_trace = True
            continue
        if in_trace:
            if line.strip() in ("<TASK>", "<IRQ>", "</IRQ>"):
                continue
            if line.strip() == "</TASK>" or not line.strip():
                break
            frame = _FRAME.match(line)
            if frame is None:
                if frames:
                    break
                continue
            # "? func" frames are guesses the unwinder could not confirm: leave them out.
            if not line.lstrip().startswith("?"):
                frames.append(frame.group(1))
            if len(frames) >= max_frames:
                break
    return CrashReport(cause=cause, kernel_release=release, task=task, call_trace=tuple(frames))

"""What the agent does when it is done: reboot, halt, poweroff, or a shell.

Actions are carried out through an injectable :data:`ActionExecutor`, so tests
(and ``--dry-run-actions``) see which action was chosen without rebooting.
Under dracut's systemd initrd systemctl acts (:func:`systemctl_executor`);
under kdumpd's small init there is no systemd and the kernel acts
(:class:`KernelExecutor`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from kdumpd import proc
from kdumpd.errors import KdumpError
from kdumpd.mountinfo import parse_mountinfo

# Inside the initramfs systemd is PID 1; -f skips the orderly shutdown of
# units, as kdump-utils does (nothing in the capture kernel is worth saving).
_SYSTEMCTL = {
    "reboot": ("systemctl", "reboot", "-f"),
    "halt": ("systemctl", "halt", "-f"),
    "poweroff": ("systemctl", "poweroff", "-f"),
}

ActionExecutor = Callable[[str], None]


class ActionError(KdumpError):
    """An action could not be carried out."""


def _shell() -> None:
    """The emergency shell: interactive, on the console; its exit code does not matter."""
    print(
        "Entering kdump emergency mode. Type 'exit' to continue with the final action.",
        file=sys.stderr,
        flush=True,
    )
    proc.run(["sh", "-i", "-l"], interactive=True, timeout=None, ok_codes=range(256))


def systemctl_executor(action: str) -> None:
    """Carry out ``action`` for real: systemctl for the power actions, sh for the shell."""
    if action == "shell":
        _shell()
        return
    argv = _SYSTEMCTL.get(action)
    if argv is None:
        raise ActionError(f"unknown action {action!r}; expected one of {', '.join(_SYSTEMCTL)}")
    proc.run(argv, timeout=60)


#: /proc/sysrq-trigger commands; writes to it work whatever kernel.sysrq says.
_SYSRQ = {"reboot": b"b", "poweroff": b"o"}


def release_filesystems(mountinfo: Path) -> None:
    """Unmount block-device filesystems, newest first; remount read-only what stays busy.

    The kernel's reboot skips both, and a clean filesystem needs no journal replay.
    (The agent's python may run from one of them: that one is remounted read-only.)
    """
    try:
        entries = parse_mountinfo(mountinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return
    for entry in reversed(entries):
        if not entry.source.startswith("/dev/") or entry.mountpoint == "/":
            continue
        for argv in (["umount", entry.mountpoint], ["mount", "-o", "remount,ro", entry.mountpoint]):
            try:
                proc.run(argv, timeout=60)
                break
            except proc.ProgramError:
                continue


class KernelExecutor:
    """Carry out an action without systemd (kdumpd's small init): the kernel acts.

    ``sysrq`` and ``mountinfo`` are the kernel's files (tests point them elsewhere);
    ``sleep`` waits. halt stops here for good: the init waits for the agent, which
    never returns.
    """

    def __init__(
        self,
        sysrq: Path = Path("/proc/sysrq-trigger"),
        mountinfo: Path = Path("/proc/self/mountinfo"),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sysrq = sysrq
        self.mountinfo = mountinfo
        self.sleep = sleep

    def __call__(self, action: str) -> None:
        if action == "shell":
            _shell()
            return
        if action not in _SYSTEMCTL:
            raise ActionError(f"unknown action {action!r}; expected one of {', '.join(_SYSTEMCTL)}")
        os.sync()
        release_filesystems(self.mountinfo)
        os.sync()
        if action == "halt":
            print("kdumpd: halted; reset the machine to go on", file=sys.stderr, flush=True)
            while True:
                self.sleep(3600)
        try:
            self.sysrq.write_bytes(_SYSRQ[action])
        except OSError as exc:
            raise ActionError(f"{action} through {self.sysrq} failed: {exc}") from exc
        self.sleep(60)  # the kernel is resetting the machine
        raise ActionError(f"{action} through {self.sysrq} did not happen within 60 s")


class PrintingExecutor:
    """``--dry-run-actions``: print ``ACTION: <name>`` instead of doing it, and remember it."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.done: list[str] = []

    def __call__(self, action: str) -> None:
        self.done.append(action)
        print(f"ACTION: {action}", file=self.out, flush=True)

"""What the agent does when it is done: reboot, halt, poweroff, or a shell.

Actions are carried out through an injectable :data:`ActionExecutor`, so tests
(and ``--dry-run-actions``) see which action was chosen without rebooting.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from kdumpd import proc
from kdumpd.errors import KdumpError

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


def systemctl_executor(action: str) -> None:
    """Carry out ``action`` for real: systemctl for the power actions, sh for the shell."""
    if action == "shell":
        # The emergency shell: interactive, on the console; its exit code does not matter.
        print(
            "Entering kdump emergency mode. Type 'exit' to continue with the final action.",
            file=sys.stderr,
            flush=True,
        )
        proc.run(["sh", "-i", "-l"], interactive=True, timeout=None, ok_codes=range(256))
        return
    argv = _SYSTEMCTL.get(action)
    if argv is None:
        raise ActionError(f"unknown action {action!r}; expected one of {', '.join(_SYSTEMCTL)}")
    proc.run(argv, timeout=60)


class PrintingExecutor:
    """``--dry-run-actions``: print ``ACTION: <name>`` instead of doing it, and remember it."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.done: list[str] = []

    def __call__(self, action: str) -> None:
        self.done.append(action)
        print(f"ACTION: {action}", file=self.out, flush=True)

"""The one exception root of kdumpd, exit codes, and the sentence a user sees.

Every failure kdumpd raises derives from :class:`KdumpError`. The CLI and the
D-Bus adapter turn it into an exit code or a named D-Bus error with
:func:`user_message`, which walks the ``__cause__`` chain for the most useful
sentence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Process exit codes, kept compatible with kdumpctl."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    # LSB "program is not running": kdumpctl status when kdump is not operational.
    NOT_OPERATIONAL = 3


class KdumpError(Exception):
    """Root of every error kdumpd raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILURE
    dbus_name: str = "org.kdumpd.Error.Failed"


@dataclass(frozen=True)
class Problem:
    """One mistake found in a file, located by file and line (0 = whole file)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class ConfigError(KdumpError):
    """A configuration file is invalid; carries every problem found, not just the first."""

    dbus_name = "org.kdumpd.Error.InvalidConfig"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class TargetError(KdumpError):
    """The dump target cannot be used or written: missing, of the wrong type, unsupported, full.

    ``errno`` is the OS error behind it when there is one (ENOSPC: the target is full).
    """

    dbus_name = "org.kdumpd.Error.InvalidTarget"

    def __init__(self, message: str, error_number: int | None = None) -> None:
        super().__init__(message)
        self.errno = error_number


class BuildError(KdumpError):
    """The capture initramfs could not be built."""

    dbus_name = "org.kdumpd.Error.BuildFailed"


class UnsupportedCommand(KdumpError):
    """A kdumpctl command that exists in kdump-utils but not (yet) here."""

    exit_code = ExitCode.FAILURE
    dbus_name = "org.kdumpd.Error.NotSupported"


def user_message(error: BaseException) -> str:
    """The sentence to show a user: the outermost KdumpError text, with its causes.

    Programs fail deep down (``ProgramError``) and are re-raised with context
    ("building the capture initramfs failed"); the user needs both lines.
    """
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__
    return "\n".join(parts) if parts else type(error).__name__

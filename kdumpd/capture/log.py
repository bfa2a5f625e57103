"""The agent's log: what it prints on the console, kept for kexec-dmesg.log."""

from __future__ import annotations

import sys
import time
from typing import TextIO

PREFIX = "kdumpd: "


class CaptureLog:
    """Prints each message on the console and keeps it for the saved log."""

    def __init__(self, console: TextIO | None = None) -> None:
        self.console = console if console is not None else sys.stderr
        self.lines: list[str] = []
        self._start = time.monotonic()

    def info(self, message: str) -> None:
        """One line for the console and the log, stamped with seconds since start."""
        line = f"[{time.monotonic() - self._start:8.3f}] {PREFIX}{message}"
        self.lines.append(line)
        print(f"{PREFIX}{message}", file=self.console, flush=True)

    def keep(self, text: str, label: str) -> None:
        """Output already shown on the console (a collector's), kept for the log only."""
        # Progress lines end in carriage returns; keep only what a reader needs.
        lines = [part.rsplit("\r", 1)[-1] for part in text.splitlines()]
        self.lines.extend(f"{label}: {line}" for line in lines if line.strip())

    def passthrough(self, chunk: bytes) -> None:
        """A collector's own output (progress with carriage returns) to the console as is."""
        buffer = getattr(self.console, "buffer", None)
        if buffer is not None:
            buffer.write(chunk)
            buffer.flush()
        else:
            self.console.write(chunk.decode(errors="replace"))
            self.console.flush()

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

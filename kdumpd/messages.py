"""How use cases speak to the administrator: kdump-utils style lines, or a record for JSON.

Use cases (kdumpd.manager, the CLI's read-only commands) never print. They take a
:class:`Messages` and call ``info``/``warn``/``error``. The CLI builds a
:class:`ConsoleMessages` (``kdump: `` prefixed lines on stderr, as kdumpctl does,
so scripts that grep them keep working) or a :class:`RecordedMessages` whose
entries go into ``--json`` output.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol, TextIO


class Messages(Protocol):
    def info(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def error(self, text: str) -> None: ...


@dataclass
class ConsoleMessages:
    """Lines as kdumpctl prints them: ``kdump: <text>``, warnings with ``WARNING:``."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)

    def info(self, text: str) -> None:
        self._emit(text)

    def warn(self, text: str) -> None:
        self._emit(text if text.startswith("WARNING:") else f"WARNING: {text}")

    def error(self, text: str) -> None:
        self._emit(text)

    def _emit(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            print(f"kdump: {line}", file=self.stream, flush=True)


@dataclass
class RecordedMessages:
    """Keeps every message with its level, for JSON output and tests."""

    entries: list[tuple[str, str]] = field(default_factory=list)

    def info(self, text: str) -> None:
        self.entries.append(("info", text))

    def warn(self, text: str) -> None:
        self.entries.append(("warning", text))

    def error(self, text: str) -> None:
        self.entries.append(("error", text))

    def as_json(self) -> list[dict[str, str]]:
        return [{"level": level, "text": text} for level, text in self.entries]

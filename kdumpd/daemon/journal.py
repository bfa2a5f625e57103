"""Structured journal entries: one MESSAGE_ID per key event, and Messages for the use cases.

The IDs are the keys of the message catalog installed as
``/usr/lib/systemd/catalog/kdumpd.catalog`` (``journalctl -x`` explains each).
Arming messages carry ``SYSLOG_IDENTIFIER=kdumpctl``, one message per line, and
``OBJECT_SYSTEMD_UNIT=kdump.service`` so that Cockpit's
``journalctl -u kdump.service --identifier=kdumpctl`` finds them.
The sender is injectable; without python-systemd (or a journal) lines go to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

#: MESSAGE_IDs, one per key event; keep in step with units/kdumpd.catalog.
ARMED = "0d66d7937e2e42a1b9f38f8ccd6502bf"
ARMING_FAILED = "48ab7e9886114308be67d0699c9842b5"
CONFIG_REJECTED = "5bcae3c1c89e423d926d2fee647ae56d"
HOTPLUG_RELOADED = "530df6ae08d64e2a93f051fcfebff709"
DUMP_FOUND = "c060234994744ddba6923abd9b6edeb5"
RAW_IMPORTED = "5896bab0a82f4bb2b33e959f4f7e8fdd"
DUMP_DELETED = "6b30988232544ce987076388c0e6fd60"

MESSAGE_IDS = {
    "armed": ARMED,
    "arming-failed": ARMING_FAILED,
    "config-rejected": CONFIG_REJECTED,
    "hotplug-reloaded": HOTPLUG_RELOADED,
    "dump-found": DUMP_FOUND,
    "raw-imported": RAW_IMPORTED,
    "dump-deleted": DUMP_DELETED,
}

UNIT = "kdump.service"
ARMING_IDENTIFIER = "kdumpctl"
DAEMON_IDENTIFIER = "kdumpd"

# syslog priorities
ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6

Sender = Callable[..., object]


def _stderr_sender(MESSAGE: str, **fields: object) -> None:
    print(MESSAGE, file=sys.stderr, flush=True)


def default_sender() -> Sender:
    """systemd.journal.send, or plain stderr lines when python-systemd is missing."""
    try:
        from systemd import journal
    except ImportError:
        return _stderr_sender
    return journal.send  # type: ignore[no-any-return]


@dataclass
class Journal:
    """Writes kdumpd's entries; ``sender`` takes MESSAGE plus journal fields as keywords."""

    sender: Sender = field(default_factory=default_sender)

    def event(self, kind: str, message: str, *, priority: int = NOTICE, **fields: str) -> None:
        """A key event: MESSAGE_ID from :data:`MESSAGE_IDS`, extra fields upper-cased."""
        extra = {key.upper(): value for key, value in fields.items()}
        self._send(
            message,
            MESSAGE_ID=MESSAGE_IDS[kind],
            PRIORITY=str(priority),
            SYSLOG_IDENTIFIER=DAEMON_IDENTIFIER,
            **extra,
        )

    def line(self, text: str, *, priority: int, identifier: str = ARMING_IDENTIFIER) -> None:
        for one in text.splitlines() or [""]:
            self._send(one, PRIORITY=str(priority), SYSLOG_IDENTIFIER=identifier)

    def _send(self, message: str, **fields: str) -> None:
        try:
            self.sender(MESSAGE=message, OBJECT_SYSTEMD_UNIT=UNIT, **fields)
        except (OSError, ValueError):
            # The journal is gone (shutdown) or refuses the entry: the log is
            # best effort, the daemon's work is not.
            _stderr_sender(message)


@dataclass
class JournalMessages:
    """Messages (kdumpd.messages) that go to the journal as kdumpctl lines, and are kept.

    ``lines`` keeps them as kdumpctl prints them (warnings with ``WARNING:``)
    so that a D-Bus caller (kdumpctl) can print the very same output.
    """

    journal: Journal
    lines: list[str] = field(default_factory=list)

    def info(self, text: str) -> None:
        self._add(text, INFO)

    def warn(self, text: str) -> None:
        self._add(text if text.startswith("WARNING:") else f"WARNING: {text}", WARNING)

    def error(self, text: str) -> None:
        self._add(text, ERR)

    def _add(self, text: str, priority: int) -> None:
        self.lines.extend(text.splitlines() or [""])
        self.journal.line(text, priority=priority)

"""sd_notify for a Type=notify unit, wrapped so that it never raises.

python-systemd's ``notify`` raises when NOTIFY_SOCKET names a socket that is
gone or unreachable; a status line must never take the daemon down, so every
failure is swallowed here and reported as False.
"""

from __future__ import annotations

from collections.abc import Callable

Sender = Callable[[str], object]


def _systemd_sender() -> Sender | None:
    try:
        from systemd import daemon
    except ImportError:
        return None
    return daemon.notify  # type: ignore[no-any-return]


class Notifier:
    """Sends READY=1, RELOADING=1, STOPPING=1 and STATUS= lines to the service manager."""

    def __init__(self, sender: Sender | None = None) -> None:
        self._send = sender if sender is not None else _systemd_sender()

    def send(self, text: str) -> bool:
        """Send ``text``; False when there is no manager to hear it or sending failed."""
        if self._send is None:
            return False
        try:
            return bool(self._send(text))
        except (OSError, ValueError):
            return False

    def ready(self, status: str) -> bool:
        return self.send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> bool:
        return self.send("RELOADING=1\nSTATUS=re-arming")

    def reloaded(self, status: str) -> bool:
        return self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1\nSTATUS=stopping")

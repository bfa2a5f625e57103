"""CPU and memory hotplug from udev, read on the GLib main loop.

A pyudev netlink monitor filtered to the ``memory`` and ``cpu`` subsystems;
its socket is a GLib io watch, so no thread polls. Add, remove, online and
offline events poke a debouncer: a burst of dozens of memory blocks becomes
one reload once it settles.
"""

from __future__ import annotations

from typing import Any

from gi.repository import GLib

from kdumpd.daemon.debounce import Debouncer

SUBSYSTEMS = ("memory", "cpu")
ACTIONS = frozenset({"add", "remove", "online", "offline"})


def relevant(subsystem: str | None, action: str | None) -> bool:
    """Events that change what the capture kernel must know about memory and CPUs."""
    return subsystem in SUBSYSTEMS and action in ACTIONS


class HotplugWatch:
    """Feeds relevant udev events of ``monitor`` (a pyudev.Monitor) to ``debouncer``."""

    def __init__(self, monitor: Any, debouncer: Debouncer) -> None:
        self.monitor = monitor
        self.debouncer = debouncer
        for subsystem in SUBSYSTEMS:
            monitor.filter_by(subsystem)
        monitor.start()
        self._source = GLib.io_add_watch(
            monitor.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN, self._readable
        )

    @classmethod
    def from_udev(cls, debouncer: Debouncer) -> HotplugWatch:
        import pyudev

        return cls(pyudev.Monitor.from_netlink(pyudev.Context()), debouncer)

    def _readable(self, fd: int, condition: int) -> bool:
        del fd, condition
        while True:
            device = self.monitor.poll(timeout=0)
            if device is None:
                return True  # keep watching
            if relevant(device.subsystem, device.action):
                self.debouncer.poke()

    def close(self) -> None:
        if self._source:
            GLib.source_remove(self._source)
            self._source = 0

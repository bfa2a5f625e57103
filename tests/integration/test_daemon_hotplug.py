"""A burst of injected udev events gives exactly one reload (real GLib loop, io watch, timer).

The monitor stands in for pyudev's: a socket pair whose read end is what GLib
watches (as it watches the netlink socket), and ``poll`` hands out the queued
devices. The core, the manager's reload and the tree loader are the real ones.
"""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gi.repository import GLib

from kdumpd import manager
from kdumpd.daemon.core import ARMED, Core
from kdumpd.daemon.debounce import Debouncer
from kdumpd.daemon.hotplug import HotplugWatch
from kdumpd.daemon.journal import Journal
from kdumpd.daemon.notify import Notifier
from kdumpd.paths import Paths
from tests.support.daemon_env import FAKE_DRACUT, make_tree, write

pytestmark = pytest.mark.integration


@dataclass
class Device:
    subsystem: str
    action: str


class InjectedMonitor:
    """pyudev.Monitor's surface as HotplugWatch uses it, fed by the test."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.queue: deque[Device] = deque()
        self.filters: list[str] = []
        self.started = False

    def filter_by(self, subsystem: str) -> None:
        self.filters.append(subsystem)

    def start(self) -> None:
        self.started = True

    def fileno(self) -> int:
        return self.reader.fileno()

    def inject(self, device: Device) -> None:
        self.queue.append(device)
        self.writer.send(b"x")

    def poll(self, timeout: float = 0) -> Device | None:
        if not self.queue:
            return None
        self.reader.recv(1)
        return self.queue.popleft()


@pytest.fixture
def core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Core:
    root = tmp_path / "root"
    make_tree(root)
    bin_dir = tmp_path / "bin"
    write(bin_dir / "dracut", FAKE_DRACUT.format(count=tmp_path / "builds")).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    notes: list[str] = []
    journal_entries: list[dict[str, Any]] = []
    daemon = Core(
        Paths(root=root),
        journal=Journal(sender=lambda **fields: journal_entries.append(fields)),
        notifier=Notifier(sender=notes.append),
        loader=manager.TreeLoader(),
        arch="x86_64",
    )
    daemon.entries = journal_entries  # type: ignore[attr-defined]
    assert daemon.startup()
    return daemon


def test_a_burst_of_memory_events_gives_one_reload(core: Core) -> None:
    loop = GLib.MainLoop()
    reloads: list[int] = []

    def settled(count: int) -> None:
        reloads.append(count)
        core.hotplug_settled(count)
        loop.quit()

    monitor = InjectedMonitor()
    watch = HotplugWatch(monitor, Debouncer(200, settled))
    assert monitor.started and monitor.filters == ["memory", "cpu"]
    for block in range(40):
        monitor.inject(Device("memory", "add"))
        monitor.inject(Device("memory", "online"))
        if block % 10 == 0:
            monitor.inject(Device("block", "change"))  # not ours: ignored
    guard = GLib.timeout_add_seconds(60, loop.quit)  # a bound, not a measurement
    loop.run()
    GLib.source_remove(guard)
    watch.close()
    assert reloads == [80]
    assert core.counters.hotplug_reloads == 1
    assert core.state == ARMED
    hotplug = [e for e in core.entries if e.get("MESSAGE_ID") == "530df6ae08d64e2a93f051fcfebff709"]  # type: ignore[attr-defined]
    assert len(hotplug) == 1 and "80 events" in hotplug[0]["MESSAGE"]


def test_no_reload_where_the_kernel_updates_the_crash_headers(core: Core) -> None:
    write(core.paths.sys_memory / "crash_hotplug", "1\n")
    assert core.hotplug_settled(12) is False
    assert core.counters.hotplug_reloads == 0

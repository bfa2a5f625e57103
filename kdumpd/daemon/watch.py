"""File monitors on the inputs of arming (kdump.conf, variables files, hooks, ssh key).

Gio monitors the directories that hold the inputs (a file replaced by rename
is a new inode: watching the file itself would lose it). Any event on a
watched name pokes a debouncer; whether the content really changed is the
core's decision (content hash), so Ansible's ``kdump.conf.<time>~`` backups
and touches cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gi.repository import Gio

from kdumpd.daemon.debounce import Debouncer


class InputWatch:
    """Monitors ``files`` (through their directories) and everything inside ``dirs``."""

    def __init__(self, files: Iterable[Path], dirs: Iterable[Path], debouncer: Debouncer) -> None:
        self.debouncer = debouncer
        self.names: dict[Path, set[str]] = {}
        self.whole: set[Path] = set()
        for file in files:
            self.names.setdefault(file.parent, set()).add(file.name)
        for directory in dirs:
            self.whole.add(directory)
            # the directory itself may be created or removed: watch it in its parent
            self.names.setdefault(directory.parent, set()).add(directory.name)
        self._monitors: list[Any] = []
        for directory in sorted(set(self.names) | self.whole):
            if not directory.is_dir():
                continue
            monitor = Gio.File.new_for_path(str(directory)).monitor_directory(
                Gio.FileMonitorFlags.WATCH_MOVES, None
            )
            monitor.connect("changed", self._changed, directory)
            self._monitors.append(monitor)

    def _relevant(self, directory: Path, file: Any) -> bool:
        if file is None:
            return False
        name = Path(file.get_path()).name
        return directory in self.whole or name in self.names.get(directory, set())

    def _changed(self, monitor: Any, file: Any, other: Any, event: Any, directory: Path) -> None:
        del monitor, event
        if self._relevant(directory, file) or self._relevant(directory, other):
            self.debouncer.poke()

    def close(self) -> None:
        for monitor in self._monitors:
            monitor.cancel()
        self._monitors.clear()

"""A GLib timer that fires once after events stop arriving for a while."""

from __future__ import annotations

from collections.abc import Callable

from gi.repository import GLib


class Debouncer:
    """Calls ``action(count)`` once, ``delay_ms`` after the last of a burst of ``poke()``s.

    Editors write a file several times and tools rename a new file over it;
    dozens of memory blocks come online one by one. Each burst becomes one call.
    """

    def __init__(self, delay_ms: int, action: Callable[[int], object]) -> None:
        self.delay_ms = delay_ms
        self.action = action
        self._source = 0
        self._count = 0

    def poke(self) -> None:
        self._count += 1
        if self._source:
            GLib.source_remove(self._source)
        self._source = GLib.timeout_add(self.delay_ms, self._fire)

    @property
    def pending(self) -> bool:
        return bool(self._source)

    def _fire(self) -> bool:
        self._source = 0
        count, self._count = self._count, 0
        self.action(count)
        return False  # GLib.SOURCE_REMOVE: one shot

    def cancel(self) -> None:
        if self._source:
            GLib.source_remove(self._source)
            self._source = 0

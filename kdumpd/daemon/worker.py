"""One worker thread for the arming work, so the main loop keeps answering.

dracut runs for minutes; while it does, D-Bus status calls, property reads
and file events must still be served. Every job that arms, disarms or builds
runs here, one at a time and in order (which also keeps two re-arms from
overlapping); its result comes back to the GLib main loop through
``GLib.idle_add``, where callbacks run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gi.repository import GLib

Done = Callable[[Any, BaseException | None], None]


@dataclass
class _Job:
    run: Callable[[], Any]
    done: Done | None


class Worker:
    """A FIFO of jobs run by one daemon thread; ``done(result, error)`` runs on the main loop."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kdumpd-worker", daemon=True)
        self._thread.start()

    def submit(self, run: Callable[[], Any], done: Done | None = None) -> None:
        self._jobs.put(_Job(run, done))

    @property
    def busy(self) -> bool:
        return self._busy.is_set() or not self._jobs.empty()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._busy.set()
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.run()
            except Exception as exc:
                error = exc
            finally:
                self._busy.clear()
            if job.done is not None:
                GLib.idle_add(self._deliver, job.done, result, error)

    @staticmethod
    def _deliver(done: Done, result: Any, error: BaseException | None) -> bool:
        done(result, error)
        return False  # one shot

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued jobs, then stop the thread."""
        self._jobs.put(None)
        self._thread.join(timeout)


def on_main_loop(callback: Callable[[], None]) -> Callable[[], None]:
    """``callback`` wrapped to run on the main loop whatever thread calls it."""

    def once() -> bool:
        callback()
        return False  # one shot

    def schedule() -> None:
        GLib.idle_add(once)

    return schedule

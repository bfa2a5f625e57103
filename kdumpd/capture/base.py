"""What the agent needs from a dump target: a file target or a stream target.

A filesystem target (:class:`FileSink`) hands out local paths that the
collector writes itself. Raw and ssh targets (:class:`StreamSink`) have no
local path: the collector writes a makedumpfile flattened stream (``-F``) to
its standard output, and the target takes it from there, into the device or
through ssh into ``dd`` on the server. One module per kind implements one of
them (:mod:`.fs`, :mod:`.raw`, :mod:`.ssh`); :mod:`.sinks` picks it for a plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from kdumpd.errors import TargetError
from kdumpd.paths import Paths

# systemd's DefaultTimeoutStartSec in the kdump image; a device slower than
# this to appear will not appear.
DEVICE_WAIT_SECONDS = 300.0


class FileSink(Protocol):
    """A dump target that hands out local paths for the collector to write."""

    @property
    def location(self) -> str: ...

    def prepare(self, when: datetime) -> None: ...

    def output_path(self, name: str) -> Path: ...

    def finish_file(self, incomplete: str, final: str) -> None: ...

    def write_small_file(self, name: str, data: bytes) -> None: ...


@runtime_checkable
class StreamSink(Protocol):
    """A dump target that receives program output rather than handing out file paths."""

    #: Whether the target keeps files beside the dump (dmesg, log, metadata); raw does not.
    keeps_files: bool
    #: Name of the finished dump (ssh: vmcore.flat); "" when the target names nothing.
    vmcore_name: str

    @property
    def location(self) -> str: ...

    @property
    def ready(self) -> bool:
        """Whether prepare() made the place the record files go (when it keeps files)."""
        ...

    def prepare(self, when: datetime) -> None: ...

    def save_stream(
        self,
        argv: Sequence[str],
        incomplete: str,
        final: str,
        *,
        on_output: Callable[[bytes], None] | None = None,
    ) -> None:
        """Run ``argv``, store its standard output as ``incomplete``, then rename it ``final``."""
        ...

    def write_small_file(self, name: str, data: bytes) -> None: ...


Sink = FileSink | StreamSink


def wait_for_device(
    paths: Paths,
    device: str,
    *,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wait until a /dev node exists (udev may still be creating it); raise TargetError."""
    if not device.startswith("/dev/"):
        return  # tmpfs, virtiofs tags, host:/export...: nothing to wait for
    node = paths.under_root(device)
    deadline = clock() + timeout
    while not node.exists():
        if clock() >= deadline:
            raise TargetError(
                f"dump target device {device} did not appear within {timeout:.0f} s; "
                "check that its driver is in the capture initramfs (kdumpctl rebuild)"
            )
        sleep(0.5)

"""What the agent needs from a stream target (raw, ssh): somewhere to pour a program's output.

A filesystem target (:class:`kdumpd.capture.fs.DumpSink`) hands out local
paths that the collector writes itself. Raw and ssh targets have no local
path: the collector writes a makedumpfile flattened stream (``-F``) to its
standard output, and the target takes it from there, into the device or
through ssh into ``dd`` on the server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class StreamSink(Protocol):
    """A dump target that receives program output rather than handing out file paths."""

    #: Whether the target keeps files beside the dump (dmesg, log, metadata); raw does not.
    keeps_files: bool
    #: Name of the finished dump (ssh: vmcore.flat); "" when the target names nothing.
    vmcore_name: str

    @property
    def location(self) -> str: ...

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

"""The raw target, capture side: the collector's flattened stream straight onto the device.

As kdump-utils (§5.5 dump_raw): ``makedumpfile -F ... /proc/vmcore`` is
written from offset 0 of the device, and nothing else is stored: no dmesg
file, no log, no metadata (the device holds one stream, and the next boot's
import, :func:`kdumpd.postcrash.raw_import.import_raw_dump`, extracts the kernel log
from the dump itself). A stream cut short (a full device, a second crash)
lacks its end marker and is recognised as incomplete by the import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kdumpd import proc
from kdumpd.capture.base import DEVICE_WAIT_SECONDS, wait_for_device
from kdumpd.capture.log import CaptureLog
from kdumpd.contract.plan import RawTarget
from kdumpd.errors import TargetError
from kdumpd.paths import Paths


@dataclass
class RawDump:
    """A raw block device that receives one flattened dump stream."""

    paths: Paths
    target: RawTarget
    log: CaptureLog
    device_timeout: float = DEVICE_WAIT_SECONDS
    keeps_files: bool = field(default=False, init=False)
    vmcore_name: str = field(default="", init=False)

    @property
    def device(self) -> str:
        return self.target.device

    @property
    def location(self) -> str:
        return self.target.device

    @property
    def ready(self) -> bool:
        return False  # a raw device keeps no record files

    def prepare(self, when: datetime) -> None:
        """Wait for the device node (udev may still be creating it); a raw device holds one
        stream, not a dated directory, so ``when`` names nothing."""
        wait_for_device(self.paths, self.device, timeout=self.device_timeout)
        self.log.info(f"saving to the raw device {self.device}")

    def save_stream(
        self,
        argv: Sequence[str],
        incomplete: str,
        final: str,
        *,
        on_output: Callable[[bytes], None] | None = None,
    ) -> None:
        """Run ``argv`` with its output on the device from offset 0, then flush the device.

        ``incomplete`` and ``final`` name nothing: the stream's end marker is what says
        "complete".
        """
        node = self.paths.under_root(self.device)
        try:
            fd = os.open(node, os.O_WRONLY)
        except OSError as exc:
            raise TargetError(f"cannot open {self.device}: {exc.strerror}", exc.errno) from exc
        with os.fdopen(fd, "wb") as out:
            proc.run(argv, stdout=out, timeout=None, on_output=on_output)
            try:
                os.fsync(out.fileno())
            except OSError as exc:
                raise TargetError(
                    f"flushing the dump to {self.device} failed: {exc.strerror}", exc.errno
                ) from exc

    def write_small_file(self, name: str, data: bytes) -> None:
        """A raw device keeps only the stream."""
        raise TargetError(f"a raw target keeps no {name}; it stays on the console")

"""The filesystem target: mount, make the dump directory, write the files.

Layout, as kdump-utils: ``<mountpoint>/<path>/<address>-<YYYY-MM-DD-HH:MM:SS>/``
holding ``vmcore-dmesg.txt``, ``vmcore`` (``vmcore-incomplete`` until complete),
``kexec-dmesg.log`` and our ``kdumpd-metadata.json``. With ``mount: null`` the
target path is a directory of the (already mounted) root, which is also how
tests point the agent at a temporary directory.

raw and ssh targets take a stream instead of a path: :mod:`kdumpd.capture.stream`.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from kdumpd import proc
from kdumpd.capture.log import CaptureLog
from kdumpd.errors import KdumpError
from kdumpd.paths import Paths
from kdumpd.plan import MountSpec, TargetSpec

LOCAL_ADDRESS = "127.0.0.1"
# systemd's DefaultTimeoutStartSec in the kdump image; a device slower than
# this to appear will not appear.
DEVICE_WAIT_SECONDS = 300.0
# Room kept for the log and metadata before the vmcore may fill the target, so
# that a full disk still leaves the record of why.
RESERVED_BYTES = {"kexec-dmesg.log": 512 * 1024, "kdumpd-metadata.json": 64 * 1024}

VMCORE = "vmcore"
VMCORE_INCOMPLETE = "vmcore-incomplete"
DMESG = "vmcore-dmesg.txt"
DMESG_INCOMPLETE = "vmcore-dmesg-incomplete.txt"
LOG = "kexec-dmesg.log"
METADATA = "kdumpd-metadata.json"


class TargetError(KdumpError):
    """The dump target could not be prepared or written."""

    def __init__(self, message: str, error_number: int | None = None) -> None:
        super().__init__(message)
        self.errno = error_number


class DumpSink(Protocol):
    """What the agent needs from a target (fs now; raw and ssh later)."""

    @property
    def location(self) -> str: ...

    def prepare(self, when: datetime) -> None: ...

    def output_path(self, name: str) -> Path: ...

    def finish_file(self, incomplete: str, final: str) -> None: ...

    def write_small_file(self, name: str, data: bytes) -> None: ...


def dump_dir_name(address: str, when: datetime) -> str:
    """``127.0.0.1-2024-06-23-21:27:26``, as kdump-utils names dump directories."""
    return f"{address}-{when:%Y-%m-%d-%H:%M:%S}"


def is_mounted(paths: Paths, mountpoint: str) -> bool:
    """Whether ``mountpoint`` (a path of the system under ``paths``) is a mount point."""
    try:
        text = paths.proc_mounts.read_text()
    except OSError:
        return False
    wanted = {mountpoint.rstrip("/") or "/", str(paths.under_root(mountpoint)).rstrip("/")}
    for line in text.splitlines():
        fields = line.split()
        # mountinfo: id parent major:minor root mountpoint ...; octal escapes for spaces.
        if len(fields) > 4 and _unescape(fields[4]) in wanted:
            return True
    return False


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as \\ooo octal escapes.
    # (Not codecs' unicode_escape: the capture image carries only the codecs the
    # agent imports at build time, and that one is loaded lazily.)
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


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


@dataclass
class FsDump:
    """A dump directory on a filesystem target."""

    paths: Paths
    target: TargetSpec
    log: CaptureLog
    address: str = LOCAL_ADDRESS
    device_timeout: float = DEVICE_WAIT_SECONDS
    directory: Path | None = None

    @property
    def location(self) -> str:
        return str(self.directory) if self.directory else self.target.path

    def prepare(self, when: datetime) -> None:
        """Mount if needed, create the dump directory (0700) and reserve the record files."""
        base = self._mount_base()
        directory = base / dump_dir_name(self.address, when)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise TargetError(
                f"cannot create dump directory {directory}: {exc}", exc.errno
            ) from exc
        self.directory = directory
        self.log.info(f"saving to {directory}")
        for name, size in RESERVED_BYTES.items():
            self._reserve(directory / name, size)

    def _mount_base(self) -> Path:
        mount = self.target.mount
        if mount is None:
            return self.paths.under_root(self.target.path)
        mountpoint = self.paths.under_root(mount.mountpoint)
        if is_mounted(self.paths, mount.mountpoint):
            self.log.info(f"{mount.mountpoint} is already mounted")
        else:
            self._mount(mount, mountpoint)
        return mountpoint / self.target.path.lstrip("/")

    def _mount(self, mount: MountSpec, mountpoint: Path) -> None:
        wait_for_device(self.paths, mount.device, timeout=self.device_timeout)
        mountpoint.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-t", mount.fstype, "-o", mount.options, mount.device, str(mountpoint)]
        self.log.info(f"mounting {mount.device} on {mount.mountpoint}")
        try:
            proc.run(argv, timeout=self.device_timeout)
        except proc.ProgramError as exc:
            raise TargetError(
                f"failed to mount {mount.device} on {mount.mountpoint} ({mount.fstype}): {exc}"
            ) from exc

    def _reserve(self, path: Path, size: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as exc:
            # Not fatal: filesystems without fallocate still get the files written later.
            self.log.info(f"could not reserve space for {path.name}: {exc.strerror}")

    def output_path(self, name: str) -> Path:
        if self.directory is None:
            raise TargetError("dump directory used before prepare()")
        return self.directory / name

    def finish_file(self, incomplete: str, final: str) -> None:
        """fsync ``incomplete``, rename it to ``final`` (0600) and fsync the directory."""
        src, dst = self.output_path(incomplete), self.output_path(final)
        try:
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fchmod(fd, 0o600)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(src, dst)
            _fsync_dir(dst.parent)
        except OSError as exc:
            raise TargetError(f"cannot complete {dst}: {exc}", exc.errno) from exc

    def write_small_file(self, name: str, data: bytes) -> None:
        """Write a record file in place (into its reservation), then fsync; raise TargetError."""
        path = self.output_path(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                done = 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], done)
                os.ftruncate(fd, len(data))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise TargetError(f"cannot write {path}: {exc}", exc.errno) from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some filesystems cannot fsync directories
            raise
    finally:
        os.close(fd)

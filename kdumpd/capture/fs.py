"""The filesystem target, capture side: mount, make the dump directory, write the files.

The directory is ``<mountpoint>/<path>/127.0.0.1-<date>/``
(:mod:`kdumpd.contract.layout`). With ``mount: null`` the target path is a
directory of the (already mounted) root, which is also how tests point the
agent at a temporary directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kdumpd import proc
from kdumpd.capture.base import DEVICE_WAIT_SECONDS, wait_for_device
from kdumpd.capture.log import CaptureLog
from kdumpd.contract.layout import LOCAL_ADDRESS, RESERVED_BYTES, dump_dir_name
from kdumpd.contract.plan import FsTarget, MountSpec
from kdumpd.durable import rename_into_place
from kdumpd.errors import TargetError
from kdumpd.mountinfo import parse_mountinfo
from kdumpd.paths import Paths


def is_mounted(paths: Paths, mountpoint: str) -> bool:
    """Whether ``mountpoint`` (a path of the system under ``paths``) is a mount point."""
    try:
        text = paths.proc_mounts.read_text()
    except OSError:
        return False
    wanted = {mountpoint.rstrip("/") or "/", str(paths.under_root(mountpoint)).rstrip("/")}
    return any(entry.mountpoint in wanted for entry in parse_mountinfo(text))


@dataclass
class FsDump:
    """A dump directory on a filesystem target."""

    paths: Paths
    target: FsTarget
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
            rename_into_place(src, dst, mode=0o600)
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

"""Writes that survive a crash: fsync a directory, replace a file atomically (stdlib only).

Both kernels use these: the capture agent for the dump's files, the first
kernel for the capture image and its manifest, the load record, and the dump
and records of a raw import.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so that a rename or a new entry in it is on disk.

    Some filesystems cannot fsync directories (EINVAL); that is not an error.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data``: written beside it, fsync'ed, renamed, directory fsync'ed.

    A crash at any point leaves the old file or the new one, never a mix.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_dir(path.parent)


def rename_into_place(source: Path, dest: Path, *, mode: int | None = None) -> None:
    """Make a finished file durable under its final name: fsync it, rename it, fsync the dir.

    ``mode`` (when given) is set before the rename, so the final name never has
    looser permissions than it should.
    """
    fd = os.open(source, os.O_RDONLY)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, dest)
    fsync_dir(dest.parent)

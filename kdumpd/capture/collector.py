"""The core collector: kdump-utils' argument rewriting and the stdlib fallback.

:func:`collector_argv` applies the capture-side rules of kdump-utils to the
user's core_collector. :func:`sparse_copy` is the fallback used when the
collector fails (makedumpfile lags new kernels): it copies the whole ELF core,
headers and notes included, seeking over all-zero pages so the copy is sparse
and every ELF reader can open it.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdumpd.errors import KdumpError

STREAM_TARGETS = ("raw", "ssh")
PAGE_SIZE = 4096
_CHUNK = 1024 * 1024  # read size: large enough for throughput, small for the crash kernel


class CopyError(KdumpError):
    """The fallback copy failed; ``errno`` tells why (ENOSPC: the target is full)."""

    def __init__(self, message: str, error_number: int | None) -> None:
        super().__init__(message)
        self.errno = error_number


@dataclass(frozen=True)
class CopyResult:
    size: int  # apparent size of the copy (= size of the source)
    bytes_written: int  # data actually written (zero pages are holes)


def is_makedumpfile(collector: Sequence[str]) -> bool:
    return bool(collector) and os.path.basename(collector[0]) == "makedumpfile"


def collector_argv(collector: Sequence[str], *, target_kind: str, nproc: int) -> tuple[str, ...]:
    """The collector as run in the crash kernel, without the input/output arguments.

    For makedumpfile, as kdump-utils does: every ``-F`` is removed and ``-F``
    added back for the stream targets (raw, ssh), whose output is a pipe.
    Threads: kdump-utils adds ``--num-threads=<nproc>`` when nproc > 1; with
    as many threads as CPUs makedumpfile's busy-waiting writer competes with
    its compressors and the dump gets slower, so we add ``nproc - 1`` threads
    and only from 3 CPUs on (the capture kernel usually boots with nr_cpus=1,
    so this is the rare case). ``-E`` (ELF output) and ``-F`` exclude threads,
    and a user's own --num-threads is kept.
    """
    argv = list(collector)
    if not is_makedumpfile(argv):
        return tuple(argv)
    argv = [a for a in argv if a != "-F"]
    if target_kind in STREAM_TARGETS:
        argv.append("-F")
    has_threads = any(a.startswith("--num-threads") for a in argv)
    if nproc >= 3 and "-F" not in argv and "-E" not in argv and not has_threads:
        argv.append(f"--num-threads={nproc - 1}")
    return tuple(argv)


ProgressSink = Callable[[int, int], None]


def sparse_copy(
    source: Path,
    dest: Path,
    *,
    progress: ProgressSink | None = None,
    progress_every: float = 5.0,
) -> CopyResult:
    """Copy ``source`` to ``dest`` (created 0600), leaving all-zero pages as holes.

    ``progress(done, total)`` is called every ``progress_every`` seconds and at
    the end. The copy is fsync'ed before returning. Raises CopyError.
    """
    try:
        with source.open("rb", buffering=0) as src:
            total = os.fstat(src.fileno()).st_size
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                written = _copy_pages(src.fileno(), fd, total, progress, progress_every)
                os.ftruncate(fd, total)  # trailing zero pages: extend without writing
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "error")
        raise CopyError(
            f"copying {source} to {dest} failed: {name}: {exc.strerror}", exc.errno
        ) from exc
    if progress is not None:
        progress(total, total)
    return CopyResult(total, written)


def _copy_pages(src: int, dst: int, total: int, progress: ProgressSink | None, every: float) -> int:
    zero_chunk = bytes(_CHUNK)
    zero_page = memoryview(zero_chunk)[:PAGE_SIZE]
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    offset = written = 0
    last_report = time.monotonic()
    while offset < total:
        n = os.readv(src, [view[: min(_CHUNK, total - offset)]])
        if n == 0:
            raise OSError(errno.EIO, f"unexpected end of input at offset {offset}")
        chunk = view[:n]
        if chunk != zero_chunk[:n]:
            written += _write_nonzero_runs(dst, chunk, offset, zero_page)
        offset += n
        now = time.monotonic()
        if progress is not None and now - last_report >= every:
            progress(offset, total)
            last_report = now
    return written


def _write_nonzero_runs(dst: int, chunk: memoryview, base: int, zero_page: memoryview) -> int:
    """Write each run of non-zero pages with one pwrite; return bytes written."""
    written = 0
    run_start: int | None = None
    for pos in range(0, len(chunk), PAGE_SIZE):
        page = chunk[pos : pos + PAGE_SIZE]
        is_zero = page == zero_page[: len(page)]
        if not is_zero and run_start is None:
            run_start = pos
        elif is_zero and run_start is not None:
            written += _pwrite_all(dst, chunk[run_start:pos], base + run_start)
            run_start = None
    if run_start is not None:
        written += _pwrite_all(dst, chunk[run_start:], base + run_start)
    return written


def _pwrite_all(fd: int, data: memoryview, offset: int) -> int:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
    return done


# What makedumpfile says when it does not know the crashed kernel (1.7.2 on 6.1:
# "The kernel version is not supported." then "The makedumpfile operation may be
# incomplete."), and any line it marks as a warning.
_WARNING_MARKERS = ("warning", "not supported", "may be incomplete")
_MAX_WARNINGS = 20


def collector_warnings(output: str) -> list[str]:
    """The collector's warning lines, in order, each once (progress lines left out)."""
    found: list[str] = []
    for raw in output.splitlines():
        line = raw.rsplit("\r", 1)[-1].strip()
        if line and any(m in line.lower() for m in _WARNING_MARKERS) and line not in found:
            found.append(line)
            if len(found) >= _MAX_WARNINGS:
                break
    return found

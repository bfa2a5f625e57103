"""The makedumpfile flattened format (``makedumpfile -F``): detect, walk, reassemble.

Raw and ssh targets cannot seek, so the capture side writes the dump as a
flattened stream: a 4 KiB header (``"makedumpfile"`` padded with NULs to 16
bytes, then ``type`` = 1 and ``version`` = 1 as big-endian 64-bit integers),
then records of ``offset`` and ``size`` (big-endian i64 each) followed by
``size`` bytes that belong at ``offset`` of the real file, and an end marker of
sixteen 0xff bytes. ``makedumpfile -R`` replays the records into a regular
(kdump-compressed or ELF) file.

This module is stdlib only. kdumpd uses it to notice a pending stream on a raw
device by its header, to check a stream without makedumpfile, and to read a
saved ``vmcore.flat`` in place: :class:`FlattenedFile` indexes the records once
and serves reads at offsets of the rebuilt file straight from the stream (later
records win where records overlap, as when ``makedumpfile -R`` replays them).
The tests write streams of known content with ``tests/support/flattened_writer.py``.
"""

from __future__ import annotations

import bisect
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kdumpd.errors import KdumpError

SIGNATURE = b"makedumpfile"
SIGNATURE_FIELD = 16
TYPE_FLAT_HEADER = 1
VERSION_FLAT_HEADER = 1
HEADER_SIZE = 4096
RECORD_HEADER = struct.Struct(">qq")
END_MARKER = b"\xff" * RECORD_HEADER.size
#: Bytes :func:`is_flattened` needs to decide.
PROBE_SIZE = SIGNATURE_FIELD + 16
# A record larger than this is garbage, not makedumpfile output (it writes its
# cache in pieces of a few pages); the bound keeps a corrupt stream from making
# a reader allocate gigabytes.
MAX_RECORD = 1 << 30
_CHUNK = 1 << 20


class FlattenedFormatError(KdumpError):
    """A stream is not a valid makedumpfile flattened stream."""


@dataclass(frozen=True)
class StreamSummary:
    """What walking a stream found."""

    records: int
    #: Size of the file the stream rebuilds (the highest offset + size written).
    output_size: int
    #: Bytes of the stream up to and including the end marker (or up to where it broke off).
    stream_size: int
    #: The end marker was found: makedumpfile finished writing.
    complete: bool


def is_flattened(data: bytes) -> bool:
    """Whether ``data`` (the first bytes of a file or device) opens a flattened stream."""
    if len(data) < PROBE_SIZE:
        return False
    if data[:SIGNATURE_FIELD] != SIGNATURE.ljust(SIGNATURE_FIELD, b"\0"):
        return False
    kind, version = struct.unpack_from(">qq", data, SIGNATURE_FIELD)
    return bool(kind == TYPE_FLAT_HEADER and version == VERSION_FLAT_HEADER)


def _read_exact(f: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _walk(source: BinaryIO, sink: BinaryIO | None, where: str) -> StreamSummary:
    head = _read_exact(source, HEADER_SIZE)
    if len(head) < HEADER_SIZE or not is_flattened(head):
        raise FlattenedFormatError(f"{where}: no makedumpfile flattened header at offset 0")
    consumed = HEADER_SIZE
    records = 0
    output_size = 0
    while True:
        raw = _read_exact(source, RECORD_HEADER.size)
        if len(raw) < RECORD_HEADER.size:
            return StreamSummary(records, output_size, consumed, complete=False)
        if raw == END_MARKER:
            return StreamSummary(records, output_size, consumed + len(raw), complete=True)
        offset, size = RECORD_HEADER.unpack(raw)
        if offset < 0 or size < 0 or size > MAX_RECORD:
            raise FlattenedFormatError(
                f"{where}: record {records + 1} at stream byte {consumed} is corrupt "
                f"(offset {offset}, size {size})"
            )
        consumed += RECORD_HEADER.size
        left = size
        if sink is not None:
            sink.seek(offset)
        while left:
            chunk = source.read(min(left, _CHUNK))
            if not chunk:
                return StreamSummary(records, output_size, consumed, complete=False)
            if sink is not None:
                sink.write(chunk)
            left -= len(chunk)
            consumed += len(chunk)
        records += 1
        output_size = max(output_size, offset + size)


def scan(source: BinaryIO, *, where: str = "stream") -> StreamSummary:
    """Walk a stream without writing anything; raise FlattenedFormatError if it is not one.

    An incomplete stream (the capture was cut off, or the device is smaller than
    the dump) is reported with ``complete=False``, not raised.
    """
    return _walk(source, None, where)


def reassemble(source: BinaryIO, dest: BinaryIO, *, where: str = "stream") -> StreamSummary:
    """Replay a stream into ``dest`` (a seekable file), as ``makedumpfile -R`` does."""
    return _walk(source, dest, where)


@dataclass(frozen=True)
class _Record:
    offset: int  # in the rebuilt file
    size: int
    position: int  # of the data in the stream
    order: int


class FlattenedFile(io.RawIOBase):
    """A read-only, seekable view of the file a flattened stream rebuilds."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._stream: BinaryIO = path.open("rb")
        self._pos = 0
        try:
            self._records, self.size, self.complete = self._index()
        except BaseException:
            self._stream.close()
            raise
        self._starts = [r.offset for r in self._records]
        self._longest = max((r.size for r in self._records), default=0)

    def _index(self) -> tuple[list[_Record], int, bool]:
        f = self._stream
        if not is_flattened(f.read(HEADER_SIZE)):
            raise FlattenedFormatError(f"{self.path}: no makedumpfile flattened header at offset 0")
        records: list[_Record] = []
        position = HEADER_SIZE
        size = 0
        total = self.path.stat().st_size
        while True:
            raw = f.read(RECORD_HEADER.size)
            if raw == END_MARKER:
                complete = True
                break
            if len(raw) < RECORD_HEADER.size:
                complete = False
                break
            offset, length = RECORD_HEADER.unpack(raw)
            position += RECORD_HEADER.size
            if offset < 0 or length < 0 or length > MAX_RECORD:
                raise FlattenedFormatError(
                    f"{self.path}: record {len(records) + 1} at stream byte "
                    f"{position - RECORD_HEADER.size} is corrupt (offset {offset}, size {length})"
                )
            if position + length > total:
                complete = False
                length = total - position
            records.append(_Record(offset, length, position, len(records)))
            size = max(size, offset + length)
            position += length
            f.seek(position)
        records.sort(key=lambda r: (r.offset, r.order))
        return records, size, complete

    def pread(self, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset+size)`` of the rebuilt file; zeros where no record wrote."""
        buf = bytearray(size)
        end = offset + size
        first = bisect.bisect_left(self._starts, offset - self._longest)
        hits: list[_Record] = []
        for rec in self._records[first:]:
            if rec.offset >= end:
                break
            if rec.offset + rec.size > offset:
                hits.append(rec)
        for rec in sorted(hits, key=lambda r: r.order):
            lo = max(offset, rec.offset)
            hi = min(end, rec.offset + rec.size)
            self._stream.seek(rec.position + lo - rec.offset)
            buf[lo - offset : hi - offset] = self._stream.read(hi - lo)
        return bytes(buf)

    # io.RawIOBase: enough for readers written against ordinary files.
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = max(0, min(len(buffer), self.size - self._pos))
        data = self.pread(self._pos, want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()

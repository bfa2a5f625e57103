"""Random access to a makedumpfile flattened stream (``makedumpfile -F``) without rebuilding it.

A flattened stream is a 4 KiB big-endian header, then records of (offset, size,
data) that belong at ``offset`` of the real (kdump-compressed or ELF) file, then
an end marker of sixteen 0xff bytes. :class:`FlattenedFile` indexes the records
once and then serves reads at output offsets straight from the stream, so a
saved ``vmcore.flat`` can be read in place. Later records win where records
overlap, as they do when ``makedumpfile -R`` replays them in order.
"""

from __future__ import annotations

import bisect
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kdumpd.errors import KdumpError

SIGNATURE = b"makedumpfile".ljust(16, b"\0")
HEADER_SIZE = 4096
_RECORD = struct.Struct(">qq")
_END = b"\xff" * _RECORD.size
# makedumpfile writes its cache in pieces of a few pages; a bigger record is corruption.
_MAX_RECORD = 1 << 30


class FlattenedError(KdumpError):
    """A file is not a readable flattened stream."""


def is_flattened(head: bytes) -> bool:
    """Whether the first 32 bytes of a file open a flattened stream (type 1, version 1)."""
    if len(head) < 32 or head[:16] != SIGNATURE:
        return False
    kind, version = struct.unpack_from(">qq", head, 16)
    return bool(kind == 1 and version == 1)


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
            raise FlattenedError(f"{self.path}: no makedumpfile flattened header at offset 0")
        records: list[_Record] = []
        position = HEADER_SIZE
        size = 0
        total = self.path.stat().st_size
        while True:
            raw = f.read(_RECORD.size)
            if raw == _END:
                complete = True
                break
            if len(raw) < _RECORD.size:
                complete = False
                break
            offset, length = _RECORD.unpack(raw)
            position += _RECORD.size
            if offset < 0 or length < 0 or length > _MAX_RECORD:
                raise FlattenedError(
                    f"{self.path}: record {len(records) + 1} at stream byte "
                    f"{position - _RECORD.size} is corrupt (offset {offset}, size {length})"
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

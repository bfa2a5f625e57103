"""makedumpfile's kdump-compressed format ("KDUMP   "): headers, bitmaps, page descriptors.

Layout (64-bit producers; byte order of the dumped machine): ``disk_dump_header``
at 0, ``kdump_sub_header`` and the ELF note blob from block 1, two PFN bitmaps
(1st: RAM present, 2nd: page stored), one 24-byte ``page_desc`` per set bit of
the 2nd bitmap in PFN order, then the page payloads (zlib, LZO, snappy or zstd
per page, or raw). A page's descriptor is found by counting the set bits of the
2nd bitmap below its PFN; per-chunk counts are computed once.

32-bit producers (i386, arm32) pack the headers differently and are refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from kdumpd.errors import KdumpError
from kdumpd.vmcore import pagecodecs as codecs
from kdumpd.vmcore.elf import Note, iter_notes

SIGNATURE = b"KDUMP   "
_UTS_FIELD = 65
_PAGE_DESC = 24
_CHUNK_BYTES = 4096  # bitmap bytes per precomputed rank
_MAX_NOTES = 64 << 20
_32BIT_MACHINES = ("i386", "i486", "i586", "i686", "arm", "armv7l", "mips", "ppc")


class KdumpFormatError(KdumpError):
    """A kdump-compressed file is damaged or of a kind this reader does not know."""


class PageMissing(KdumpError):
    """The dump does not hold the page asked for (filtered out, a hole, or lost)."""


@dataclass(frozen=True)
class KdumpHeader:
    byte_order: str
    header_version: int
    utsname: tuple[str, ...]  # sysname, nodename, release, version, machine, domainname
    timestamp: int
    status: int
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    nr_cpus: int
    phys_base: int
    dump_level: int
    split: bool
    offset_vmcoreinfo: int
    size_vmcoreinfo: int
    offset_note: int
    size_note: int

    @property
    def release(self) -> str:
        return self.utsname[2]

    @property
    def machine(self) -> str:
        return self.utsname[4]

    @property
    def incomplete(self) -> bool:
        return bool(self.status & codecs.DUMP_DH_COMPRESSED_INCOMPLETE)

    @property
    def compression(self) -> str:
        names = [name for bit, name in codecs.NAMES.items() if self.status & bit]
        return ",".join(names) or "none"


def is_kdump(head: bytes) -> bool:
    return head[:8] == SIGNATURE


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def read_header(f: BinaryIO, where: str) -> KdumpHeader:
    f.seek(0)
    raw = f.read(464)
    if len(raw) < 464 or not is_kdump(raw):
        raise KdumpFormatError(f"{where}: not a kdump-compressed file (no 'KDUMP   ' signature)")
    # The header is in the dumped machine's byte order: a sane version decides it.
    bo = "<" if 0 < struct.unpack_from("<i", raw, 8)[0] < 0x10000 else ">"
    version = struct.unpack_from(bo + "i", raw, 8)[0]
    uts = tuple(_cstr(raw[12 + i * _UTS_FIELD : 12 + (i + 1) * _UTS_FIELD]) for i in range(6))
    if uts[4] in _32BIT_MACHINES:
        raise KdumpFormatError(
            f"{where}: a dump of a 32-bit kernel ({uts[4]}); this reader knows the 64-bit "
            "header layout only"
        )
    tv_sec = struct.unpack_from(bo + "q", raw, 408)[0]
    status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr = struct.unpack_from(
        bo + "IiiII", raw, 424
    )
    nr_cpus = struct.unpack_from(bo + "i", raw, 460)[0]
    if block_size <= 0 or block_size & (block_size - 1) or block_size > 1 << 20:
        raise KdumpFormatError(f"{where}: implausible block size {block_size}")
    f.seek(block_size)
    sub = f.read(104).ljust(104, b"\0")
    phys_base, dump_level, split = struct.unpack_from(bo + "Qii", sub, 0)
    off_vmci, size_vmci, off_note, size_note = struct.unpack_from(bo + "qQqQ", sub, 32)
    if version < 3:
        off_vmci = size_vmci = 0
    if version < 4:
        off_note = size_note = 0
    if version >= 6:
        max_mapnr = struct.unpack_from(bo + "Q", sub, 96)[0] or max_mapnr
    return KdumpHeader(
        byte_order=bo,
        header_version=version,
        utsname=uts,
        timestamp=tv_sec,
        status=status,
        block_size=block_size,
        sub_hdr_size=sub_hdr_size,
        bitmap_blocks=bitmap_blocks,
        max_mapnr=max_mapnr,
        nr_cpus=nr_cpus,
        phys_base=phys_base,
        dump_level=dump_level,
        split=bool(split),
        offset_vmcoreinfo=off_vmci,
        size_vmcoreinfo=size_vmci,
        offset_note=off_note,
        size_note=size_note,
    )


class KdumpFile:
    """Pages of a kdump-compressed file by physical frame number."""

    def __init__(self, f: BinaryIO, where: str) -> None:
        self.f = f
        self.where = where
        self.header = h = read_header(f, where)
        bs = h.block_size
        half = h.bitmap_blocks // 2 * bs
        bitmap_start = (1 + h.sub_hdr_size) * bs
        file_size = f.seek(0, 2)
        if h.sub_hdr_size < 0 or bitmap_start + 2 * half > file_size:
            raise KdumpFormatError(f"{where}: the file ends inside its bitmaps")
        f.seek(bitmap_start)
        self._bitmap1 = f.read(half)
        self._bitmap2 = f.read(half)
        if len(self._bitmap2) < half:
            raise KdumpFormatError(f"{where}: the file ends inside its bitmaps")
        self._desc_start = bitmap_start + 2 * half
        # ranks[i]: set bits of the 2nd bitmap before byte i * _CHUNK_BYTES.
        self._ranks = [0]
        for start in range(0, len(self._bitmap2), _CHUNK_BYTES):
            chunk = self._bitmap2[start : start + _CHUNK_BYTES]
            self._ranks.append(self._ranks[-1] + int.from_bytes(chunk, "little").bit_count())
        self.notes: tuple[Note, ...] = ()
        if h.offset_note and h.size_note:
            self.notes = tuple(
                iter_notes(self._region(h.offset_note, h.size_note, file_size), h.byte_order)
            )
        self.vmcoreinfo_text = ""
        if h.offset_vmcoreinfo and h.size_vmcoreinfo:
            raw = self._region(h.offset_vmcoreinfo, h.size_vmcoreinfo, file_size)
            self.vmcoreinfo_text = raw.decode("ascii", errors="replace")
        self._cache: dict[int, bytes] = {}

    def _region(self, offset: int, size: int, file_size: int) -> bytes:
        # Notes are a few KiB: a size beyond the file or 64 MiB is a damaged header.
        if offset < 0 or size > _MAX_NOTES or offset + size > file_size:
            raise KdumpFormatError(
                f"{self.where}: the header points at {size} bytes at offset {offset}, "
                "outside the file"
            )
        self.f.seek(offset)
        return self.f.read(size)

    @property
    def page_size(self) -> int:
        return self.header.block_size

    @property
    def stored_pages(self) -> int:
        return self._ranks[-1]

    @staticmethod
    def _bit(bitmap: bytes, pfn: int) -> bool:
        index = pfn >> 3
        return index < len(bitmap) and bool(bitmap[index] >> (pfn & 7) & 1)

    def has_page(self, pfn: int) -> bool:
        return self._bit(self._bitmap2, pfn)

    def in_ram(self, pfn: int) -> bool:
        return self._bit(self._bitmap1, pfn)

    def _rank(self, pfn: int) -> int:
        byte = pfn >> 3
        chunk = byte // _CHUNK_BYTES
        base = chunk * _CHUNK_BYTES
        below = int.from_bytes(self._bitmap2[base:byte], "little").bit_count()
        partial = self._bitmap2[byte] & ((1 << (pfn & 7)) - 1)
        return self._ranks[chunk] + below + partial.bit_count()

    def read_page(self, pfn: int) -> bytes:
        cached = self._cache.get(pfn)
        if cached is not None:
            return cached
        if not self.has_page(pfn):
            why = "filtered out by makedumpfile" if self.in_ram(pfn) else "not RAM in this dump"
            raise PageMissing(f"{self.where}: page frame {pfn:#x} is {why}")
        bo = self.header.byte_order
        self.f.seek(self._desc_start + self._rank(pfn) * _PAGE_DESC)
        raw = self.f.read(_PAGE_DESC)
        if len(raw) < _PAGE_DESC:
            raise PageMissing(f"{self.where}: the descriptor of page frame {pfn:#x} is cut off")
        offset, size, flags = struct.unpack_from(bo + "qII", raw)
        if offset == 0:
            raise PageMissing(
                f"{self.where}: page frame {pfn:#x} was lost (the dump is incomplete)"
            )
        if size > self.page_size * 2 or offset < 0:
            raise KdumpFormatError(
                f"{self.where}: the descriptor of page frame {pfn:#x} is corrupt "
                f"(offset {offset}, size {size})"
            )
        self.f.seek(offset)
        data = self.f.read(size)
        if len(data) < size:
            raise PageMissing(f"{self.where}: page frame {pfn:#x} is cut off")
        try:
            page = codecs.decompress(flags, data, self.page_size)
        except codecs.CodecError as exc:
            raise KdumpFormatError(f"{self.where}: page frame {pfn:#x}: {exc}") from exc
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[pfn] = page
        return page

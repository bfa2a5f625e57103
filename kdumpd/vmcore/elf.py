"""The ELF core of /proc/vmcore: program headers, notes and the VMCOREINFO text.

Reads ELF64 and ELF32 cores of either byte order. Only what the capture agent
and the post-crash report need: where the data is (``Segment``), the notes
(``Note``: per-CPU ``NT_PRSTATUS``, ``VMCOREINFO``), and the VMCOREINFO keys
parsed into a dict. Section headers are ignored (kernels write none).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kdumpd.errors import KdumpError
from kdumpd.vmcore.vmcoreinfo import parse_vmcoreinfo

ELF_MAGIC = b"\x7fELF"
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1
EM_X86_64 = 62

# Notes bigger than this are not a vmcore's notes but a damaged header; the
# kernel merges per-CPU notes (356 bytes each on x86_64) and one page of VMCOREINFO.
_MAX_NOTES_BYTES = 64 * 1024 * 1024


class CoreFormatError(KdumpError):
    """The file is not an ELF core we can read."""


@dataclass(frozen=True)
class Segment:
    """One program header."""

    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class Note:
    name: str
    type: int
    desc: bytes


@dataclass(frozen=True)
class ElfCore:
    """The headers of an ELF core; data stays in the file."""

    elf_class: int  # 1 = ELF32, 2 = ELF64
    byte_order: str  # "<" or ">"
    machine: int
    flags: int
    header_size: int  # bytes up to the end of the program header table
    segments: tuple[Segment, ...]
    notes: tuple[Note, ...]
    vmcoreinfo: dict[str, str] = field(default_factory=dict)

    @property
    def loads(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.type == PT_LOAD)

    @property
    def cpu_count(self) -> int:
        """Number of NT_PRSTATUS notes (one per CPU that was online at the crash)."""
        return sum(1 for n in self.notes if n.name == "CORE" and n.type == NT_PRSTATUS)

    @property
    def data_end(self) -> int:
        """File offset just past the last byte any header points at."""
        ends = [s.offset + s.filesz for s in self.segments]
        return max([self.header_size, *ends])

    @property
    def osrelease(self) -> str | None:
        return self.vmcoreinfo.get("OSRELEASE")

    @property
    def crash_time(self) -> int | None:
        """CRASHTIME (epoch seconds), appended by the crashing kernel; absent in live dumps."""
        text = self.vmcoreinfo.get("CRASHTIME")
        return int(text) if text and text.strip().isdigit() else None


def iter_notes(blob: bytes, byte_order: str) -> Iterator[Note]:
    """Walk a PT_NOTE blob; stop at the zero-size terminator the kernel writes."""
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from(byte_order + "III", blob, pos)
        if namesz == 0 and descsz == 0:
            return
        pos += 12
        name_end = pos + namesz
        desc_start = pos + _align4(namesz)
        desc_end = desc_start + descsz
        if desc_end > len(blob):
            raise CoreFormatError(f"note at offset {pos - 12} runs past the end of PT_NOTE")
        name = blob[pos:name_end].rstrip(b"\0").decode("ascii", errors="replace")
        yield Note(name, ntype, blob[desc_start:desc_end])
        pos = desc_start + _align4(descsz)


def _align4(n: int) -> int:
    return (n + 3) & ~3


def read_core(source: Path | BinaryIO) -> ElfCore:
    """Read the ELF header, program headers and notes of a core file."""
    if isinstance(source, Path):
        with source.open("rb") as f:
            return _read_core(f, str(source))
    return _read_core(source, getattr(source, "name", "<core>"))


def _read_core(f: BinaryIO, where: str) -> ElfCore:
    f.seek(0)
    ident = f.read(16)
    if len(ident) < 16 or ident[:4] != ELF_MAGIC:
        raise CoreFormatError(f"{where}: not an ELF file (no ELF magic at offset 0)")
    elf_class, data = ident[4], ident[5]
    if elf_class not in (1, 2) or data not in (1, 2):
        raise CoreFormatError(f"{where}: unknown ELF class {elf_class} or byte order {data}")
    bo = "<" if data == 1 else ">"
    if elf_class == 2:
        ehdr_fmt = bo + "HHIQQQIHHHHHH"
        phdr_fmt = bo + "IIQQQQQQ"
    else:
        ehdr_fmt = bo + "HHIIIIIHHHHHH"
        phdr_fmt = bo + "IIIIIIII"
    raw = f.read(struct.calcsize(ehdr_fmt))
    if len(raw) < struct.calcsize(ehdr_fmt):
        raise CoreFormatError(f"{where}: truncated ELF header")
    (e_type, e_machine, _ver, _entry, e_phoff, _shoff, e_flags, _ehsize, e_phentsize, e_phnum) = (
        struct.unpack(ehdr_fmt, raw)[:10]
    )
    if e_type != ET_CORE:
        raise CoreFormatError(f"{where}: ELF type {e_type} is not a core file (ET_CORE = 4)")
    if e_phentsize != struct.calcsize(phdr_fmt):
        raise CoreFormatError(f"{where}: unexpected program header size {e_phentsize}")
    f.seek(e_phoff)
    table = f.read(e_phentsize * e_phnum)
    if len(table) < e_phentsize * e_phnum:
        raise CoreFormatError(f"{where}: program header table is truncated")
    segments = [
        _segment(struct.unpack_from(phdr_fmt, table, i * e_phentsize), elf_class)
        for i in range(e_phnum)
    ]
    notes: list[Note] = []
    for seg in segments:
        if seg.type != PT_NOTE or seg.filesz == 0:
            continue
        if seg.filesz > _MAX_NOTES_BYTES:
            raise CoreFormatError(f"{where}: PT_NOTE of {seg.filesz} bytes is implausible")
        f.seek(seg.offset)
        notes.extend(iter_notes(f.read(seg.filesz), bo))
    info: dict[str, str] = {}
    for note in notes:
        if note.name == "VMCOREINFO":
            info = parse_vmcoreinfo(note.desc.decode("ascii", errors="replace"))
    return ElfCore(
        elf_class=elf_class,
        byte_order=bo,
        machine=e_machine,
        flags=e_flags,
        header_size=e_phoff + e_phentsize * e_phnum,
        segments=tuple(segments),
        notes=tuple(notes),
        vmcoreinfo=info,
    )


def _segment(fields: tuple[int, ...], elf_class: int) -> Segment:
    if elf_class == 2:
        p_type, _flags, offset, vaddr, paddr, filesz, memsz, _align = fields
    else:
        p_type, offset, vaddr, paddr, filesz, memsz, _flags, _align = fields
    return Segment(p_type, offset, vaddr, paddr, filesz, memsz)


def read_physical(f: BinaryIO, core: ElfCore, paddr: int, size: int) -> bytes:
    """Bytes at a physical address, from the first PT_LOAD that holds them (zeros past filesz)."""
    for seg in core.loads:
        if seg.paddr <= paddr and paddr + size <= seg.paddr + seg.memsz:
            rel = paddr - seg.paddr
            available = max(0, min(size, seg.filesz - rel))
            f.seek(seg.offset + rel)
            return f.read(available) + bytes(size - available)
    raise CoreFormatError(f"physical address {paddr:#x} (+{size}) is not in any PT_LOAD")

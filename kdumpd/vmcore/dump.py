"""One entry point for every dump format, and kernel virtual memory on top of it.

:func:`open_dump` recognises an ELF core (``/proc/vmcore``, ``makedumpfile -E``,
QEMU ``dump-guest-memory``), a kdump-compressed file, and a flattened stream of
either (``vmcore.flat``, read in place), and returns a :class:`Dump`: its
VMCOREINFO, its notes, whether it is complete, physical reads, and virtual reads.

Virtual-to-physical translation (x86_64): addresses in the kernel image map
(``__START_KERNEL_map`` and up) are ``vaddr - __START_KERNEL_map + phys_base``
with ``phys_base`` from VMCOREINFO's ``NUMBER(phys_base)`` (falling back to the
kdump sub-header's copy); every other address (the direct map, whose base KASLR
moves, vmalloc, ...) goes through the kernel's own page tables from
``SYMBOL(init_top_pgt)``, 4 or 5 levels as ``NUMBER(pgtable_l5_enabled)`` says.
KERNELOFFSET is not needed for either: SYMBOL values are already the runtime
addresses. Other architectures are read through the ELF core's PT_LOAD virtual
addresses (the kernel-text PT_LOAD), as vmcore-dmesg does.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from kdumpd.errors import KdumpError
from kdumpd.vmcore.elf import EM_X86_64, CoreFormatError, ElfCore, Note, read_core
from kdumpd.vmcore.flattened import FlattenedFile, is_flattened
from kdumpd.vmcore.kdump import KdumpFile, KdumpFormatError, PageMissing, is_kdump
from kdumpd.vmcore.vmcoreinfo import VmcoreInfo

START_KERNEL_MAP = 0xFFFFFFFF80000000
_PTE_PRESENT = 0x1
_PTE_HUGE = 0x80
_PHYS_MASK = 0x000FFFFFFFFFF000
_ELF_MACHINES = {EM_X86_64: "x86_64", 183: "aarch64", 21: "ppc64", 22: "s390x", 243: "riscv64"}


class DumpError(KdumpError):
    """A dump cannot be opened or an address in it cannot be read."""


class Dump:
    """An open dump: metadata plus physical and kernel-virtual reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | FlattenedFile = path.open("rb")
        self.flattened = False
        self._elf: ElfCore | None = None
        self._kdump: KdumpFile | None = None
        try:
            self._open()
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        where = str(self.path)
        head = self._file.read(4096)
        if is_flattened(head):
            self._file.close()
            self._file = FlattenedFile(self.path)
            self.flattened = True
            head = self._file.pread(0, 4096)
        f: BinaryIO = self._file  # type: ignore[assignment]
        try:
            if is_kdump(head):
                self._kdump = KdumpFile(f, where)
            elif head[:4] == b"\x7fELF":
                self._elf = read_core(f)
            else:
                raise DumpError(
                    f"{where}: not a crash dump (neither ELF, kdump-compressed nor flattened)"
                )
        except (CoreFormatError, KdumpFormatError) as exc:
            raise DumpError(str(exc)) from exc
        if self._kdump is not None:
            text = self._kdump.vmcoreinfo_text
            self.notes: tuple[Note, ...] = self._kdump.notes
            self.machine = self._kdump.header.machine
        else:
            assert self._elf is not None
            text = next(
                (
                    n.desc.decode("ascii", "replace")
                    for n in self._elf.notes
                    if n.name == "VMCOREINFO"
                ),
                "",
            )
            self.notes = self._elf.notes
            self.machine = _ELF_MACHINES.get(self._elf.machine, f"ELF machine {self._elf.machine}")
        self.vmcoreinfo = VmcoreInfo.from_text(text, f"{where} (VMCOREINFO)")
        page_size = self.vmcoreinfo.page_size
        if self._kdump is not None:
            page_size = self._kdump.page_size  # checked to be a sane power of two
        if not page_size or page_size < 1024 or page_size > 1 << 20 or page_size & (page_size - 1):
            page_size = 4096  # a damaged PAGESIZE must not make the page loops spin
        self.page_size = page_size

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Dump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what the dump is -----------------------------------------------------------

    @property
    def format(self) -> str:
        kind = "kdump-compressed" if self._kdump is not None else "ELF"
        return f"flattened {kind}" if self.flattened else kind

    @property
    def compression(self) -> str | None:
        return self._kdump.header.compression if self._kdump is not None else None

    @property
    def complete(self) -> bool:
        """False when makedumpfile marked the dump incomplete or a flattened stream is cut off."""
        if self.flattened and not self._file.complete:  # type: ignore[union-attr]
            return False
        if self._kdump is not None:
            return not self._kdump.header.incomplete
        assert self._elf is not None
        # makedumpfile -E sets bit 0 of e_flags when it could not write everything.
        return not self._elf.flags & 1

    @property
    def osrelease(self) -> str | None:
        if self.vmcoreinfo.osrelease:
            return self.vmcoreinfo.osrelease
        return self._kdump.header.release if self._kdump is not None else None

    @property
    def crash_time(self) -> int | None:
        if self.vmcoreinfo.crash_time is not None:
            return self.vmcoreinfo.crash_time
        if self._kdump is not None and self._kdump.header.timestamp > 0:
            return self._kdump.header.timestamp
        return None

    # --- physical memory ------------------------------------------------------------

    def read_physical(self, paddr: int, size: int) -> bytes:
        parts: list[bytes] = []
        while size > 0:
            try:
                chunk = self._read_physical_piece(paddr, size)
            except (OSError, ValueError, OverflowError) as exc:
                # A corrupt header can point reads anywhere: say where, not a traceback.
                raise DumpError(f"{self.path}: cannot read physical {paddr:#x}: {exc}") from exc
            if not chunk:
                raise DumpError(f"{self.path}: physical {paddr:#x} reads as nothing")
            parts.append(chunk)
            paddr += len(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def _read_physical_piece(self, paddr: int, size: int) -> bytes:
        if self._kdump is not None:
            ps = self._kdump.page_size
            pfn, rel = divmod(paddr, ps)
            take = min(size, ps - rel)
            try:
                page = self._kdump.read_page(pfn)
            except PageMissing as exc:
                raise DumpError(str(exc)) from exc
            return page[rel : rel + take]
        assert self._elf is not None
        for seg in self._elf.loads:
            if seg.paddr <= paddr < seg.paddr + seg.memsz:
                rel = paddr - seg.paddr
                take = min(size, seg.memsz - rel)
                present = max(0, min(take, seg.filesz - rel))
                self._file.seek(seg.offset + rel)
                data = self._file.read(present)
                return data + bytes(take - len(data))
        raise DumpError(f"{self.path}: physical address {paddr:#x} is not in the dump")

    # --- kernel virtual memory ------------------------------------------------------

    def _phys_base(self) -> int:
        number = self.vmcoreinfo.number("phys_base")
        if number is not None:
            return number
        if self._kdump is not None:
            return self._kdump.header.phys_base
        return 0

    def translate(self, vaddr: int) -> int:
        """Physical address of a kernel virtual address (see the module docstring)."""
        if self.machine == "x86_64" and self.vmcoreinfo.entries:
            if vaddr >= START_KERNEL_MAP:
                return vaddr - START_KERNEL_MAP + self._phys_base()
            return self._walk_x86_64(vaddr)
        if self._elf is not None:
            for seg in self._elf.loads:
                if seg.vaddr <= vaddr < seg.vaddr + seg.memsz:
                    return seg.paddr + vaddr - seg.vaddr
        raise DumpError(
            f"{self.path}: cannot translate {vaddr:#x}: no PT_LOAD maps it, and kdumpd walks "
            f"page tables of x86_64 dumps only (this one is {self.machine})"
        )

    def _walk_x86_64(self, vaddr: int) -> int:
        top = self.vmcoreinfo.symbol("init_top_pgt") or self.vmcoreinfo.symbol("init_level4_pgt")
        if top is None:
            raise DumpError(f"{self.path}: VMCOREINFO has no SYMBOL(init_top_pgt) to walk")
        mask = _PHYS_MASK & ~(self.vmcoreinfo.number("sme_mask") or 0)
        table = top - START_KERNEL_MAP + self._phys_base()
        levels = (
            (48, 39, 30, 21, 12)
            if self.vmcoreinfo.number("pgtable_l5_enabled")
            else (39, 30, 21, 12)
        )
        for depth, shift in enumerate(levels):
            index = (vaddr >> shift) & 511
            entry = int.from_bytes(self.read_physical(table + 8 * index, 8), "little")
            if not entry & _PTE_PRESENT:
                raise DumpError(f"{self.path}: {vaddr:#x} is not mapped (level {depth})")
            base = entry & mask
            if shift in (30, 21) and entry & _PTE_HUGE:
                return (base & ~((1 << shift) - 1)) | (vaddr & ((1 << shift) - 1))
            table = base
        return table | (vaddr & 0xFFF)

    def read(self, vaddr: int, size: int) -> bytes:
        """Bytes at a kernel virtual address, page by page (pages need not be contiguous)."""
        parts: list[bytes] = []
        while size > 0:
            take = min(size, self.page_size - vaddr % self.page_size)
            parts.append(self.read_physical(self.translate(vaddr), take))
            vaddr += take
            size -= take
        return b"".join(parts)

    def u64(self, vaddr: int) -> int:
        return int(struct.unpack("<Q", self.read(vaddr, 8))[0])

    def u32(self, vaddr: int) -> int:
        return int(struct.unpack("<I", self.read(vaddr, 4))[0])


def open_dump(path: Path) -> Dump:
    """Open a dump file of any supported format; DumpError says why not."""
    try:
        return Dump(path)
    except OSError as exc:
        raise DumpError(f"{path}: cannot read: {exc.strerror or exc}") from exc

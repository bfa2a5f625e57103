"""A generator of synthetic x86_64 ELF cores shaped like /proc/vmcore, for tests.

The core has what makedumpfile 1.7.2 and kexec-tools' vmcore-dmesg need to
accept it without debuginfo:

* a PT_NOTE with one ``CORE``/NT_PRSTATUS note per CPU and a ``VMCOREINFO``
  note (OSRELEASE, PAGESIZE, CRASHTIME, struct page layout, FLATMEM
  ``SYMBOL(mem_map)``, ``SYMBOL(init_uts_ns)``, printk symbols);
* a kernel-image PT_LOAD (virtual addresses above ``__START_KERNEL_map``) holding
  ``init_uts_ns``, the variables the symbols point at and the log buffer;
* RAM PT_LOADs (direct-map virtual addresses) covering the kernel image again,
  a zeroed ``struct page`` array (every page looks like kernel data, so
  ``-d 31`` keeps all non-zero pages) and a mix of data and zero pages.

The log uses the variable-length ``struct printk_log`` records of Linux
3.5-5.9 (``SYMBOL(log_buf)``, ``log_first_idx``...): both tools still read that
layout and it is far simpler to synthesise than the lockless ring of 5.10+.
Zero pages are skipped with seek, so the generated file is sparse.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = 4096
PAGE_OFFSET = 0xFFFF888000000000  # x86_64 direct map base (4-level paging, no KASLR)
START_KERNEL_MAP = 0xFFFFFFFF80000000
KERNEL_PADDR = 0x100000  # phys_base 0: kernel vaddr = START_KERNEL_MAP + paddr
SECOND_RANGE_GAP = 0x100000  # a hole between RAM ranges, as real e820 maps have

SIZEOF_PRSTATUS = 336
PR_PID_OFFSET = 32
PR_REG_OFFSET = 112
PR_REG_RIP = 16
PR_REG_RSP = 19
SIZEOF_PAGE = 64
SIZEOF_PRINTK_LOG = 16
LOG_BUF_PAGES = 4
UTS_FIELD = 65

# Offsets of the variables in the first kernel page.
_UTS_OFFSET = 0
_MEM_MAP_PTR = 0x200
_LOG_BUF_PTR = 0x208
_LOG_BUF_LEN = 0x210
_LOG_FIRST_IDX = 0x214
_LOG_NEXT_IDX = 0x218
# Pages 1-5 of the kernel image: 4-level page tables mapping the kernel map and
# the direct map with 2 MiB pages (makedumpfile translates kernel addresses
# through them, starting at SYMBOL(init_top_pgt)).
_PGD_PAGE, _PUD_KERNEL, _PMD_KERNEL, _PUD_DIRECT, _PMD_DIRECT = 1, 2, 3, 4, 5
_PAGE_TABLE_PAGES = 5
_PTE_PRESENT_RW = 0x3
_PTE_LARGE = 0x80


@dataclass(frozen=True)
class CoreSpec:
    """What to put into a synthetic core."""

    osrelease: str = "6.1.0-synthetic-amd64"
    cpus: int = 2
    data_pages: int = 48  # pages of pseudo-random data in the RAM ranges
    zero_pages: int = 48  # pages of zeros interleaved with them
    crash_time: int = 1_700_000_000
    dmesg: tuple[str, ...] = (
        "Linux version 6.1.0-synthetic-amd64 (synthetic core)",
        "sysrq: Trigger a crash",
        "Kernel panic - not syncing: sysrq triggered crash",
    )
    seed: int = 1
    panic_pid: int = 4242
    # Without page tables makedumpfile cannot translate init_uts_ns and fails
    # (as it does on kernels newer than it knows); vmcore-dmesg still works.
    page_tables: bool = True


@dataclass(frozen=True)
class GeneratedCore:
    """Where the generator put things, for tests that check readers and copies."""

    path: Path
    size: int
    data_pages: int
    kernel_vaddr: int
    vmcoreinfo: str


def generate_core(path: Path, spec: CoreSpec | None = None) -> GeneratedCore:
    """Write a synthetic core described by ``spec`` (default: CoreSpec()) to ``path``."""
    spec = spec or CoreSpec()
    log_page = 1 + _PAGE_TABLE_PAGES
    kernel_pages = log_page + LOG_BUF_PAGES
    half = (spec.data_pages + spec.zero_pages) // 2
    rest = spec.data_pages + spec.zero_pages - half
    # Over-estimate the highest PFN, then size mem_map for it (extra entries are harmless).
    est_pfns = (KERNEL_PADDR + SECOND_RANGE_GAP) // PAGE_SIZE + kernel_pages + 2 * (half + rest)
    memmap_pages = -(-(est_pfns + 64) * SIZEOF_PAGE // PAGE_SIZE)
    range_a_pages = kernel_pages + memmap_pages + half
    range_b_paddr = KERNEL_PADDR + range_a_pages * PAGE_SIZE + SECOND_RANGE_GAP
    memmap_paddr = KERNEL_PADDR + kernel_pages * PAGE_SIZE
    kernel_vaddr = START_KERNEL_MAP + KERNEL_PADDR
    log_buf_vaddr = kernel_vaddr + log_page * PAGE_SIZE

    rng = random.Random(spec.seed)
    pattern = [True] * spec.data_pages + [False] * spec.zero_pages
    rng.shuffle(pattern)
    pages: dict[int, bytes] = {}  # paddr -> content of every non-zero page

    log = _printk_log(spec.dmesg)
    kernel0 = bytearray(PAGE_SIZE)
    _put_utsname(kernel0, _UTS_OFFSET, spec.osrelease)
    struct.pack_into("<Q", kernel0, _MEM_MAP_PTR, PAGE_OFFSET + memmap_paddr)
    struct.pack_into("<Q", kernel0, _LOG_BUF_PTR, log_buf_vaddr)
    struct.pack_into("<III", kernel0, _LOG_BUF_LEN, LOG_BUF_PAGES * PAGE_SIZE, 0, len(log))
    pages[KERNEL_PADDR] = bytes(kernel0)
    for index, content in (_page_tables() if spec.page_tables else {}).items():
        pages[KERNEL_PADDR + index * PAGE_SIZE] = content
    for i in range(LOG_BUF_PAGES):
        chunk = log[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
        if chunk.strip(b"\0"):
            pages[KERNEL_PADDR + (log_page + i) * PAGE_SIZE] = chunk.ljust(PAGE_SIZE, b"\0")

    data_paddrs = [
        KERNEL_PADDR + (kernel_pages + memmap_pages + i) * PAGE_SIZE for i in range(half)
    ] + [range_b_paddr + i * PAGE_SIZE for i in range(rest)]
    for paddr, is_data in zip(data_paddrs, pattern, strict=True):
        if is_data:
            pages[paddr] = rng.randbytes(PAGE_SIZE)

    ranges = [(KERNEL_PADDR, range_a_pages * PAGE_SIZE), (range_b_paddr, rest * PAGE_SIZE)]
    loads = [(kernel_vaddr, KERNEL_PADDR, kernel_pages * PAGE_SIZE)] + [
        (PAGE_OFFSET + paddr, paddr, size) for paddr, size in ranges
    ]
    vmcoreinfo = _vmcoreinfo(spec, kernel_vaddr, log_buf_vaddr)
    notes = b"".join(_prstatus_note(spec, cpu) for cpu in range(spec.cpus))
    notes += _note("VMCOREINFO", 0, vmcoreinfo.encode())
    size = _write_elf(path, notes, loads, pages)
    return GeneratedCore(path, size, spec.data_pages, kernel_vaddr, vmcoreinfo)


def _page_tables() -> dict[int, bytes]:
    """PGD, PUDs and PMDs (kernel-image page numbers -> content) mapping the first
    GiB of physical memory at both START_KERNEL_MAP and PAGE_OFFSET."""

    def table(entries: dict[int, int]) -> bytes:
        buf = bytearray(PAGE_SIZE)
        for index, value in entries.items():
            struct.pack_into("<Q", buf, 8 * index, value)
        return bytes(buf)

    def paddr(page: int) -> int:
        return KERNEL_PADDR + page * PAGE_SIZE

    def index(vaddr: int, shift: int) -> int:
        return (vaddr >> shift) & 511

    huge = {i: (i << 21) | _PTE_PRESENT_RW | _PTE_LARGE for i in range(512)}
    return {
        _PGD_PAGE: table(
            {
                index(START_KERNEL_MAP, 39): paddr(_PUD_KERNEL) | _PTE_PRESENT_RW,
                index(PAGE_OFFSET, 39): paddr(_PUD_DIRECT) | _PTE_PRESENT_RW,
            }
        ),
        _PUD_KERNEL: table({index(START_KERNEL_MAP, 30): paddr(_PMD_KERNEL) | _PTE_PRESENT_RW}),
        _PMD_KERNEL: table(huge),
        _PUD_DIRECT: table({index(PAGE_OFFSET, 30): paddr(_PMD_DIRECT) | _PTE_PRESENT_RW}),
        _PMD_DIRECT: table(huge),
    }


def _put_utsname(buf: bytearray, offset: int, release: str) -> None:
    fields = ["Linux", "synthetic", release, "#1 SMP PREEMPT_DYNAMIC", "x86_64", "(none)"]
    for i, text in enumerate(fields):
        raw = text.encode()[: UTS_FIELD - 1]
        buf[offset + i * UTS_FIELD : offset + i * UTS_FIELD + len(raw)] = raw


def _printk_log(lines: tuple[str, ...]) -> bytes:
    """Records of struct printk_log (ts_nsec u64, len u16, text_len u16, dict_len u16,
    facility u8, flags:5|level:3 u8), 8-byte aligned, as Linux 3.5-5.9 wrote them."""
    out = bytearray()
    for i, line in enumerate(lines):
        text = line.encode()
        length = (SIZEOF_PRINTK_LOG + len(text) + 7) & ~7
        level_flags = (0x2 << 0) | (6 << 5)  # LOG_NEWLINE, level 6 (info)
        header = struct.pack("<QHHHBB", (i + 1) * 1_000_000, length, len(text), 0, 0, level_flags)
        out += header + text + bytes(length - SIZEOF_PRINTK_LOG - len(text))
    if len(out) > LOG_BUF_PAGES * PAGE_SIZE:
        raise ValueError("dmesg lines do not fit the synthetic log buffer")
    return bytes(out)


def _vmcoreinfo(spec: CoreSpec, kernel_vaddr: int, log_buf_vaddr: int) -> str:
    sym = {
        "init_uts_ns": kernel_vaddr + _UTS_OFFSET,
        "mem_map": kernel_vaddr + _MEM_MAP_PTR,
        "log_buf": kernel_vaddr + _LOG_BUF_PTR,
        "log_buf_len": kernel_vaddr + _LOG_BUF_LEN,
        "log_first_idx": kernel_vaddr + _LOG_FIRST_IDX,
        "log_next_idx": kernel_vaddr + _LOG_NEXT_IDX,
        "swapper_pg_dir": kernel_vaddr + _PGD_PAGE * PAGE_SIZE,
        "init_top_pgt": kernel_vaddr + _PGD_PAGE * PAGE_SIZE,
        "_stext": kernel_vaddr,
    }
    lines = [
        f"OSRELEASE={spec.osrelease}",
        f"PAGESIZE={PAGE_SIZE}",
        *(f"SYMBOL({name})={addr:x}" for name, addr in sym.items()),
        f"SIZE(page)={SIZEOF_PAGE}",
        "OFFSET(page.flags)=0",
        "OFFSET(page._refcount)=52",
        "OFFSET(page.mapping)=24",
        "OFFSET(page.lru)=8",
        "OFFSET(page._mapcount)=48",
        "OFFSET(page.private)=40",
        "OFFSET(page.compound_head)=8",
        "OFFSET(uts_namespace.name)=0",
        f"SIZE(printk_log)={SIZEOF_PRINTK_LOG}",
        "OFFSET(printk_log.ts_nsec)=0",
        "OFFSET(printk_log.len)=8",
        "OFFSET(printk_log.text_len)=10",
        "NUMBER(PG_lru)=4",
        "NUMBER(PG_private)=13",
        "NUMBER(PG_swapcache)=10",
        "NUMBER(PG_swapbacked)=19",
        "NUMBER(PG_slab)=9",
        "NUMBER(PG_head_mask)=65536",
        "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129",
        "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-257",
        "NUMBER(phys_base)=0",
        "NUMBER(pgtable_l5_enabled)=0",
        "KERNELOFFSET=0",
        f"CRASHTIME={spec.crash_time}",
    ]
    return "\n".join(lines) + "\n"


def _note(name: str, ntype: int, desc: bytes) -> bytes:
    raw = name.encode() + b"\0"
    return (
        struct.pack("<III", len(raw), len(desc), ntype)
        + raw.ljust((len(raw) + 3) & ~3, b"\0")
        + desc.ljust((len(desc) + 3) & ~3, b"\0")
    )


def _prstatus_note(spec: CoreSpec, cpu: int) -> bytes:
    desc = bytearray(SIZEOF_PRSTATUS)
    struct.pack_into("<i", desc, PR_PID_OFFSET, spec.panic_pid if cpu == 0 else 0)
    regs = PR_REG_OFFSET
    struct.pack_into("<Q", desc, regs + 8 * PR_REG_RIP, START_KERNEL_MAP + 0x1234560 + cpu)
    struct.pack_into("<Q", desc, regs + 8 * PR_REG_RSP, PAGE_OFFSET + 0x7FF0 + cpu * 0x1000)
    return _note("CORE", 1, bytes(desc))


def _page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _write_elf(
    path: Path, notes: bytes, loads: list[tuple[int, int, int]], pages: dict[int, bytes]
) -> int:
    """Lay out the file as the capture kernel does: headers, notes, then each
    PT_LOAD's data from a page boundary; zero pages are holes."""
    phnum = 1 + len(loads)
    notes_offset = _page_align(64 + 56 * phnum)
    offset = _page_align(notes_offset + len(notes))
    phdrs = [struct.pack("<IIQQQQQQ", 4, 0, notes_offset, 0, 0, len(notes), len(notes), 0)]
    placed: list[tuple[int, int, int]] = []
    for vaddr, paddr, size in loads:
        phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, offset, vaddr, paddr, size, size, 0))
        placed.append((offset, paddr, size))
        offset += _page_align(size)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    with path.open("wb") as f:
        f.write(ehdr + b"".join(phdrs))
        f.seek(notes_offset)
        f.write(notes)
        for file_offset, paddr, size in placed:
            for rel in range(0, size, PAGE_SIZE):
                content = pages.get(paddr + rel)
                if content is not None:
                    f.seek(file_offset + rel)
                    f.write(content)
        f.truncate(offset)
    return offset

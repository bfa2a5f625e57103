"""Synthetic x86_64 crash dumps for the vmcore reader tests: memory, VMCOREINFO, files.

A :class:`Image` is sparse physical memory plus the VMCOREINFO text that
describes it. The kernel is loaded ``PHYS_BASE`` above its link address and the
direct map sits at a randomised-looking base that only the page tables know,
so readers must translate as they do on a KASLR kernel. Ring builders put a
printk buffer of one layout into the image and return the lines a correct
reader prints; writers save the image as an ELF core, a kdump-compressed file
(any page codec, optionally marked incomplete) or a flattened stream.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import flattened_writer

PAGE = 4096
START_KERNEL_MAP = 0xFFFFFFFF80000000
PAGE_OFFSET = 0xFFFF9A4B40000000  # "KASLR" direct map base: not in VMCOREINFO
PHYS_BASE = 0x2000000  # kernel loaded 32 MiB above its link address
RAM_SIZE = 64 << 20
KERNEL_SIZE = 4 << 20
BUILD_ID = "0123456789abcdef0123456789abcdef01234567"

# Physical placement of things.
VARS = PHYS_BASE + 0x10000  # kernel variables (prb, log_buf, ...)
PGD = PHYS_BASE + 0x20000
PUD = PGD + PAGE
PMD = PGD + 2 * PAGE
PTE = PGD + 3 * PAGE
RB_STATIC = PHYS_BASE + 0x30000  # struct printk_ringbuffer (in the kernel image)
ARRAYS = 0x1000000  # descs, infos, text ring: "allocated" RAM, reached via the direct map


def kernel_vaddr(paddr: int) -> int:
    return START_KERNEL_MAP + paddr - PHYS_BASE


def direct_vaddr(paddr: int) -> int:
    return PAGE_OFFSET + paddr


@dataclass
class Image:
    pages: dict[int, bytearray] = field(default_factory=dict)
    vmcoreinfo: list[str] = field(default_factory=list)
    osrelease: str = "6.1.0-test-amd64"
    crash_time: int = 1_700_000_000

    def write(self, paddr: int, data: bytes) -> None:
        while data:
            base = paddr & ~(PAGE - 1)
            rel = paddr - base
            take = min(len(data), PAGE - rel)
            page = self.pages.setdefault(base, bytearray(PAGE))
            page[rel : rel + take] = data[:take]
            paddr += take
            data = data[take:]

    def u64(self, paddr: int, value: int) -> None:
        self.write(paddr, struct.pack("<Q", value))

    def u32(self, paddr: int, value: int) -> None:
        self.write(paddr, struct.pack("<I", value))

    def vmcoreinfo_text(self) -> str:
        lines = [
            f"OSRELEASE={self.osrelease}",
            f"BUILD-ID={BUILD_ID}",
            f"PAGESIZE={PAGE}",
            f"SYMBOL(init_top_pgt)={kernel_vaddr(PGD):x}",
            f"SYMBOL(_stext)={kernel_vaddr(PHYS_BASE):x}",
            f"NUMBER(phys_base)={PHYS_BASE}",
            "NUMBER(pgtable_l5_enabled)=0",
            "KERNELOFFSET=2000000",
            *self.vmcoreinfo,
            f"CRASHTIME={self.crash_time}",
        ]
        return "\n".join(lines) + "\n"


def new_image() -> Image:
    """An image with page tables: the direct map of all RAM, 2 MiB pages except
    the 2 MiB at ARRAYS, which goes through a 4 KiB page table."""
    image = Image()
    present_rw = 0x3
    image.u64(PGD + 8 * ((PAGE_OFFSET >> 39) & 511), PUD | present_rw)
    image.u64(PUD + 8 * ((PAGE_OFFSET >> 30) & 511), PMD | present_rw)
    first_pmd = (PAGE_OFFSET >> 21) & 511
    for i in range(RAM_SIZE >> 21):
        paddr = i << 21
        if paddr == ARRAYS:
            image.u64(PMD + 8 * (first_pmd + i), PTE | present_rw)
            for j in range(512):
                image.u64(PTE + 8 * j, (paddr + j * PAGE) | present_rw)
        else:
            image.u64(PMD + 8 * (first_pmd + i), paddr | present_rw | 0x80)
    return image


def expected_line(ts_nsec: int, text: str) -> str:
    return f"[{ts_nsec // 10**9:5d}.{ts_nsec % 10**9 // 1000:06d}] {text}\n"


def sample_lines(count: int, seed: int = 7) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    lines = [
        (1_000_000 * (i + 1) + rng.randrange(1000), f"line {i}: " + "x" * rng.randrange(60))
        for i in range(count)
    ]
    lines[-2] = (lines[-2][0], "sysrq: Trigger a crash")
    lines[-1] = (lines[-1][0], "Kernel panic - not syncing: sysrq triggered crash")
    return lines


# --- lockless ring buffer -----------------------------------------------------------


@dataclass(frozen=True)
class RingLayout:
    """Struct offsets and sizes of one kernel generation (x86_64)."""

    name: str
    rb: dict[str, int]
    desc_ring: dict[str, int]
    desc: dict[str, int]
    data_ring: dict[str, int]
    info: dict[str, int]
    committed_state: int  # top two bits of state_var for a readable record
    infos_array: bool


LAYOUT_5_11 = RingLayout(
    "5.11+",
    rb={"desc_ring": 0, "text_data_ring": 48, "fail": 80, "SIZE": 88},
    desc_ring={"count_bits": 0, "descs": 8, "infos": 16, "head_id": 24, "tail_id": 32, "SIZE": 48},
    desc={"state_var": 0, "text_blk_lpos": 8, "SIZE": 24},
    data_ring={"size_bits": 0, "data": 8, "head_lpos": 16, "tail_lpos": 24, "SIZE": 32},
    info={"seq": 0, "ts_nsec": 8, "text_len": 16, "caller_id": 20, "dev_info": 24, "SIZE": 88},
    committed_state=2,  # finalized
    infos_array=True,
)
LAYOUT_5_10 = RingLayout(
    "5.10",
    rb={"desc_ring": 0, "text_data_ring": 40, "dict_data_ring": 72, "fail": 104, "SIZE": 112},
    desc_ring={"count_bits": 0, "descs": 8, "head_id": 16, "tail_id": 24, "SIZE": 32},
    desc={"info": 0, "state_var": 32, "text_blk_lpos": 40, "dict_blk_lpos": 56, "SIZE": 72},
    data_ring={"size_bits": 0, "data": 8, "head_lpos": 16, "tail_lpos": 24, "SIZE": 32},
    info={"seq": 0, "ts_nsec": 8, "text_len": 16, "dict_len": 18, "caller_id": 24, "SIZE": 32},
    committed_state=2,  # 5.10: bit 63 = committed
    infos_array=False,
)
# A later kernel whose structs grew and moved members: a reader must use the exported
# offsets, not constants.
LAYOUT_SHIFTED = RingLayout(
    "shifted",
    rb={"desc_ring": 16, "text_data_ring": 96, "fail": 160, "SIZE": 168},
    desc_ring={
        "count_bits": 8,
        "descs": 16,
        "infos": 40,
        "head_id": 56,
        "tail_id": 72,
        "last_finalized_seq": 80,
        "SIZE": 88,
    },
    desc={"state_var": 8, "text_blk_lpos": 24, "SIZE": 48},
    data_ring={"size_bits": 4, "data": 16, "head_lpos": 24, "tail_lpos": 32, "SIZE": 40},
    info={"seq": 8, "ts_nsec": 24, "text_len": 40, "caller_id": 44, "SIZE": 112},
    committed_state=1,  # committed, not yet finalized: still readable
    infos_array=True,
)
RING_LAYOUTS = (LAYOUT_5_11, LAYOUT_5_10, LAYOUT_SHIFTED)


def put_lockless_ring(
    image: Image,
    layout: RingLayout,
    lines: list[tuple[int, str]],
    *,
    count_bits: int = 4,
    size_bits: int = 10,
    reserved_tail_record: bool = True,
) -> list[str]:
    """Write the records into a ring too small for all of them, as the kernel does:
    old records are overwritten; the last one is left reserved (being written at
    the crash). Returns the lines a reader must print."""
    count, data_size = 1 << count_bits, 1 << size_bits
    descs_p, infos_p = ARRAYS, ARRAYS + 0x10000
    data_p = ARRAYS + 0x20000
    mask62 = (1 << 62) - 1
    head_lpos = 0
    live: list[tuple[int, int, int, int, str]] = []  # id, begin, next, ts, text
    base_id = (1 << 62) - 5  # ids wrap around the 62-bit mask during the test
    for n, (ts, text) in enumerate(lines):
        ident = (base_id + n) & mask62
        raw = text.encode()
        size = (8 + len(raw) + 7) & ~7
        begin = head_lpos
        if (begin >> size_bits) == ((begin + size - 1) >> size_bits):
            nxt = begin + size
            start = begin % data_size
        else:  # does not fit before the end: the block lives at offset 0 of the next wrap
            nxt = ((begin + size) >> size_bits << size_bits) + size
            start = 0
        head_lpos = nxt
        block = struct.pack("<Q", ident) + raw
        buf_start = data_p + start
        image.write(buf_start, block.ljust(size, b"\0"))
        live.append((ident, begin, nxt, ts, text))
        # Drop records whose text was overwritten or whose descriptor is reused.
        live = [r for r in live if r[1] >= head_lpos - data_size][-count:]
    reserved = live[-1] if reserved_tail_record else None
    expected = []
    for seq, (ident, begin, nxt, ts, text) in enumerate(live):
        i = ident % count
        state = 0 if (ident, begin) == (reserved or (None, None))[:2] else layout.committed_state
        d = descs_p + i * layout.desc["SIZE"]
        image.u64(d + layout.desc["state_var"], (state << 62) | ident)
        image.u64(d + layout.desc["text_blk_lpos"], begin)
        image.u64(d + layout.desc["text_blk_lpos"] + 8, nxt)
        info = (
            (infos_p + i * layout.info["SIZE"]) if layout.infos_array else (d + layout.desc["info"])
        )
        image.u64(info + layout.info["seq"], 1000 + seq)
        image.u64(info + layout.info["ts_nsec"], ts)
        image.write(info + layout.info["text_len"], struct.pack("<H", len(text.encode())))
        if state != 0:
            expected.append(expected_line(ts, text))
    # Slots of overwritten records keep their old (stale) ids in state reusable.
    rb = RB_STATIC
    image.u64(VARS, kernel_vaddr(rb))  # prb -> printk_rb_static
    dr = rb + layout.rb["desc_ring"]
    tr = rb + layout.rb["text_data_ring"]
    image.u32(dr + layout.desc_ring["count_bits"], count_bits)
    image.u64(dr + layout.desc_ring["descs"], direct_vaddr(descs_p))
    if layout.infos_array:
        image.u64(dr + layout.desc_ring["infos"], direct_vaddr(infos_p))
    image.u64(dr + layout.desc_ring["head_id"], live[-1][0])
    image.u64(dr + layout.desc_ring["tail_id"], live[0][0])
    image.u32(tr + layout.data_ring["size_bits"], size_bits)
    image.u64(tr + layout.data_ring["data"], direct_vaddr(data_p))
    image.u64(tr + layout.data_ring["head_lpos"], head_lpos)
    image.u64(tr + layout.data_ring["tail_lpos"], live[0][1])
    info_lines = [f"SYMBOL(prb)={kernel_vaddr(VARS):x}"]
    for struct_name, table in (
        ("printk_ringbuffer", layout.rb),
        ("prb_desc_ring", layout.desc_ring),
        ("prb_desc", layout.desc),
        ("prb_data_ring", layout.data_ring),
        ("printk_info", layout.info),
    ):
        for member, value in table.items():
            key = f"SIZE({struct_name})" if member == "SIZE" else f"OFFSET({struct_name}.{member})"
            if member != "last_finalized_seq":  # the kernel does not export it
                info_lines.append(f"{key}={value}")
    info_lines += [
        "SIZE(prb_data_blk_lpos)=16",
        "OFFSET(prb_data_blk_lpos.begin)=0",
        "OFFSET(prb_data_blk_lpos.next)=8",
    ]
    image.vmcoreinfo += info_lines
    return expected


def put_log_buf(
    image: Image,
    lines: list[tuple[int, str]],
    *,
    struct_name: str = "printk_log",
    buf_len: int = 1024,
) -> list[str]:
    """Linux 3.5-5.9 records; the log has wrapped (a len == 0 record marks the jump)."""
    header = 16
    records = []
    for ts, text in lines:
        raw = text.encode()
        length = (header + len(raw) + 7) & ~7
        records.append(
            (
                ts,
                text,
                struct.pack("<QHHHBB", ts, length, len(raw), 0, 0, 6 << 5)
                + raw.ljust(length - header, b"\0"),
            )
        )
    # Keep the newest records that fit, then place them starting near the end so they wrap.
    kept: list[tuple[int, str, bytes]] = []
    total = 0
    for rec in reversed(records):
        if total + len(rec[2]) > buf_len - 64:
            break
        kept.insert(0, rec)
        total += len(rec[2])
    buf = bytearray(buf_len)
    first = buf_len - 2 * len(kept[0][2]) - 8
    idx = first
    for _, _, blob in kept:
        if idx + len(blob) > buf_len - header:
            struct.pack_into("<QH", buf, idx, 0, 0)  # len 0: continue at offset 0
            idx = 0
        buf[idx : idx + len(blob)] = blob
        idx += len(blob)
    buf_p = ARRAYS
    image.write(buf_p, bytes(buf))
    image.u64(VARS, direct_vaddr(buf_p))
    image.u32(VARS + 8, buf_len)
    image.u32(VARS + 12, first)
    image.u32(VARS + 16, idx)
    image.vmcoreinfo += [
        f"SYMBOL(log_buf)={kernel_vaddr(VARS):x}",
        f"SYMBOL(log_buf_len)={kernel_vaddr(VARS + 8):x}",
        f"SYMBOL(log_first_idx)={kernel_vaddr(VARS + 12):x}",
        f"SYMBOL(log_next_idx)={kernel_vaddr(VARS + 16):x}",
        f"SIZE({struct_name})={header}",
        f"OFFSET({struct_name}.ts_nsec)=0",
        f"OFFSET({struct_name}.len)=8",
        f"OFFSET({struct_name}.text_len)=10",
    ]
    return [expected_line(ts, text) for ts, text, _ in kept]


def put_char_ring(image: Image, text: str, *, buf_len: int = 512) -> str:
    """Before 3.5: a character ring; log_end counts every character ever written."""
    raw = text.encode()
    end = len(raw)
    buf = bytearray(buf_len)
    for i, c in enumerate(raw):
        buf[i % buf_len] = c
    image.write(ARRAYS, bytes(buf))
    image.u64(VARS, direct_vaddr(ARRAYS))
    image.u32(VARS + 8, buf_len)
    image.u32(VARS + 12, end)
    image.vmcoreinfo += [
        f"SYMBOL(log_buf)={kernel_vaddr(VARS):x}",
        f"SYMBOL(log_buf_len)={kernel_vaddr(VARS + 8):x}",
        f"SYMBOL(log_end)={kernel_vaddr(VARS + 12):x}",
    ]
    return raw[-buf_len:].decode() if end > buf_len else text


# --- files ----------------------------------------------------------------------------


def _note(name: str, ntype: int, desc: bytes) -> bytes:
    raw = name.encode() + b"\0"
    return (
        struct.pack("<III", len(raw), len(desc), ntype)
        + raw.ljust((len(raw) + 3) & ~3, b"\0")
        + desc.ljust((len(desc) + 3) & ~3, b"\0")
    )


def notes_blob(image: Image) -> bytes:
    prstatus = bytearray(336)
    struct.pack_into("<i", prstatus, 32, 4242)
    return _note("CORE", 1, bytes(prstatus)) + _note(
        "VMCOREINFO", 0, image.vmcoreinfo_text().encode()
    )


def write_elf(image: Image, path: Path) -> Path:
    """Headers, notes, a kernel-text PT_LOAD and one RAM PT_LOAD (sparse)."""
    notes = notes_blob(image)
    loads = [(kernel_vaddr(PHYS_BASE), PHYS_BASE, KERNEL_SIZE), (direct_vaddr(0), 0, RAM_SIZE)]
    phnum = 1 + len(loads)
    notes_off = PAGE
    offset = (notes_off + len(notes) + PAGE - 1) & ~(PAGE - 1)
    phdrs = [struct.pack("<IIQQQQQQ", 4, 0, notes_off, 0, 0, len(notes), len(notes), 0)]
    placed = []
    for vaddr, paddr, size in loads:
        phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, offset, vaddr, paddr, size, size, 0))
        placed.append((offset, paddr, size))
        offset += size
    ehdr = (
        b"\x7fELF"
        + bytes([2, 1, 1, 0])
        + bytes(8)
        + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    )
    with path.open("wb") as f:
        f.write(ehdr + b"".join(phdrs))
        f.seek(notes_off)
        f.write(notes)
        for file_off, paddr, size in placed:
            for page_paddr, content in sorted(image.pages.items()):
                if paddr <= page_paddr < paddr + size:
                    f.seek(file_off + page_paddr - paddr)
                    f.write(content)
        f.truncate(offset)
    return path


def _encoders() -> dict[str, tuple[int, Callable[[bytes], bytes]]]:
    import lzo  # type: ignore[import-not-found]
    import snappy  # type: ignore[import-untyped]
    import zstandard

    return {
        "raw": (0, lambda page: page),
        "zlib": (0x1, lambda page: zlib.compress(page, 1)),
        "lzo": (0x2, lambda page: lzo.compress(page, 1, False)),
        "snappy": (0x4, snappy.compress),
        "zstd": (0x20, lambda page: zstandard.ZstdCompressor(level=1).compress(page)),
    }


CODECS = ("raw", "zlib", "lzo", "snappy", "zstd")


def write_kdump(
    image: Image,
    path: Path,
    codec: str = "lzo",
    *,
    lose_last: bool = False,
    filtered: tuple[int, ...] = (),
) -> Path:
    """A kdump-compressed file (header version 6) as makedumpfile -d 31 writes it.

    ``filtered``: page addresses left out of the 2nd bitmap (excluded pages);
    ``lose_last``: the last page descriptor has offset 0 and the header says incomplete.
    """
    flag, encode = _encoders()[codec]
    max_mapnr = RAM_SIZE // PAGE
    bitmap_bytes = max_mapnr // 8
    bitmap_blocks_each = (bitmap_bytes + PAGE - 1) // PAGE
    notes = notes_blob(image)
    sub_size = 104
    sub_hdr_blocks = (sub_size + len(notes) + PAGE - 1) // PAGE
    stored = sorted(p for p in image.pages if p not in filtered)
    status = flag | (0x8 if lose_last else 0)
    uts = b"".join(
        s.encode().ljust(65, b"\0")
        for s in ("Linux", "test", image.osrelease, "#1 SMP", "x86_64", "(none)")
    )
    header = b"KDUMP   " + struct.pack("<i", 6) + uts + bytes(6)
    header += struct.pack("<qq", image.crash_time, 0)
    header += struct.pack(
        "<IiiIIIIIIi",
        status,
        PAGE,
        sub_hdr_blocks,
        2 * bitmap_blocks_each,
        max_mapnr & 0xFFFFFFFF,
        0,
        0,
        0,
        0,
        1,
    )
    notes_off = PAGE + sub_size
    vmci = image.vmcoreinfo_text().encode()
    vmci_off = notes_off + notes.index(vmci)
    sub = struct.pack(
        "<QiiQQqQqQqQQQQ",
        PHYS_BASE,
        31,
        0,
        0,
        max_mapnr,
        vmci_off,
        len(vmci),
        notes_off,
        len(notes),
        0,
        0,
        0,
        max_mapnr,
        max_mapnr,
    )
    bitmap1 = bytearray(bitmap_blocks_each * PAGE)
    bitmap2 = bytearray(bitmap_blocks_each * PAGE)
    for pfn in range(max_mapnr):
        bitmap1[pfn >> 3] |= 1 << (pfn & 7)
    for paddr in stored:
        pfn = paddr // PAGE
        bitmap2[pfn >> 3] |= 1 << (pfn & 7)
    desc_off = (1 + sub_hdr_blocks + 2 * bitmap_blocks_each) * PAGE
    data_off = desc_off + 24 * len(stored)
    descs = bytearray()
    data = bytearray()
    for n, paddr in enumerate(stored):
        page = bytes(image.pages[paddr])
        packed = encode(page)
        flags = flag
        if len(packed) >= PAGE:
            packed, flags = page, 0
        offset = data_off + len(data)
        if lose_last and n == len(stored) - 1:
            offset = 0
        else:
            data += packed
        descs += struct.pack("<qIIQ", offset, len(packed), flags, 0)
    with path.open("wb") as f:
        f.write(header.ljust(PAGE, b"\0"))
        f.write((sub + notes).ljust(sub_hdr_blocks * PAGE, b"\0"))
        f.write(bitmap1 + bitmap2)
        f.write(descs)
        f.write(data)
    return path


def write_flattened(source: Path, path: Path, *, piece: int = 3000, seed: int = 3) -> Path:
    """A flattened stream of ``source``: pieces in shuffled order, one region written
    twice (garbage first, then the real bytes), as makedumpfile -F may rewrite headers."""
    content = source.read_bytes()
    pieces = [(off, content[off : off + piece]) for off in range(0, len(content), piece)]
    random.Random(seed).shuffle(pieces)
    pieces.insert(0, (100, b"\xaa" * 500))
    with path.open("wb") as out:
        flattened_writer.write_stream(pieces, out)
    return path

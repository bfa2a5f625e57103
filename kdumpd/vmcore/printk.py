"""The kernel log of a crashed kernel, read from its printk buffer through VMCOREINFO.

Layouts, told apart by what VMCOREINFO exports (never by kernel version, as
distributions backport):

* lockless ring buffer (``SYMBOL(prb)``; Linux 5.10 and later): descriptors with
  a state word and text block positions, and the record metadata (``printk_info``)
  either in its own array (``OFFSET(prb_desc_ring.infos)``, since kernel commit
  "printk: move printk_info into separate array") or, in the first version of the
  ring, inside each descriptor (``OFFSET(prb_desc.info)``);
* variable-length records (``SYMBOL(log_buf)`` with ``SIZE(printk_log)`` or
  ``SIZE(log)``; Linux 3.5-5.9), walked from ``log_first_idx`` to ``log_next_idx``;
* a plain character ring (``SYMBOL(log_end)``; before 3.5).

:func:`format_like_vmcore_dmesg` renders records the way kexec-tools'
vmcore-dmesg does, so the two outputs can be compared byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kdumpd.errors import KdumpError
from kdumpd.vmcore.dump import Dump, DumpError
from kdumpd.vmcore.vmcoreinfo import VmcoreInfoError

_DESC_SV_BITS = 64
_DESC_FLAGS_SHIFT = _DESC_SV_BITS - 2
_DESC_ID_MASK = (1 << _DESC_FLAGS_SHIFT) - 1
# State in the top two bits of state_var. 5.11+: 1 committed, 2 finalized, 3 reusable;
# 5.10 used bit 63 for committed and bit 62 for reuse, so "committed" reads as 2 there.
_READABLE_STATES = (1, 2)
# A walk longer than this is a corrupt buffer, not a log.
_MAX_RECORDS = 1 << 22


class KernelLogError(KdumpError):
    """The kernel log could not be read from the dump."""


@dataclass(frozen=True)
class LogRecord:
    seq: int
    ts_nsec: int
    text: bytes


@dataclass(frozen=True)
class KernelLog:
    layout: str  # "lockless ring buffer (infos array)", ...
    records: tuple[LogRecord, ...]
    raw_text: bytes | None = None  # pre-3.5 character ring: no records

    def text(self) -> str:
        return format_like_vmcore_dmesg(self)


def read_kernel_log(dump: Dump) -> KernelLog:
    """Find the log layout in VMCOREINFO and read every record still in the buffer."""
    info = dump.vmcoreinfo
    if not info.entries:
        raise KernelLogError(
            f"{dump.path}: the dump has no VMCOREINFO, so the kernel log cannot be located"
        )
    try:
        if info.symbol("prb") is not None:
            return _lockless(dump)
        if info.symbol("log_buf") is not None and (
            info.size("printk_log") is not None or info.size("log") is not None
        ):
            return _variable_records(dump)
        if info.symbol("log_buf") is not None and info.symbol("log_end") is not None:
            return _char_ring(dump)
    except (DumpError, VmcoreInfoError) as exc:
        raise KernelLogError(f"reading the kernel log failed: {exc}") from exc
    raise KernelLogError(
        f"{dump.path}: VMCOREINFO exports no printk buffer this reader knows "
        "(no SYMBOL(prb), SYMBOL(log_buf) or SYMBOL(log_end))"
    )


def _u(raw: bytes, offset: int, size: int) -> int:
    return int.from_bytes(raw[offset : offset + size], "little")


def _lockless(dump: Dump) -> KernelLog:
    info = dump.vmcoreinfo
    rb = dump.u64(info.need("symbol", "prb"))
    desc_ring = rb + info.need("offset", "printk_ringbuffer.desc_ring")
    text_ring = rb + info.need("offset", "printk_ringbuffer.text_data_ring")

    count_bits = dump.u32(desc_ring + info.need("offset", "prb_desc_ring.count_bits"))
    descs_addr = dump.u64(desc_ring + info.need("offset", "prb_desc_ring.descs"))
    head_id = dump.u64(desc_ring + info.need("offset", "prb_desc_ring.head_id"))
    tail_id = dump.u64(desc_ring + info.need("offset", "prb_desc_ring.tail_id"))
    size_bits = dump.u32(text_ring + info.need("offset", "prb_data_ring.size_bits"))
    data_addr = dump.u64(text_ring + info.need("offset", "prb_data_ring.data"))
    # The kernel sizes the ring from log_buf_len (at most 2 GiB) with one descriptor per
    # 32 bytes of text on average; anything larger is a corrupt ring, not a big log.
    if size_bits > 31 or count_bits > size_bits:
        raise KernelLogError(
            f"{dump.path}: implausible ring sizes (2^{count_bits} descriptors, "
            f"2^{size_bits} text bytes)"
        )
    count = 1 << count_bits
    data_size = 1 << size_bits

    desc_size = info.need("size", "prb_desc")
    sv_off = info.need("offset", "prb_desc.state_var")
    lpos_off = info.need("offset", "prb_desc.text_blk_lpos")
    begin_off = info.need("offset", "prb_data_blk_lpos.begin")
    next_off = info.need("offset", "prb_data_blk_lpos.next")
    info_size = info.need("size", "printk_info")
    seq_off = info.need("offset", "printk_info.seq")
    ts_off = info.need("offset", "printk_info.ts_nsec")
    len_off = info.need("offset", "printk_info.text_len")

    descs = dump.read(descs_addr, count * desc_size)
    infos_member = info.offset("prb_desc_ring.infos")
    if infos_member is not None:
        infos_addr = dump.u64(desc_ring + infos_member)
        infos = dump.read(infos_addr, count * info_size)
        layout = "lockless ring buffer (separate printk_info array)"

        def info_at(i: int) -> int:
            return i * info_size

        info_blob = infos
    else:
        embedded = info.need("offset", "prb_desc.info")
        layout = "lockless ring buffer (printk_info inside prb_desc)"

        def info_at(i: int) -> int:
            return i * desc_size + embedded

        info_blob = descs
    data = dump.read(data_addr, data_size)

    records: list[LogRecord] = []
    ident = tail_id & _DESC_ID_MASK
    head = head_id & _DESC_ID_MASK
    for _ in range(min(count, _MAX_RECORDS) + 1):
        i = ident % count
        base = i * desc_size
        state_var = _u(descs, base + sv_off, 8)
        state = state_var >> _DESC_FLAGS_SHIFT
        if state in _READABLE_STATES and state_var & _DESC_ID_MASK == ident:
            meta = info_at(i)
            text_len = _u(info_blob, meta + len_off, 2)
            begin = _u(descs, base + lpos_off + begin_off, 8)
            end = _u(descs, base + lpos_off + next_off, 8)
            text = _block_text(data, size_bits, data_size, begin, end)[:text_len]
            records.append(
                LogRecord(
                    seq=_u(info_blob, meta + seq_off, 8),
                    ts_nsec=_u(info_blob, meta + ts_off, 8),
                    text=text,
                )
            )
        if ident == head:
            break
        ident = (ident + 1) & _DESC_ID_MASK
    return KernelLog(layout, tuple(records))


def _block_text(data: bytes, size_bits: int, data_size: int, begin: int, end: int) -> bytes:
    """The text of one data block, as the kernel's get_data() finds it."""
    if begin & 1 or end & 1:  # data-less block (no text, or a failed reservation)
        return b""
    if begin >> size_bits == end >> size_bits and begin < end:
        start, length = begin % data_size, end - begin
    elif (begin + data_size) >> size_bits == end >> size_bits:
        # The block did not fit before the end of the ring: it starts again at 0.
        start, length = 0, end % data_size
    else:
        return b""
    # Each block starts with the descriptor id (an unsigned long) before the text.
    if length < 8:
        return b""
    return data[start + 8 : start + length]


def _variable_records(dump: Dump) -> KernelLog:
    info = dump.vmcoreinfo
    struct_name = "printk_log" if info.size("printk_log") is not None else "log"
    header = info.need("size", struct_name)
    ts_off = info.need("offset", f"{struct_name}.ts_nsec")
    len_off = info.need("offset", f"{struct_name}.len")
    text_len_off = info.need("offset", f"{struct_name}.text_len")
    buf_addr = dump.u64(info.need("symbol", "log_buf"))
    buf_len = dump.u32(info.need("symbol", "log_buf_len"))
    first = dump.u32(info.need("symbol", "log_first_idx"))
    last = dump.u32(info.need("symbol", "log_next_idx"))
    if buf_len > 1 << 31:
        raise KernelLogError(f"{dump.path}: implausible log_buf_len {buf_len}")
    buf = dump.read(buf_addr, buf_len)
    records: list[LogRecord] = []
    idx = first
    seq = 0
    for _ in range(_MAX_RECORDS):
        if idx == last:
            break
        if idx + header > buf_len:
            raise KernelLogError(f"{dump.path}: log record at {idx} runs past log_buf")
        length = _u(buf, idx + len_off, 2)
        if length == 0:  # the rest of the buffer is unused: continue at its start
            idx = 0
            continue
        text_len = _u(buf, idx + text_len_off, 2)
        text = buf[idx + header : idx + header + text_len]
        records.append(LogRecord(seq, _u(buf, idx + ts_off, 8), text))
        seq += 1
        idx += length
    return KernelLog(f"variable-length records ({struct_name})", tuple(records))


def _char_ring(dump: Dump) -> KernelLog:
    info = dump.vmcoreinfo
    buf_addr = dump.u64(info.need("symbol", "log_buf"))
    buf_len = dump.u32(info.need("symbol", "log_buf_len"))
    end = dump.u32(info.need("symbol", "log_end"))  # an unsigned int in those kernels
    buf = dump.read(buf_addr, buf_len)
    if end < buf_len:
        text = buf[:end]
    else:
        cut = end & (buf_len - 1)
        text = buf[cut:] + buf[:cut]
    return KernelLog("character ring (before 3.5)", (), text)


def _escape(text: bytes) -> Iterator[str]:
    for c in text:
        # vmcore-dmesg prints printable and space characters and escapes the rest.
        if 32 <= c < 127 or c in (9, 10, 11, 12, 13):
            yield chr(c)
        else:
            yield f"\\x{c:02x}"


def format_like_vmcore_dmesg(log: KernelLog) -> str:
    """``[sssss.uuuuuu] text`` per record, as kexec-tools' vmcore-dmesg prints it."""
    if log.raw_text is not None:
        return "".join(_escape(log.raw_text))
    lines = []
    for rec in log.records:
        sec, nsec = divmod(rec.ts_nsec, 1_000_000_000)
        lines.append(f"[{sec:5d}.{nsec // 1000:06d}] " + "".join(_escape(rec.text)) + "\n")
    return "".join(lines)

"""Page decompressors for makedumpfile's kdump-compressed format, standard library only.

zlib comes from the standard library. LZO1X and snappy are decoded here in pure
Python: both formats are small byte-oriented schemes, and dmesg extraction
touches only a few hundred pages, so speed matters little and the capture agent
stays free of extension modules. zstd is used through the ``zstandard`` module
when it is importable; otherwise a zstd page raises :class:`CodecMissing`, which
names what to install.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from types import ModuleType

from kdumpd.errors import KdumpError

# Per-page flags of page_desc.flags (and header status bits), from makedumpfile's diskdump_mod.h.
DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
DUMP_DH_EXCLUDED_VMEMMAP = 0x10
DUMP_DH_COMPRESSED_ZSTD = 0x20
COMPRESSION_MASK = (
    DUMP_DH_COMPRESSED_ZLIB
    | DUMP_DH_COMPRESSED_LZO
    | DUMP_DH_COMPRESSED_SNAPPY
    | DUMP_DH_COMPRESSED_ZSTD
)
NAMES = {
    DUMP_DH_COMPRESSED_ZLIB: "zlib",
    DUMP_DH_COMPRESSED_LZO: "lzo",
    DUMP_DH_COMPRESSED_SNAPPY: "snappy",
    DUMP_DH_COMPRESSED_ZSTD: "zstd",
}


class CodecError(KdumpError):
    """A compressed page is corrupt."""


class CodecMissing(KdumpError):
    """The page uses a compression this Python has no decoder for."""


def lzo1x_decompress(src: bytes, out_len: int) -> bytes:
    """Decode one LZO1X block (as LZO1X-1 writes it) into at most ``out_len`` bytes."""
    out = bytearray()
    ip = 0
    n = len(src)

    def byte() -> int:
        nonlocal ip
        if ip >= n:
            raise CodecError("LZO stream ends early")
        value = src[ip]
        ip += 1
        return value

    def run_length(t: int, mask: int) -> int:
        # A zero length field is extended by 255 per zero byte, then the next byte.
        if t & mask:
            return t & mask
        total = mask
        while True:
            b = byte()
            if b:
                return total + b
            total += 255

    def literal(count: int) -> None:
        nonlocal ip
        if ip + count > n:
            raise CodecError("LZO literal runs past the input")
        out.extend(src[ip : ip + count])
        ip += count

    def copy_match(distance: int, length: int) -> None:
        start = len(out) - distance
        if start < 0:
            raise CodecError("LZO match points before the start of the output")
        if distance >= length:
            out.extend(out[start : start + length])
        else:  # overlapping: the match repeats bytes it is writing
            for i in range(length):
                out.append(out[start + i])
        if len(out) > out_len:
            raise CodecError(f"LZO block decodes to more than {out_len} bytes")

    # state: literals copied right before this instruction (0, 1-3, or 4 for a long run);
    # it changes what a short instruction (t < 16) means.
    state = 0
    if n and src[0] > 17:
        ip = 1
        count = src[0] - 17
        literal(count)
        state = count if count < 4 else 4
    while True:
        t = byte()
        if t < 16:
            if state == 0:
                literal(3 + run_length(t, 15))
                state = 4
                continue
            if state == 4:
                distance, length = 1 + 0x800 + (t >> 2) + (byte() << 2), 3
            else:
                distance, length = 1 + (t >> 2) + (byte() << 2), 2
            trailing = t & 3
        elif t >= 64:
            distance, length = 1 + ((t >> 2) & 7) + (byte() << 3), (t >> 5) + 1
            trailing = t & 3
        elif t >= 32:
            length = run_length(t, 31) + 2
            word = byte() | (byte() << 8)
            distance, trailing = 1 + (word >> 2), word & 3
        else:
            length = run_length(t, 7) + 2
            word = byte() | (byte() << 8)
            distance = ((t & 8) << 11) + (word >> 2)
            if distance == 0:
                break  # the end-of-stream instruction
            distance += 0x4000
            trailing = word & 3
        copy_match(distance, length)
        literal(trailing)
        state = trailing
    if len(out) > out_len:
        raise CodecError(f"LZO block decodes to {len(out)} bytes, more than {out_len}")
    return bytes(out)


def snappy_decompress(src: bytes, out_len: int) -> bytes:
    """Decode one raw snappy block (varint length, then literal and copy elements)."""
    ip = 0
    n = len(src)
    expected = 0
    shift = 0
    while True:
        if ip >= n:
            raise CodecError("snappy block ends inside its length")
        b = src[ip]
        ip += 1
        expected |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if expected > out_len:
        raise CodecError(f"snappy block claims {expected} bytes, more than {out_len}")
    out = bytearray()
    while ip < n:
        tag = src[ip]
        ip += 1
        kind = tag & 3
        if kind == 0:
            length = (tag >> 2) + 1
            if length > 60:
                extra = length - 60
                if ip + extra > n:
                    raise CodecError("snappy literal length runs past the input")
                length = int.from_bytes(src[ip : ip + extra], "little") + 1
                ip += extra
            if ip + length > n:
                raise CodecError("snappy literal runs past the input")
            out.extend(src[ip : ip + length])
            ip += length
            continue
        need = (0, 1, 2, 4)[kind]
        if ip + need > n:
            raise CodecError("snappy copy element runs past the input")
        if kind == 1:
            length = ((tag >> 2) & 7) + 4
            distance = ((tag >> 5) << 8) | src[ip]
            ip += 1
        elif kind == 2:
            length = (tag >> 2) + 1
            distance = int.from_bytes(src[ip : ip + 2], "little")
            ip += 2
        else:
            length = (tag >> 2) + 1
            distance = int.from_bytes(src[ip : ip + 4], "little")
            ip += 4
        start = len(out) - distance
        if distance == 0 or start < 0:
            raise CodecError("snappy copy points before the start of the output")
        for i in range(length):
            out.append(out[start + i])
        if len(out) > expected:
            raise CodecError("snappy block decodes to more than it announced")
    if len(out) != expected:
        raise CodecError(f"snappy block decodes to {len(out)} bytes, announced {expected}")
    return bytes(out)


def _zstd_module() -> ModuleType | None:
    # zstd is not in Python's standard library before 3.14; the zstandard package
    # (python3-zstandard on Debian) provides it when installed.
    try:
        return importlib.import_module("zstandard")
    except ImportError:
        return None


def zstd_available() -> bool:
    return _zstd_module() is not None


def _zstd(src: bytes, out_len: int) -> bytes:
    module = _zstd_module()
    if module is None:
        raise CodecMissing(
            "this dump has zstd-compressed pages and this Python has no zstd decoder: "
            "install python3-zstandard (Debian) or the zstandard package"
        )
    try:
        data = module.ZstdDecompressor().decompress(src, max_output_size=out_len)
    except module.ZstdError as exc:
        raise CodecError(f"zstd page is corrupt: {exc}") from exc
    return bytes(data)


def _zlib(src: bytes, out_len: int) -> bytes:
    try:
        data = zlib.decompressobj().decompress(src, out_len)
    except zlib.error as exc:
        raise CodecError(f"zlib page is corrupt: {exc}") from exc
    return data


_DECODERS: dict[int, Callable[[bytes, int], bytes]] = {
    DUMP_DH_COMPRESSED_ZLIB: _zlib,
    DUMP_DH_COMPRESSED_LZO: lzo1x_decompress,
    DUMP_DH_COMPRESSED_SNAPPY: snappy_decompress,
    DUMP_DH_COMPRESSED_ZSTD: _zstd,
}


def decompress(flags: int, data: bytes, page_size: int) -> bytes:
    """One page from its stored bytes and page_desc.flags (0: stored raw)."""
    kind = flags & COMPRESSION_MASK
    if kind == 0:
        if len(data) != page_size:
            raise CodecError(f"a page stored raw has {len(data)} bytes, not {page_size}")
        return data
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise CodecError(f"unknown page compression flags {flags:#x}")
    page = decoder(data, page_size)
    if len(page) != page_size:
        raise CodecError(f"{NAMES[kind]} page decodes to {len(page)} bytes, not {page_size}")
    return page

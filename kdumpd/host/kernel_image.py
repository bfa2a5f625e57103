"""The memory a kernel image occupies once loaded (§4.3 step 4): ELF, or compressed inside.

A bzImage or zboot image is searched for a compressed ELF payload, as the
kernel's scripts/extract-vmlinux does; the standard library decodes gzip, xz,
bzip2 and lzma. For the others, and without an image, the running kernel's
``Kernel code/rodata/data/bss`` ranges of /proc/iomem stand in.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kdumpd.host import iomem_kernel_bytes
from kdumpd.paths import Paths

PT_LOAD = 1
ELF_MAGIC = b"\x7fELF"

# Compressed payload magics of a bzImage / zboot image, as the kernel's
# scripts/extract-vmlinux scans for them. Only the stdlib-decodable ones are
# tried; the others are named so the estimate can say why it fell back.
_DECODABLE_MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00\x00"),
)
UNSUPPORTED_FORMATS: tuple[tuple[str, bytes], ...] = (
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("lzo", b"\x89LZO"),
)
# Enough decompressed bytes to hold the ELF and program headers of any kernel.
_HEADER_BYTES = 256 * 1024
# Cap on attempts per format: magics are short and recur by chance in code.
_MAX_TRIES_PER_FORMAT = 64


def elf_load_memsz(data: bytes) -> int | None:
    """Sum of ``p_memsz`` over PT_LOAD program headers of an ELF image; None if not ELF.

    Only the header part of ``data`` is needed.
    """
    if len(data) < 52 or not data.startswith(ELF_MAGIC):
        return None
    elf_class, encoding = data[4], data[5]
    if elf_class not in (1, 2) or encoding not in (1, 2):
        return None
    order = "<" if encoding == 1 else ">"
    try:
        if elf_class == 2:
            (phoff,) = struct.unpack_from(order + "Q", data, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", data, 54)
        else:
            (phoff,) = struct.unpack_from(order + "I", data, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", data, 42)
        total = 0
        for index in range(phnum):
            base = phoff + index * phentsize
            (p_type,) = struct.unpack_from(order + "I", data, base)
            if p_type != PT_LOAD:
                continue
            if elf_class == 2:
                (p_memsz,) = struct.unpack_from(order + "Q", data, base + 40)
            else:
                (p_memsz,) = struct.unpack_from(order + "I", data, base + 20)
            total += p_memsz
    except struct.error:
        return None
    return total


def _offsets(data: bytes, magic: bytes) -> Iterator[int]:
    start = 0
    for _ in range(_MAX_TRIES_PER_FORMAT):
        found = data.find(magic, start)
        if found < 0:
            return
        yield found
        start = found + 1


def _decompress_head(fmt: str, payload: bytes) -> bytes:
    """The first _HEADER_BYTES of a compressed stream; raises on corrupt data."""
    if fmt == "gzip":
        return zlib.decompressobj(wbits=31).decompress(payload, _HEADER_BYTES)
    if fmt == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload, _HEADER_BYTES)
    if fmt == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload, _HEADER_BYTES)
    if fmt == "bzip2":
        return bz2.BZ2Decompressor().decompress(payload, _HEADER_BYTES)
    raise ValueError(f"unknown format {fmt}")


@dataclass(frozen=True)
class KernelSize:
    """Kernel image memory footprint and how it was obtained."""

    bytes: int
    source: str  # "elf", "gzip", "xz", "bzip2", "lzma" or "iomem"
    note: str | None = None


def image_load_size(data: bytes) -> tuple[int | None, str | None]:
    """PT_LOAD memsz of a kernel image: plain ELF, or an ELF compressed inside it.

    Returns ``(size, how)`` on success, else ``(None, unsupported)`` where
    ``unsupported`` names a compression found that the stdlib cannot decode.
    """
    plain = elf_load_memsz(data)
    if plain is not None:
        return plain, "elf"
    for fmt, magic in _DECODABLE_MAGICS:
        for offset in _offsets(data, magic):
            try:
                head = _decompress_head(fmt, data[offset:])
            except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError):
                continue
            size = elf_load_memsz(head)
            if size is not None:
                return size, fmt
    for fmt, magic in UNSUPPORTED_FORMATS:
        if magic in data:
            return None, fmt
    return None, None


def kernel_image_size(paths: Paths, image: Path | None) -> KernelSize:
    """Memory the capture kernel image occupies once loaded (§4.3 step 4).

    Falls back to the running kernel's ``Kernel code/rodata/data/bss`` in
    /proc/iomem when the image is missing, not ELF, or compressed in a format
    the stdlib cannot decode (zstd, lz4, lzo).
    """
    note: str | None = None
    if image is not None:
        try:
            data = image.read_bytes()
        except OSError as exc:
            note = f"cannot read kernel image {image}: {exc.strerror}"
        else:
            size, how = image_load_size(data)
            if size is not None:
                return KernelSize(size, how or "elf")
            if how is not None:
                note = f"kernel image is {how}-compressed, which kdumpd cannot decompress"
            else:
                note = "kernel image holds no ELF kernel kdumpd can find"
    fallback = iomem_kernel_bytes(paths)
    if note is None:
        note = "kernel image not found"
    return KernelSize(fallback, "iomem", f"{note}; using /proc/iomem Kernel code/data sizes")

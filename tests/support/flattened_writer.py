"""Writes makedumpfile flattened streams of known content, for tests of the readers."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO

from kdumpd.vmcore.flattened import (
    END_MARKER,
    HEADER_SIZE,
    RECORD_HEADER,
    SIGNATURE,
    SIGNATURE_FIELD,
    TYPE_FLAT_HEADER,
    VERSION_FLAT_HEADER,
)


def header_bytes() -> bytes:
    """The 4 KiB flat header that opens every stream."""
    head = SIGNATURE.ljust(SIGNATURE_FIELD, b"\0")
    head += struct.pack(">qq", TYPE_FLAT_HEADER, VERSION_FLAT_HEADER)
    return head.ljust(HEADER_SIZE, b"\0")


def write_stream(pieces: Iterable[tuple[int, bytes]], out: BinaryIO) -> None:
    """Write a complete stream that rebuilds a file from (offset, data) pieces, in order."""
    out.write(header_bytes())
    for offset, data in pieces:
        out.write(RECORD_HEADER.pack(offset, len(data)))
        out.write(data)
    out.write(END_MARKER)

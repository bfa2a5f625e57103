"""VMCOREINFO: the ``KEY=value`` text every crashed kernel leaves for its readers.

Owns the typed accessors over the parsed text: OSRELEASE, BUILD-ID, CRASHTIME,
PAGESIZE, and the ``SYMBOL(name)``, ``OFFSET(type.member)``, ``SIZE(type)``,
``LENGTH(name)`` and ``NUMBER(name)`` families. ``SYMBOL`` and ``KERNELOFFSET``
are printed by the kernel as bare hex; ``SIZE``/``OFFSET``/``LENGTH`` as
decimal; ``NUMBER`` as decimal except a few arch lines that print ``0x...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kdumpd.errors import KdumpError


class VmcoreInfoError(KdumpError):
    """A value a reader needs is missing from VMCOREINFO or malformed."""


def parse_vmcoreinfo(text: str) -> dict[str, str]:
    """Split ``KEY=value`` lines on the first '='; later duplicates win, as in the kernel."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            info[key.strip()] = value.strip()
    return info


def _int(text: str, base: int) -> int | None:
    try:
        return int(text, base)
    except ValueError:
        return None


@dataclass(frozen=True)
class VmcoreInfo:
    """Parsed VMCOREINFO with typed lookups; ``None`` means the kernel did not export it."""

    entries: Mapping[str, str] = field(default_factory=dict)
    where: str = "VMCOREINFO"

    @classmethod
    def from_text(cls, text: str, where: str = "VMCOREINFO") -> VmcoreInfo:
        return cls(parse_vmcoreinfo(text), where)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    @property
    def osrelease(self) -> str | None:
        return self.entries.get("OSRELEASE")

    @property
    def build_id(self) -> str | None:
        """GNU build-id of the crashed kernel's vmlinux (hex), exported by recent kernels."""
        text = self.entries.get("BUILD-ID")
        return text.lower() if text and _int(text, 16) is not None else None

    @property
    def crash_time(self) -> int | None:
        """CRASHTIME (epoch seconds): appended only when the kernel ran its crash path."""
        text = self.entries.get("CRASHTIME")
        return _int(text, 10) if text else None

    @property
    def page_size(self) -> int | None:
        text = self.entries.get("PAGESIZE")
        return _int(text, 10) if text else None

    @property
    def kernel_offset(self) -> int | None:
        text = self.entries.get("KERNELOFFSET")
        return _int(text, 16) if text else None

    def symbol(self, name: str) -> int | None:
        text = self.entries.get(f"SYMBOL({name})")
        return _int(text, 16) if text else None

    def offset(self, member: str) -> int | None:
        """``OFFSET(type.member)``; ``member`` is ``"type.member"``."""
        text = self.entries.get(f"OFFSET({member})")
        return _int(text, 10) if text else None

    def size(self, name: str) -> int | None:
        text = self.entries.get(f"SIZE({name})")
        return _int(text, 10) if text else None

    def length(self, name: str) -> int | None:
        text = self.entries.get(f"LENGTH({name})")
        return _int(text, 10) if text else None

    def number(self, name: str) -> int | None:
        text = self.entries.get(f"NUMBER({name})")
        return _int(text, 0) if text else None

    def need(self, kind: str, name: str) -> int:
        """A value a reader cannot do without: ``kind`` is symbol/offset/size/length/number."""
        lookup = {
            "symbol": (self.symbol, "SYMBOL"),
            "offset": (self.offset, "OFFSET"),
            "size": (self.size, "SIZE"),
            "length": (self.length, "LENGTH"),
            "number": (self.number, "NUMBER"),
        }
        getter, label = lookup[kind]
        value = getter(name)
        if value is None:
            raise VmcoreInfoError(
                f"{self.where}: {label}({name}) is missing or malformed; this kernel's "
                "VMCOREINFO does not describe what the reader needs"
            )
        return value

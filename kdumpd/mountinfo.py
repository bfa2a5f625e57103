"""/proc/<pid>/mountinfo: the one parser of it, for both kernels (standard library only)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    majmin: str
    root: str
    mountpoint: str
    mount_options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def options(self) -> tuple[str, ...]:
        """Per-mount options, then the filesystem's own, without repeats (what findmnt shows)."""
        seen: list[str] = []
        for option in (*self.mount_options, *self.super_options):
            if option not in seen:
                seen.append(option)
        return tuple(seen)


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo.

    (Not codecs' unicode_escape: the capture image carries only the codecs the
    agent imports at build time, and that one is loaded lazily.)
    """
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Every mount of a /proc/<pid>/mountinfo text, in file order (later mounts hide earlier)."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        if len(fields) < dash + 4:
            continue
        entries.append(
            MountEntry(
                majmin=fields[2],
                root=unescape(fields[3]),
                mountpoint=unescape(fields[4]),
                mount_options=tuple(fields[5].split(",")),
                fstype=fields[dash + 1],
                source=unescape(fields[dash + 2]),
                super_options=tuple(fields[dash + 3].split(",")),
            )
        )
    return entries

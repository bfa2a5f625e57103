"""Machine architecture names: ``uname -m`` spellings, and Debian's names for the same machines."""

from __future__ import annotations

# Debian architecture names and the uname -m spellings of 32-bit x86.
_ALIASES: dict[str, str] = {
    "amd64": "x86_64",
    "arm64": "aarch64",
    "ppc64el": "ppc64le",
    "i486": "i386",
    "i586": "i386",
    "i686": "i386",
}


def normalize_arch(arch: str) -> str:
    """``arch`` as ``uname -m`` names it (``amd64`` -> ``x86_64``, ``i686`` -> ``i386``)."""
    return _ALIASES.get(arch, arch)

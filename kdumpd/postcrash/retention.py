"""Which old dumps to delete: at most N dumps and B bytes, never the newest one.

The limits come from the variables file: ``KDUMPD_KEEP_DUMPS`` (or Debian
kdump-tools' ``KDUMP_NUM_DUMPS``) and ``KDUMPD_KEEP_BYTES`` (a size such as
``20G``); 0 or unset means no limit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from kdumpd.postcrash.newdumps import Dump


@dataclass(frozen=True)
class Limits:
    keep_dumps: int = 0
    keep_bytes: int = 0

    @property
    def any(self) -> bool:
        return self.keep_dumps > 0 or self.keep_bytes > 0


def to_delete(dumps: list[Dump], limits: Limits) -> list[Dump]:
    """The oldest dumps beyond the limits; ``dumps`` is oldest first. The newest always stays."""
    if not dumps or not limits.any:
        return []
    keep: list[Dump] = [dumps[-1]]
    used = dumps[-1].size_bytes
    for dump in reversed(dumps[:-1]):
        if limits.keep_dumps and len(keep) >= limits.keep_dumps:
            break
        if limits.keep_bytes and used + dump.size_bytes > limits.keep_bytes:
            break
        keep.append(dump)
        used += dump.size_bytes
    kept = {d.directory for d in keep}
    return [d for d in dumps if d.directory not in kept]


def delete(dumps: list[Dump]) -> list[tuple[Dump, str]]:
    """Remove the dump directories; returns (dump, error) for those that could not go."""
    failed: list[tuple[Dump, str]] = []
    for dump in dumps:
        try:
            shutil.rmtree(dump.directory)
        except OSError as exc:
            failed.append((dump, exc.strerror or str(exc)))
    return failed

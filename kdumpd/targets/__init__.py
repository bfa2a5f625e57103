"""Dump targets, first-kernel side: one module per kind, behind :class:`.base.TargetKind`.

Filesystem targets (the default path target and ``ext4 UUID=...`` style
directives, :mod:`.fs`), raw devices (:mod:`.raw`) and ssh servers
(:mod:`.ssh`, with :mod:`.network`). The capture side of each kind is a sink
in :mod:`kdumpd.capture`.
"""

from __future__ import annotations

from kdumpd.config.kdumpconf import FS_KINDS
from kdumpd.contract.plan import TargetKind as PlanKind
from kdumpd.targets import fs, raw, ssh
from kdumpd.targets.base import TargetKind

#: The module of each kind of the plan.
KINDS: dict[PlanKind, TargetKind] = {"fs": fs, "raw": raw, "ssh": ssh}

#: The kind each kdump.conf target directive names (no directive: the default, fs).
DIRECTIVES: dict[str, PlanKind] = {**dict.fromkeys(FS_KINDS, "fs"), "raw": "raw", "ssh": "ssh"}


def for_plan(kind: PlanKind) -> TargetKind:
    """The module of a plan's target kind."""
    return KINDS[kind]


def for_directive(directive: str | None) -> TargetKind | None:
    """The module for a kdump.conf target directive (None: no directive); None if unsupported."""
    if directive is None:
        return fs
    kind = DIRECTIVES.get(directive)
    return KINDS[kind] if kind is not None else None

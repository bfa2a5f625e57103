"""What one plan's image needs from its target kind and from its fallback root filesystem."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from kdumpd import targets
from kdumpd.contract.plan import CapturePlan
from kdumpd.paths import Paths
from kdumpd.targets.base import ImageNeeds


def _union(first: Iterable[str], second: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for item in (*first, *second):
        if item and item not in out:
            out.append(item)
    return tuple(out)


def image_needs(paths: Paths, plan: CapturePlan) -> ImageNeeds:
    """The target kind's needs, plus the driver and device of ``failure_action dump_to_rootfs``."""
    needs = targets.for_plan(plan.target.kind).image_needs(paths, plan)
    if plan.rootfs is None:
        return needs
    return replace(
        needs,
        drivers=_union(needs.drivers, (plan.rootfs.fstype,)),
        devices=_union(needs.devices, (plan.rootfs.device,)),
    )

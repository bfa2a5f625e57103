"""The raw block device target, first-kernel side: is the device safe to overwrite.

The capture side writes the dump as a makedumpfile flattened stream straight
onto the device (§1.3 raw row). In the first kernel this module

* checks that the device may be overwritten (:func:`check_raw_device`): it
  exists, is a block device, holds no mounted filesystem, no active swap, no
  partition that is mounted, is not part of a device-mapper or RAID stack, and
  carries no filesystem or partition-table signature;
* warns when the device is smaller than the RAM to dump (§5.1).

A pending dump on the device is brought home on the next boot by
:mod:`kdumpd.postcrash.raw_import`.

Difference from kdump-utils, on purpose: a device with a filesystem
signature is refused with an error (kdump-utils only warns and goes on to
destroy it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kdumpd import proc
from kdumpd.config.checks import resolve_under_root
from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.contract.plan import CapturePlan, RawTarget
from kdumpd.errors import ConfigError, Problem, TargetError
from kdumpd.host import meminfo_total_kib
from kdumpd.messages import Messages
from kdumpd.paths import KDUMP_CONF, Paths
from kdumpd.targets.base import CompiledTarget, ImageNeeds
from kdumpd.targets.fs import persistent_name, read_mounts
from kdumpd.vmcore import flattened


def device_number(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def _sys_block(paths: Paths, majmin: str) -> Path:
    return paths.under_root(f"/sys/dev/block/{majmin}")


def _partitions(paths: Paths, majmin: str) -> list[tuple[str, str]]:
    """(name, maj:min) of each partition of a whole disk, from sysfs."""
    found: list[tuple[str, str]] = []
    base = _sys_block(paths, majmin)
    try:
        children = sorted(base.iterdir())
    except OSError:
        return found
    for child in children:
        if not (child / "partition").is_file():
            continue
        try:
            number = (child / "dev").read_text(encoding="ascii").strip()
        except OSError:
            continue
        found.append((child.name, number))
    return found


def _holders(paths: Paths, majmin: str) -> list[str]:
    try:
        return sorted(p.name for p in (_sys_block(paths, majmin) / "holders").iterdir())
    except OSError:
        return []


def _active_swaps(paths: Paths) -> set[str]:
    """maj:min of every active swap device (/proc/swaps names them by path)."""
    numbers: set[str] = set()
    try:
        lines = paths.under_root("/proc/swaps").read_text(encoding="utf-8").splitlines()[1:]
    except OSError:
        return numbers
    for line in lines:
        words = line.split()
        if len(words) < 2 or words[1] != "partition":
            continue
        try:
            info = os.stat(paths.under_root(words[0].replace("\\040", " ")))
        except (OSError, ValueError):
            continue
        if stat.S_ISBLK(info.st_mode):
            numbers.add(device_number(info.st_rdev))
    return numbers


def in_use_problems(
    paths: Paths, device: str, majmin: str, *, source: str = KDUMP_CONF, line: int = 0
) -> list[Problem]:
    """Why the block device ``majmin`` must not be overwritten: mounts, swap, holders."""
    problems: list[Problem] = []
    try:
        mounts = read_mounts(paths)
    except TargetError as exc:
        return [Problem(source, line, f"cannot tell whether {device} is in use: {exc}")]
    members = [(device, majmin)] + [(f"partition {n}", m) for n, m in _partitions(paths, majmin)]
    swaps = _active_swaps(paths)
    for label, number in members:
        where = sorted({m.mountpoint for m in mounts if m.majmin == number})
        if where:
            problems.append(
                Problem(
                    source,
                    line,
                    f"raw dump target {device} ({label}) is mounted at {', '.join(where)}; "
                    "a dump would destroy that filesystem. Name an unused device.",
                )
            )
        if number in swaps:
            problems.append(
                Problem(
                    source,
                    line,
                    f"raw dump target {device} ({label}) is an active swap device; "
                    "run 'swapoff' and remove it from /etc/fstab, or name another device.",
                )
            )
        holders = _holders(paths, number)
        if holders:
            problems.append(
                Problem(
                    source,
                    line,
                    f"raw dump target {device} ({label}) is in use by {', '.join(holders)} "
                    "(LVM, RAID or dm-crypt); name a device nothing else uses.",
                )
            )
    return problems


def probe_signatures(location: Path) -> dict[str, str]:
    """What ``blkid -p`` finds on a device or image: TYPE, PTTYPE... (empty when nothing)."""
    try:
        done = proc.run(["blkid", "-p", "-o", "export", str(location)], ok_codes=(0, 2))
    except proc.ProgramError:
        return {}
    if done.returncode == 2:
        return {}
    found: dict[str, str] = {}
    for text in done.stdout.splitlines():
        key, sep, value = text.partition("=")
        if sep:
            found[key.strip()] = value.strip()
    return found


def check_raw_device(
    paths: Paths,
    device: str,
    *,
    allow_regular_file: bool = False,
    source: str = KDUMP_CONF,
    line: int = 0,
) -> list[Problem]:
    """Every reason the ``raw <device>`` target cannot be used; empty when it can.

    ``allow_regular_file`` accepts a plain file in place of the block device
    (tests, disk images). A device that holds a pending dump stream is fine.
    """
    location = resolve_under_root(paths, device)
    if location is None:
        return [
            Problem(
                source,
                line,
                f"raw partition {device} not found. Name an existing block device by a "
                "persistent path such as /dev/disk/by-id/...",
            )
        ]
    try:
        info = location.stat()
    except OSError as exc:
        return [Problem(source, line, f"Bad raw disk {device}: {exc.strerror}")]
    if stat.S_ISBLK(info.st_mode):
        problems = in_use_problems(
            paths, device, device_number(info.st_rdev), source=source, line=line
        )
    elif stat.S_ISREG(info.st_mode) and allow_regular_file:
        problems = []
    else:
        return [
            Problem(
                source,
                line,
                f"Bad raw disk {device}: not a block device. The raw target needs a disk, "
                "partition or logical volume it may overwrite.",
            )
        ]
    if problems:
        return problems
    try:
        if find_pending_dump(location):
            return problems
    except TargetError as exc:
        # kdump-utils reads one block with dd at build time for the same reason.
        cause = exc.__cause__
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        return [
            Problem(
                source,
                line,
                f"Bad raw disk {device}: cannot read it ({why}). Check that the device is "
                "present and that kdumpctl runs as root.",
            )
        ]
    found = probe_signatures(location)
    if "TYPE" in found:
        fs = found["TYPE"]
        problems.append(
            Problem(
                source,
                line,
                f"Detected '{fs}' signature on {device}, data loss is expected if kdump "
                f"writes to it. If that {fs} data is not needed, erase the signature with "
                f"'wipefs -a {device}'; otherwise name another device.",
            )
        )
    elif "PTTYPE" in found:
        problems.append(
            Problem(
                source,
                line,
                f"Detected a '{found['PTTYPE']}' partition table on {device}; a raw dump "
                "would destroy it. Name one partition (or wipe the table with "
                f"'wipefs -a {device}' if it is not needed).",
            )
        )
    return problems


#: Persistent names for a raw device, in order of preference (kdump-utils uses by-id).
RAW_PERSISTENT_DIRS: tuple[str, ...] = ("by-id", "by-path")


def compile_raw_device(paths: Paths, device: str, *, where: tuple[str, int]) -> str:
    """The ``raw <device>`` target as the plan names it: checked, by a persistent name.

    Raises ConfigError at ``where`` with every reason the device cannot be
    used (:func:`check_raw_device`). A name under /dev/disk/ is kept as
    written; a kernel name (``/dev/vdb``) becomes its by-id (else by-path)
    link, because kernel names may differ in the capture kernel.
    """
    source, line = where
    problems = check_raw_device(paths, device, source=source, line=line)
    if problems:
        raise ConfigError(problems)
    if device.startswith("/dev/disk/"):
        return device
    return persistent_name(paths, device, prefer=RAW_PERSISTENT_DIRS)


def device_size(location: Path) -> int:
    """Size in bytes of a block device or file (the end of the device, as seek finds it)."""
    fd = os.open(location, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def check_raw_size(paths: Paths, device: str, messages: Messages) -> None:
    """Warn (never fail) when the device is smaller than the RAM to dump, as kdump-utils does."""
    location = resolve_under_root(paths, device)
    total = meminfo_total_kib(paths)
    if location is None or total is None:
        messages.warn("Check dump target size failed")
        return
    try:
        size_kib = device_size(location) // 1024
    except OSError:
        messages.warn("Check dump target size failed")
        return
    if size_kib < total:
        messages.warn("There might not be enough space to save a vmcore.")
        messages.warn(f"The size of {device} should be greater than {total} kilo bytes.")


# -- pending dumps ----------------------------------------------------------------


def find_pending_dump(location: Path) -> bool:
    """Whether a flattened dump stream starts at offset 0 of the device (or file)."""
    try:
        with open(location, "rb") as f:
            head = f.read(flattened.PROBE_SIZE)
    except OSError as exc:
        raise TargetError(
            f"cannot read raw dump target {location}: {exc.strerror}; run as root"
        ) from exc
    return flattened.is_flattened(head)


# -- the kind -------------------------------------------------------------------


def compile(config: KdumpConfig, paths: Paths, *, where: tuple[str, int]) -> CompiledTarget:
    """``raw <device>``: the checked device, by a persistent name (:func:`compile_raw_device`)."""
    assert config.target is not None
    device = compile_raw_device(paths, config.target.value, where=where)
    return CompiledTarget(target=RawTarget(device=device), devices=(device,))


def preflight(paths: Paths, messages: Messages, plan: CapturePlan) -> None:
    """Compiling checked the device; nothing is written to it before a crash."""


def image_needs(paths: Paths, plan: CapturePlan) -> ImageNeeds:
    """The device, for host-only driver selection."""
    target = plan.target
    if not isinstance(target, RawTarget):
        return ImageNeeds()
    return ImageNeeds(devices=(target.device,))

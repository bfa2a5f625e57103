"""Filesystem dump targets, first-kernel side: which filesystem, how to mount it.

Two ways to name a filesystem target (§1.3 of the kdump-utils reference):

* the *default target*: no target directive, ``path`` is a directory of the
  running system; the filesystem backing it (bind mounts and btrfs subvolumes
  resolved through the mountinfo ``root`` field) becomes the target and
  ``path`` is rewritten relative to that filesystem;
* an explicit directive ``<fstype> <device>`` with ``<device>`` a device node,
  ``UUID=...`` or ``LABEL=...``; its type must match what the host reports.

Either way the result is a :class:`kdumpd.contract.plan.MountSpec` that the capture
agent mounts itself: a udev persistent device name (by-uuid, then by-id, then
by-label), the capture-kernel mount point (``/sysroot`` for the root
filesystem, ``/kdumproot/<M>`` for one mounted at ``M``, ``/kdumproot`` for an
unmounted one) and mount options rewritten per §5.2.

Everything is read from files under :class:`~kdumpd.paths.Paths`
(``/proc/self/mountinfo``, ``/dev/disk/*``, ``/sys/dev/block``, ``/etc/fstab``);
the only program started is ``blkid``, for the type of an unmounted device.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdumpd import proc
from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.contract.plan import CapturePlan, FsTarget, MountSpec
from kdumpd.errors import ConfigError, Problem, TargetError
from kdumpd.messages import Messages
from kdumpd.mountinfo import MountEntry, parse_mountinfo
from kdumpd.paths import Paths
from kdumpd.targets.base import CompiledTarget, ImageNeeds

#: Where the capture kernel mounts the filesystem that is ``/`` in the first kernel.
SYSROOT = "/sysroot"
#: Parent of every other capture-kernel mount point.
KDUMPROOT = "/kdumproot"
#: udev persistent-name directories, in order of preference.
PERSISTENT_DIRS: tuple[str, ...] = ("by-uuid", "by-id", "by-label")
#: Mount options that make no sense for a mount the capture agent needs (§5.2).
DROPPED_OPTIONS = frozenset({"noauto", "nofail", "nobootwait"})


@dataclass(frozen=True)
class ResolvedFs:
    """A resolved filesystem target: the mount and the dump directory below it."""

    mount: MountSpec
    path: str  # absolute, below mount.mountpoint
    host_device: str  # the device node as the first kernel names it (for --add-device)
    mounted_at: str | None  # where the first kernel has it mounted, if anywhere


# -- mountinfo ----------------------------------------------------------------


def read_mounts(paths: Paths) -> list[MountEntry]:
    """The mounts of the managed system; raise TargetError when mountinfo is unreadable."""
    try:
        return parse_mountinfo(paths.proc_mounts.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        raise TargetError(
            f"cannot read {paths.proc_mounts}: {exc.strerror}; is /proc mounted?"
        ) from exc


def _is_below(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory.rstrip("/") + "/")


def _relative(path: str, directory: str) -> str:
    """``path`` as seen from ``directory`` (both absolute), as an absolute path."""
    if directory == "/":
        return path
    rest = path[len(directory.rstrip("/")) :]
    return rest if rest else "/"


def _join(*parts: str) -> str:
    joined = posixpath.join("/", *(p.lstrip("/") for p in parts))
    return normalize_path(joined)


def normalize_path(path: str) -> str:
    """Squeeze repeated slashes, drop ``.`` and a trailing slash (kdump-utils squeezes ``//``)."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    return "/" + norm.lstrip("/")


def mount_for_path(entries: Sequence[MountEntry], path: str) -> MountEntry:
    """The mount a file at ``path`` lives on: the longest mount point above it, last one wins."""
    best: MountEntry | None = None
    for entry in entries:
        if not _is_below(path, entry.mountpoint):
            continue
        if best is None or len(entry.mountpoint) >= len(best.mountpoint):
            best = entry
    if best is None:
        raise TargetError(f"no mounted filesystem holds {path}; is / listed in mountinfo?")
    return best


def _primary_mount(entries: Sequence[MountEntry], hit: MountEntry, fs_path: str) -> MountEntry:
    """The mount of the same filesystem that shows the largest part of it above ``fs_path``.

    For a bind mount of ``/data/crash`` at ``/var/crash`` this is the ``/data``
    mount; the capture kernel mounts that and writes below it. The root
    filesystem wins ties, so a bind of a directory of ``/`` goes to /sysroot.
    """
    candidates = [
        e
        for e in entries
        if e.majmin == hit.majmin and e.fstype == hit.fstype and _is_below(fs_path, e.root)
    ]
    if not candidates:
        return hit

    def rank(entry: MountEntry) -> tuple[int, int]:
        return (len(entry.root.rstrip("/")), 0 if entry.mountpoint == "/" else 1)

    return sorted(candidates, key=rank)[0]


def capture_mountpoint(first_kernel_mountpoint: str | None) -> str:
    """Where the capture kernel mounts a filesystem mounted at ``M`` in the first kernel (§5.2)."""
    if first_kernel_mountpoint is None:
        return KDUMPROOT
    if first_kernel_mountpoint == "/":
        return SYSROOT
    return _join(KDUMPROOT, first_kernel_mountpoint)


def rewrite_options(options: Iterable[str]) -> str:
    """§5.2: ``ro`` becomes ``rw``; noauto, nofail, nobootwait go; nothing left gives defaults."""
    out: list[str] = []
    for option in options:
        option = option.strip()
        if not option or option in DROPPED_OPTIONS:
            continue
        if option == "ro":
            option = "rw"
        if option not in out:
            out.append(option)
    return ",".join(out) if out else "defaults"


# -- devices ------------------------------------------------------------------


def _resolve_in_root(paths: Paths, device: str) -> str:
    """Follow symlinks of a /dev path inside the managed tree; return the final absolute path."""
    current = normalize_path(device)
    for _ in range(40):
        link = paths.under_root(current)
        if not link.is_symlink():
            return current
        target = os.readlink(link)
        if target.startswith("/"):
            current = normalize_path(target)
        else:
            current = normalize_path(posixpath.join(posixpath.dirname(current), target))
    return current


def _devname_from_sysfs(paths: Paths, majmin: str) -> str | None:
    """The /dev node of a block device number, from /sys/dev/block/<maj:min>/uevent."""
    uevent = paths.under_root(f"/sys/dev/block/{majmin}/uevent")
    try:
        text = uevent.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("DEVNAME="):
            return "/dev/" + line.removeprefix("DEVNAME=").strip()
    return None


def persistent_name(paths: Paths, device: str, *, prefer: Sequence[str] = PERSISTENT_DIRS) -> str:
    """A /dev/disk/by-* name that points at ``device``; ``device`` itself when none does.

    The kernel names (``/dev/vda1``) may differ in the capture kernel; udev's
    persistent links do not.
    """
    wanted = _resolve_in_root(paths, device)
    for kind in prefer:
        directory = paths.under_root(f"/dev/disk/{kind}")
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            candidate = f"/dev/disk/{kind}/{name}"
            if _resolve_in_root(paths, candidate) == wanted:
                return candidate
    return device


def _udev_escape(text: str) -> str:
    """How udev spells a label in /dev/disk/by-label (blanks and slashes hex-escaped)."""
    return "".join(f"\\x{ord(c):02x}" if c in " /\\\t\"'" else c for c in text)


def device_for_spec(paths: Paths, spec: str) -> str | None:
    """The device node a ``UUID=``/``LABEL=``/``/dev/...`` spec names, if it exists now."""
    spec = spec.strip()
    if spec.startswith(("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=")):
        key, _, value = spec.partition("=")
        value = value.strip().strip('"')
        directory = {
            "UUID": "by-uuid",
            "LABEL": "by-label",
            "PARTUUID": "by-partuuid",
            "PARTLABEL": "by-partlabel",
        }[key]
        name = value if key in ("UUID", "PARTUUID") else _udev_escape(value)
        link = f"/dev/disk/{directory}/{name}"
        if key == "UUID" and not paths.under_root(link).exists():
            link = f"/dev/disk/{directory}/{value.lower()}"
        return link if paths.under_root(link).exists() else None
    if spec.startswith("/dev/"):
        return spec if paths.under_root(spec).exists() else None
    return None


def _entry_device(paths: Paths, entry: MountEntry) -> str:
    """The device node of a mount, by its source, or by its number when the source is vague."""
    if entry.source.startswith("/dev/") and entry.source != "/dev/root":
        return entry.source
    return _devname_from_sysfs(paths, entry.majmin) or entry.source


def _same_device(paths: Paths, a: str, b: str) -> bool:
    return _resolve_in_root(paths, a) == _resolve_in_root(paths, b)


# -- the two kinds of targets -------------------------------------------------


def default_target(paths: Paths, path: str, *, where: tuple[str, int]) -> ResolvedFs:
    """The filesystem backing ``path`` on the running system, and ``path`` within it.

    ``where`` is (file, line) of the ``path`` directive, for errors.
    """
    path = normalize_path(path)
    host_path = paths.under_root(path)
    if not host_path.is_dir():
        raise ConfigError(
            [
                Problem(
                    where[0],
                    where[1],
                    f"Dump path {path} does not exist. Create it or point 'path' elsewhere.",
                )
            ]
        )
    if paths.root == Path("/"):
        path = normalize_path(os.path.realpath(path))
    entries = read_mounts(paths)
    hit = mount_for_path(entries, path)
    fs_path = _join(hit.root, _relative(path, hit.mountpoint))
    primary = _primary_mount(entries, hit, fs_path)
    in_fs = _relative(fs_path, primary.root) if primary.root != "/" else fs_path
    if primary.fstype in ("nfs", "nfs4", "virtiofs", "tmpfs", "ramfs", "overlay"):
        raise ConfigError(
            [
                Problem(
                    where[0],
                    where[1],
                    f"Dump path {path} is on a {primary.fstype} filesystem, which kdumpd "
                    "cannot dump to yet; choose a path on a local disk filesystem.",
                )
            ]
        )
    device = _entry_device(paths, primary)
    mount = MountSpec(
        device=persistent_name(paths, device),
        mountpoint=capture_mountpoint(primary.mountpoint),
        fstype=primary.fstype,
        options=rewrite_options(primary.options),
    )
    return ResolvedFs(mount=mount, path=in_fs, host_device=device, mounted_at=primary.mountpoint)


def _fstab_options(paths: Paths, spec: str, device: str) -> tuple[str, ...] | None:
    """Options of the /etc/fstab line for this device, if there is one."""
    try:
        text = paths.fstab.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        words = line.split()
        if len(words) < 4 or words[0].startswith("#"):
            continue
        if words[0] == spec or device_for_spec(paths, words[0]) in (spec, device):
            return tuple(words[3].split(","))
        other = device_for_spec(paths, words[0])
        if other is not None and _same_device(paths, other, device):
            return tuple(words[3].split(","))
    return None


def blkid_type(device: str) -> str | None:
    """The filesystem type blkid reports for an unmounted device, None when it finds none."""
    try:
        done = proc.run(["blkid", "-o", "value", "-s", "TYPE", device], ok_codes=(0, 2))
    except proc.ProgramError:
        return None
    value = done.stdout.strip()
    return value or None


def explicit_target(
    paths: Paths, fstype: str, spec: str, path: str, *, where: tuple[str, int]
) -> ResolvedFs:
    """Resolve ``<fstype> <spec>`` from kdump.conf; ``path`` is relative to that filesystem."""
    file, line = where
    spec = spec.strip()
    device = device_for_spec(paths, spec)
    if device is None:
        raise ConfigError(
            [
                Problem(
                    file,
                    line,
                    f'Dump target "{spec}" does not exist on this system; check the device '
                    "name, UUID or LABEL (blkid lists them).",
                )
            ]
        )
    entries = read_mounts(paths)
    mounted = [
        e for e in entries if e.root == "/" and _same_device(paths, _entry_device(paths, e), device)
    ]
    entry = mounted[-1] if mounted else None
    real = entry.fstype if entry is not None else blkid_type(device)
    if real is not None and real != fstype:
        raise ConfigError(
            [
                Problem(
                    file,
                    line,
                    f'"{spec}" have a wrong type config "{fstype}", expected "{real}"',
                )
            ]
        )
    if entry is not None:
        options: tuple[str, ...] = entry.options
        mounted_at: str | None = entry.mountpoint
        if not paths.under_root(_join(entry.mountpoint, path)).is_dir():
            raise ConfigError(
                [
                    Problem(
                        file,
                        line,
                        f'Dump path "{normalize_path(path)}" does not exist in dump target '
                        f'"{spec}"; create it below {entry.mountpoint}.',
                    )
                ]
            )
    else:
        options = _fstab_options(paths, spec, device) or ()
        mounted_at = None
    mount = MountSpec(
        device=persistent_name(paths, device),
        mountpoint=capture_mountpoint(mounted_at),
        fstype=fstype,
        options=rewrite_options(options),
    )
    return ResolvedFs(
        mount=mount, path=normalize_path(path), host_device=device, mounted_at=mounted_at
    )


def root_target(paths: Paths) -> ResolvedFs:
    """The root filesystem as the capture kernel mounts it (/sysroot), for dump_to_rootfs."""
    entries = read_mounts(paths)
    roots = [e for e in entries if e.mountpoint == "/"]
    if not roots:
        raise TargetError("the root filesystem is not listed in mountinfo")
    entry = roots[-1]
    primary = _primary_mount(entries, entry, entry.root)
    device = _entry_device(paths, primary)
    mount = MountSpec(
        device=persistent_name(paths, device),
        mountpoint=SYSROOT,
        fstype=entry.fstype,
        options=rewrite_options(entry.options),
    )
    return ResolvedFs(mount=mount, path="/", host_device=device, mounted_at="/")


def device_stack_modules(paths: Paths, device: str) -> tuple[str, ...]:
    """dracut modules the capture image needs to see ``device``: dm, lvm, crypt, mdraid.

    Read from sysfs: a dm device's ``dm/uuid`` starts with ``LVM-`` or
    ``CRYPT-``; an md array has an ``md`` directory.
    """
    node = _resolve_in_root(paths, device)
    name = posixpath.basename(node)
    block = paths.under_root(f"/sys/class/block/{name}")
    modules: list[str] = []
    try:
        uuid = (block / "dm" / "uuid").read_text(encoding="utf-8").strip()
    except OSError:
        uuid = None
    if uuid is not None:
        modules.append("dm")
        if uuid.startswith("LVM-"):
            modules.append("lvm")
        if uuid.startswith("CRYPT-"):
            modules.append("crypt")
    if (block / "md").is_dir():
        modules.append("mdraid")
    return tuple(modules)


# -- the kind -------------------------------------------------------------------


def compile(config: KdumpConfig, paths: Paths, *, where: tuple[str, int]) -> CompiledTarget:
    """The default path target (no directive), or ``<fstype> <device>``, as the plan's target."""
    target = config.target
    if target is None:
        resolved = default_target(paths, config.path, where=where)
    else:
        resolved = explicit_target(paths, target.kind, target.value, config.path, where=where)
    return CompiledTarget(
        target=FsTarget(path=resolved.path, mount=resolved.mount),
        devices=(resolved.host_device,),
    )


def preflight(paths: Paths, messages: Messages, plan: CapturePlan) -> None:
    """Nothing to prove beyond what compiling checked: the filesystem is there."""


def image_needs(paths: Paths, plan: CapturePlan) -> ImageNeeds:
    """The filesystem's driver, and its device for host-only driver selection."""
    target = plan.target
    if not isinstance(target, FsTarget) or target.mount is None:
        return ImageNeeds()
    return ImageNeeds(drivers=(target.mount.fstype,), devices=(target.mount.device,))

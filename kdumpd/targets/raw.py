"""The raw block device target, first-kernel side: is the device safe, and bring dumps home.

The capture side writes the dump as a makedumpfile flattened stream straight
onto the device (§1.3 raw row). In the first kernel this module

* checks that the device may be overwritten (:func:`check_raw_device`): it
  exists, is a block device, holds no mounted filesystem, no active swap, no
  partition that is mounted, is not part of a device-mapper or RAID stack, and
  carries no filesystem or partition-table signature;
* warns when the device is smaller than the RAM to dump (§5.1);
* imports a pending dump (§5.6, :func:`import_raw_dump`): reassembles the
  stream into ``<crash dir>/127.0.0.1-<date>/vmcore`` with ``makedumpfile -R``,
  verifies the result, records the import, and only then invalidates the
  stream on the device. On any failure before that point the device is left
  untouched, because it holds the only copy of the dump.

Differences from kdump-utils, on purpose: a device with a filesystem
signature is refused with an error (kdump-utils only warns and goes on to
destroy it); the import is verified and recorded under the state directory,
so a stream is never imported twice even if invalidating it failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kdumpd import flattened, proc
from kdumpd.capture.fs import DMESG, LOCAL_ADDRESS, VMCORE, VMCORE_INCOMPLETE, dump_dir_name
from kdumpd.config.checks import resolve_under_root
from kdumpd.errors import ConfigError, Problem
from kdumpd.messages import Messages
from kdumpd.paths import Paths
from kdumpd.targets import TargetError
from kdumpd.targets.fs import persistent_name, read_mounts

CONFIG_FILE = "/etc/kdump.conf"
#: The block a raw dump starts with; zeroing it makes the stream unrecognisable.
INVALIDATE_BYTES = 512
#: How much of the stream identifies it in import records.
FINGERPRINT_BYTES = 1 << 20
IMPORTS_DIR = "raw-imports"
KDUMP_SIGNATURES = (b"KDUMP   ", b"\x7fELF")

# Reassembly reads the whole device through a shell redirection, because the
# program runner only feeds text to stdin; "$1" and "$2" keep both paths out
# of the shell's parsing.
_REASSEMBLE_SCRIPT = 'exec makedumpfile -R "$1" < "$2"'


class RawImportError(TargetError):
    """A pending raw dump could not be imported; the device was left as it was."""


@dataclass(frozen=True)
class RawImport:
    """A dump brought home from a raw device."""

    directory: Path
    vmcore: Path
    size: int
    fingerprint: str
    dmesg: Path | None


# -- checks ---------------------------------------------------------------------


def _majmin(rdev: int) -> str:
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
            numbers.add(_majmin(info.st_rdev))
    return numbers


def in_use_problems(
    paths: Paths, device: str, majmin: str, *, source: str = CONFIG_FILE, line: int = 0
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
    source: str = CONFIG_FILE,
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
        problems = in_use_problems(paths, device, _majmin(info.st_rdev), source=source, line=line)
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


def mem_total_kib(paths: Paths) -> int | None:
    """MemTotal of /proc/meminfo in KiB, None when unreadable."""
    try:
        text = paths.proc_meminfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for row in text.splitlines():
        if row.startswith("MemTotal:"):
            words = row.split()
            if len(words) >= 2 and words[1].isdigit():
                return int(words[1])
    return None


def check_raw_size(paths: Paths, device: str, messages: Messages) -> None:
    """Warn (never fail) when the device is smaller than the RAM to dump, as kdump-utils does."""
    location = resolve_under_root(paths, device)
    total = mem_total_kib(paths)
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


def fingerprint(location: Path) -> str:
    """sha256 of the first MiB of the stream: the same dump always gives the same value."""
    digest = hashlib.sha256()
    with open(location, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
    return digest.hexdigest()


def _record_path(paths: Paths, print_: str) -> Path:
    return paths.state_dir / IMPORTS_DIR / f"{print_}.json"


def read_import_record(paths: Paths, print_: str) -> dict[str, object] | None:
    """The record of an earlier import of the stream with this fingerprint, if any."""
    try:
        data = json.loads(_record_path(paths, print_).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def invalidate_stream(location: Path, expected: str) -> None:
    """Zero the first block of the device so the stream is not found again.

    ``expected`` is the fingerprint of the stream that was imported: if the
    device now holds something else, nothing is written.
    """
    if not find_pending_dump(location) or fingerprint(location) != expected:
        raise RawImportError(
            f"the dump stream on {location} changed during the import; it was not erased"
        )
    try:
        fd = os.open(location, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes(INVALIDATE_BYTES), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise RawImportError(f"cannot erase the dump stream on {location}: {exc.strerror}") from exc


def verify_dump_file(path: Path) -> None:
    """Raise RawImportError unless ``path`` is a non-empty kdump-compressed or ELF dump."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise RawImportError(f"the reassembled dump {path} is unreadable: {exc.strerror}") from exc
    if size == 0 or not any(head.startswith(sig) for sig in KDUMP_SIGNATURES):
        raise RawImportError(
            f"the reassembled dump {path} is not a kdump-compressed or ELF file "
            f"({size} bytes, starts with {head!r})"
        )


def _check_stream(location: Path, device: str) -> flattened.StreamSummary:
    """Walk the stream before makedumpfile -R sees it.

    makedumpfile 1.7.2 -R loops forever when its input ends inside a record
    (a dump cut off by a second crash, or a device smaller than the dump), so
    a stream without its end marker must never reach it.
    """
    try:
        with open(location, "rb") as f:
            summary = flattened.scan(f, where=device)
    except (OSError, flattened.FlattenedFormatError) as exc:
        raise RawImportError(
            f"the dump stream on {device} is unreadable: {exc}. " + _manual_hint(device)
        ) from exc
    if not summary.complete:
        raise RawImportError(
            f"the dump stream on {device} is incomplete: it breaks off after "
            f"{summary.records} records ({summary.stream_size} bytes) without an end "
            "marker, so the capture did not finish (the device may be too small, or "
            "the capture kernel stopped). " + _discard_hint(device)
        )
    return summary


def _discard_hint(device: str) -> str:
    return (
        f"The partial stream stays on {device}; to discard it: "
        f"dd if=/dev/zero of={device} bs=512 count=1"
    )


def _manual_hint(device: str) -> str:
    return (
        f"The dump is still on {device}. To save it by hand: "
        f"makedumpfile -R /var/crash/vmcore < {device}; "
        f"to discard it: dd if=/dev/zero of={device} bs=512 count=1"
    )


def import_raw_dump(
    paths: Paths,
    device: str,
    *,
    messages: Messages,
    now: datetime,
    crash_dir: Path | None = None,
    timeout: float | None = None,
) -> RawImport | None:
    """Bring a pending dump home from ``device`` (§5.6); None when there is none.

    ``crash_dir`` (default ``paths.var_crash``) receives
    ``127.0.0.1-<YYYY-MM-DD-HH:MM:SS>/vmcore`` and, when makedumpfile can read
    the kernel log, ``vmcore-dmesg.txt``. ``timeout`` bounds the reassembly
    (None: no bound; a large dump takes minutes).
    """
    location = resolve_under_root(paths, device)
    if location is None:
        raise RawImportError(
            f"raw partition {device} not found; a pending dump on it cannot be imported"
        )
    if not find_pending_dump(location):
        return None
    info = location.stat()
    if stat.S_ISBLK(info.st_mode):
        busy = in_use_problems(paths, device, _majmin(info.st_rdev))
        if busy:
            raise RawImportError(
                "not importing the dump stream found on "
                f"{device}: " + "; ".join(p.message for p in busy)
            )
    print_ = fingerprint(location)
    earlier = read_import_record(paths, print_)
    if earlier is not None:
        messages.warn(
            f"The dump on {device} was already saved to {earlier.get('directory')}; "
            "erasing it from the device."
        )
        invalidate_stream(location, print_)
        return None

    summary = _check_stream(location, device)
    base = crash_dir if crash_dir is not None else paths.var_crash
    directory = base / dump_dir_name(LOCAL_ADDRESS, now)
    try:
        base.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(base).free
        if free < summary.output_size:
            raise RawImportError(
                f"not enough space in {base} for the dump on {device}: it needs "
                f"{summary.output_size} bytes, {free} are free. Free some space. "
                + _manual_hint(device)
            )
        directory.mkdir(mode=0o700)
    except OSError as exc:
        raise RawImportError(
            f"cannot create {directory} for the dump on {device}: {exc.strerror}. "
            + _manual_hint(device)
        ) from exc
    incomplete = directory / VMCORE_INCOMPLETE
    try:
        proc.run(
            ["sh", "-c", _REASSEMBLE_SCRIPT, "sh", str(incomplete), str(location)],
            timeout=timeout,
        )
        verify_dump_file(incomplete)
        dmesg = _save_dmesg(incomplete, directory / DMESG, messages)
        with open(incomplete, "rb") as f:
            os.fsync(f.fileno())
        vmcore = directory / VMCORE
        os.replace(incomplete, vmcore)
        _fsync_dir(directory)
        size = vmcore.stat().st_size
        record = {
            "device": device,
            "imported": now.isoformat(),
            "directory": str(directory),
            "size": size,
            "sha256_first_mib": print_,
        }
        _write_durably(_record_path(paths, print_), json.dumps(record, indent=2).encode())
    except (proc.ProgramError, RawImportError, OSError) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RawImportError(
            f"saving the dump from {device} failed: {reason}. " + _manual_hint(device)
        ) from exc

    messages.info(f"Dump saved to {vmcore}")
    try:
        invalidate_stream(location, print_)
    except (RawImportError, OSError) as exc:
        # The dump is safe and recorded: the next start finds the record and
        # retries the erase instead of importing the same stream again.
        messages.warn(f"could not erase the imported dump stream on {device}: {exc}")
    return RawImport(directory, vmcore, size, print_, dmesg)


def _save_dmesg(vmcore: Path, out: Path, messages: Messages) -> Path | None:
    """The kernel log of the dump, when makedumpfile can read it (unknown kernels fail)."""
    try:
        proc.run(["makedumpfile", "--dump-dmesg", str(vmcore), str(out)], timeout=600)
    except proc.ProgramError as exc:
        out.unlink(missing_ok=True)
        messages.warn(f"could not extract the kernel log from the raw dump: {exc}")
        return None
    return out if out.exists() else None

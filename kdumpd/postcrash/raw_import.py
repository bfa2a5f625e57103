"""A raw device's pending dump, brought home on the next boot (§5.6).

:func:`import_raw_dump` reassembles the flattened stream the capture kernel
wrote onto the device into ``<crash dir>/127.0.0.1-<date>/vmcore`` with
``makedumpfile -R``, verifies the result, records the import, and only then
invalidates the stream on the device. On any failure before that point the
device is left untouched, because it holds the only copy of the dump.

Difference from kdump-utils, on purpose: the import is verified and recorded
under the state directory, so a stream is never imported twice even if
invalidating it failed.
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

from kdumpd import proc
from kdumpd.config.checks import resolve_under_root
from kdumpd.contract.layout import (
    DMESG,
    LOCAL_ADDRESS,
    VMCORE,
    VMCORE_INCOMPLETE,
    dump_dir_name,
)
from kdumpd.durable import rename_into_place, write_atomic
from kdumpd.errors import TargetError
from kdumpd.messages import Messages
from kdumpd.paths import Paths
from kdumpd.targets.raw import device_number, find_pending_dump, in_use_problems
from kdumpd.vmcore import flattened

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
        busy = in_use_problems(paths, device, device_number(info.st_rdev))
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
        vmcore = directory / VMCORE
        rename_into_place(incomplete, vmcore)
        size = vmcore.stat().st_size
        record = {
            "device": device,
            "imported": now.isoformat(),
            "directory": str(directory),
            "size": size,
            "sha256_first_mib": print_,
        }
        write_atomic(_record_path(paths, print_), json.dumps(record, indent=2).encode())
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

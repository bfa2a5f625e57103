"""Readings of the running system: reservation, loaded state, dump mode, Secure Boot, kernels.

The size of a kernel image is read by :mod:`kdumpd.host.kernel_image`.

Everything here reads files under a :class:`~kdumpd.paths.Paths` (so tests and
``kdumpctl --root`` point it at another tree) and starts programs only through
:func:`kdumpd.proc.run`. Most functions are pure functions of file contents;
the readers around them are thin.

Compatibility facts (kdump-utils ``kdumpctl``/``kdump-lib.sh``) are cited by the
section of the reference spec they come from (§N).
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kdumpd import proc
from kdumpd.config.sysconfig import SysConfig
from kdumpd.errors import KdumpError
from kdumpd.paths import Paths

DumpMode = Literal["kdump", "fadump"]

MIB = 1024 * 1024


class KernelNotFound(KdumpError):
    """No kernel image for the capture kernel release was found in the boot directories."""


# ---------------------------------------------------------------------------
# machine identity


def machine_arch(uname: Callable[[], os.uname_result] = os.uname) -> str:
    """The machine architecture as ``uname -m`` prints it (``x86_64``, ``aarch64``, ...)."""
    return uname().machine


def running_release(uname: Callable[[], os.uname_result] = os.uname) -> str:
    """The running kernel's release as ``uname -r`` prints it."""
    return uname().release


_DEBUG_SUFFIXES = ("+debug", "-debug")


def kernel_release(
    paths: Paths,
    sysconfig: SysConfig,
    *,
    running: str | None = None,
    notes: list[str] | None = None,
) -> str:
    """The release of the capture kernel (§2 ``KDUMP_KERNELVER``).

    ``KDUMP_KERNELVER`` wins when set. Otherwise the running
    release is used, except that a debug kernel (``+debug``/``-debug``) is
    replaced by its non-debug sibling when that one's modules are installed:
    debug kernels need far more memory than the reservation was sized for.
    A sentence for the user is appended to ``notes`` when that happens.
    """
    if sysconfig.kernelver.strip():
        return sysconfig.kernelver.strip()
    release = running if running is not None else running_release()
    for suffix in _DEBUG_SUFFIXES:
        if release.endswith(suffix):
            plain = release[: -len(suffix)]
            if (paths.modules / plain / "modules.dep").is_file():
                if notes is not None:
                    notes.append(f"Use of debug kernel detected. Trying to use {plain}")
                return plain
    return release


# ---------------------------------------------------------------------------
# reservation and loaded state (§3.1, §3.2)


class HostReadError(KdumpError):
    """A file of the host exists but cannot be read (a directory where a file belongs)."""


# The kernel answers EBUSY to reading /sys/kernel/kexec_crash_size while a kexec
# load or unload holds kexec_mutex (crash_get_memory_size() uses kexec_trylock()):
# a status asked during kdumpd.service's load waits for the load to end.
BUSY_WAIT_SECONDS = 120.0
BUSY_POLL_SECONDS = 0.2


def _read_text(path: Path) -> str | None:
    """The text of a host file; None when it is absent. Raises HostReadError otherwise.

    Absent is a normal answer (no such kernel feature); anything else (a
    directory, no permission, a kexec load that stays busy) is a problem the
    user must hear about.
    """
    waited = 0.0
    while True:
        try:
            return path.read_text(errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.EBUSY and waited < BUSY_WAIT_SECONDS:
                time.sleep(BUSY_POLL_SECONDS)
                waited += BUSY_POLL_SECONDS
                continue
            if exc.errno == errno.EBUSY:
                raise HostReadError(
                    f"cannot read {path}: {exc.strerror} (a kexec load or unload is running;"
                    " try again)"
                ) from None
            raise HostReadError(
                f"cannot read {path}: {exc.strerror}; it must be a readable file"
            ) from None


def _read_int(path: Path) -> int | None:
    """An integer sysfs attribute, or None when the file is missing or not a number."""
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip() or "0", 0)
    except ValueError:
        return None


def dump_mode(paths: Paths) -> DumpMode:
    """``fadump`` when ``/sys/kernel/fadump/enabled`` is 1, else ``kdump`` (§3.1)."""
    return "fadump" if _read_int(paths.fadump_enabled) == 1 else "kdump"


def kexec_supported(paths: Paths) -> bool:
    """The kernel was built with crash-kexec support: ``/sys/kernel/kexec_crash_loaded`` exists."""
    return paths.kexec_crash_loaded.exists()


def crash_size_bytes(paths: Paths, mode: DumpMode | None = None) -> int:
    """Memory reserved for the capture kernel in bytes; 0 when none or unknown (§3.2)."""
    mode = mode or dump_mode(paths)
    node = paths.fadump_mem_reserved if mode == "fadump" else paths.kexec_crash_size
    return max(_read_int(node) or 0, 0)


def crash_loaded(paths: Paths, mode: DumpMode | None = None) -> bool:
    """The capture kernel is loaded (kdump) or registered (fadump) (§3.2)."""
    mode = mode or dump_mode(paths)
    node = paths.fadump_registered if mode == "fadump" else paths.kexec_crash_loaded
    return _read_int(node) == 1


@dataclass(frozen=True)
class Status:
    """What ``kdumpctl status`` reports (§3.5), with the reason when not operational."""

    mode: DumpMode
    supported: bool
    reserved_bytes: int
    loaded: bool

    @property
    def operational(self) -> bool:
        return self.reason is None

    @property
    def reason(self) -> str | None:
        """Why kdump is not operational, as the one sentence kdump-utils prints; None if it is."""
        if not self.supported:
            return f"{self.mode.capitalize()} is not supported on this kernel"
        if self.mode == "kdump" and self.reserved_bytes == 0:
            return "No memory reserved for crash kernel"
        if not self.loaded:
            return "capture kernel not loaded"
        return None


def read_status(paths: Paths) -> Status:
    """Read mode, support, reservation and loaded state of the system under ``paths``."""
    mode = dump_mode(paths)
    # fadump skips the kexec feasibility checks; its own node tells support.
    supported = paths.fadump_registered.exists() if mode == "fadump" else kexec_supported(paths)
    return Status(
        mode=mode,
        supported=supported,
        reserved_bytes=crash_size_bytes(paths, mode),
        loaded=crash_loaded(paths, mode),
    )


# ---------------------------------------------------------------------------
# Secure Boot (§2.2 "Secure Boot detection")


def _efivar_value(efivars: Path, name: str) -> int | None:
    """The first value byte of EFI variable ``name-<guid>`` (after 4 attribute bytes)."""
    try:
        candidates = sorted(efivars.glob(f"{name}-*"))
    except OSError:
        return None
    for candidate in candidates:
        try:
            data = candidate.read_bytes()
        except OSError:
            continue
        if len(data) >= 5:
            return data[4]
    return None


def secure_boot_enforced(paths: Paths) -> bool:
    """Secure Boot is enforced, so kexec must use the signature-checking file syscall (``-s``).

    EFI: ``SecureBoot`` is 1 and ``SetupMode`` is 0. PowerPC: the device tree has
    ``ibm,secureboot/os-secureboot-enforcing`` or ``ibm,secure-boot`` >= 2.
    s390: ``/sys/firmware/ipl/secure`` is 1.
    """
    if (
        _efivar_value(paths.efivars, "SecureBoot") == 1
        and _efivar_value(paths.efivars, "SetupMode") == 0
    ):
        return True
    if (paths.device_tree / "ibm,secureboot" / "os-secureboot-enforcing").exists():
        return True
    try:
        level = (paths.device_tree / "ibm,secure-boot").read_bytes()
    except OSError:
        level = b""
    if len(level) >= 4 and int.from_bytes(level[:4], "big") >= 2:
        return True
    return _read_int(paths.ipl_secure) == 1


# ---------------------------------------------------------------------------
# memory and modules


_IOMEM_LINE = re.compile(r"^(\s*)([0-9a-fA-F]+)-([0-9a-fA-F]+)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class IomemRange:
    """One line of /proc/iomem: inclusive byte range, nesting depth, name."""

    start: int
    end: int
    depth: int
    name: str

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def parse_iomem(text: str) -> list[IomemRange]:
    """Parse /proc/iomem; nesting depth is the indentation in steps of two spaces."""
    ranges = []
    for line in text.splitlines():
        match = _IOMEM_LINE.match(line)
        if match:
            indent, start, end, name = match.groups()
            ranges.append(IomemRange(int(start, 16), int(end, 16), len(indent) // 2, name))
    return ranges


def system_ram_bytes(iomem_text: str) -> int:
    """Sum of the top-level ``System RAM`` ranges of a /proc/iomem text.

    Nested (indented) lines are parts of a top-level resource and are not counted.
    """
    ranges = parse_iomem(iomem_text)
    return sum(r.size for r in ranges if r.depth == 0 and r.name == "System RAM")


def meminfo_total_kib(paths: Paths) -> int | None:
    """``MemTotal`` of /proc/meminfo in KiB; None when unreadable."""
    for line in (_read_text(paths.proc_meminfo) or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MemTotal":
            fields = value.split()
            if fields and fields[0].isdigit():
                return int(fields[0])
    return None


def iomem_kernel_bytes(paths: Paths) -> int:
    """Size of the running kernel from /proc/iomem ``Kernel code|rodata|data|bss`` (§4.3)."""
    text = _read_text(paths.proc_iomem) or ""
    wanted = {"Kernel code", "Kernel rodata", "Kernel data", "Kernel bss"}
    return sum(r.size for r in parse_iomem(text) if r.name in wanted)


def parse_proc_modules(text: str) -> dict[str, int]:
    """Module name -> size in bytes from /proc/modules lines ``name size refs deps state addr``."""
    modules: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].isdigit():
            modules[fields[0]] = int(fields[1])
    return modules


def loaded_modules(paths: Paths) -> dict[str, int]:
    """Loaded modules with their sizes; empty when /proc/modules is unreadable."""
    return parse_proc_modules(_read_text(paths.proc_modules) or "")


# ---------------------------------------------------------------------------
# kernel log


def read_kernel_log(paths: Paths) -> str:
    """The kernel log of this boot, or "" when no reader works.

    ``journalctl -k`` first (it keeps messages that fell out of the ring buffer),
    then ``dmesg``. For a tree other than ``/`` only the journal stored in that
    tree is read (``--root``); ``dmesg`` would describe this machine instead.
    """
    live = paths.root == Path("/")
    attempts: list[list[str]] = []
    if live:
        attempts.append(["journalctl", "-k", "-b", "--no-pager", "-q"])
        attempts.append(["dmesg"])
    else:
        attempts.append(["journalctl", "--root", str(paths.root), "-k", "--no-pager", "-q"])
    for argv in attempts:
        try:
            result = proc.run(argv, timeout=30)
        except proc.ProgramError:
            continue
        if result.stdout.strip():
            return result.stdout
    return ""


# ---------------------------------------------------------------------------
# kernel image lookup (§2)

DEFAULT_BOOT_DIRS = ("/boot", "/boot/efi", "/efi", "/")
_GRUB_DEVICE = re.compile(r"^\([^)]*\)")


def boot_image_from_cmdline(cmdline: str) -> str | None:
    """``BOOT_IMAGE=`` of the kernel command line, without a grub ``(hdX,Y)`` device prefix."""
    for token in cmdline.split():
        if token.startswith("BOOT_IMAGE="):
            value = _GRUB_DEVICE.sub("", token.removeprefix("BOOT_IMAGE="))
            return value or None
    return None


def kernel_candidates(
    paths: Paths,
    kver: str,
    *,
    bootdir: str = "",
    img: str = "vmlinuz",
    img_ext: str = "",
) -> list[str]:
    """Absolute paths of the managed system to try, in kdump-utils order (§2)."""
    cmdline = _read_text(paths.proc_cmdline) or ""
    machine_id = (_read_text(paths.machine_id) or "").strip()
    names: list[str] = []
    boot_image = boot_image_from_cmdline(cmdline)
    if boot_image and boot_image.endswith(kver):
        names.append(boot_image)
    names.append(f"{img or 'vmlinuz'}-{kver}{img_ext}")
    if machine_id:
        names.append(f"{machine_id}/{kver}/{img or 'vmlinuz'}")
        names.append(f"EFI/Linux/{machine_id}-{kver}.efi")
    dirs = bootdir.split() if bootdir.strip() else list(DEFAULT_BOOT_DIRS)
    candidates: list[str] = []
    for directory in dirs:
        for name in names:
            joined = re.sub("/+", "/", f"/{directory}/{name}")
            if joined not in candidates:
                candidates.append(joined)
    return candidates


def find_kernel(paths: Paths, sysconfig: SysConfig, kver: str) -> Path:
    """The capture kernel's image under ``paths`` (§2 lookup order).

    KDUMP_BOOTDIR restricts the directories searched; KDUMP_IMG and KDUMP_IMG_EXT
    shape the file name. Raises :class:`KernelNotFound` naming every location tried.
    """
    tried = kernel_candidates(
        paths, kver, bootdir=sysconfig.bootdir, img=sysconfig.img, img_ext=sysconfig.img_ext
    )
    for candidate in tried:
        located = paths.under_root(candidate)
        if located.is_file():
            return located
    where = "KDUMP_BOOTDIR, KDUMP_IMG and KDUMP_IMG_EXT in the kdump variables file"
    raise KernelNotFound(
        f"Failed to detect kdump kernel location for {kver}: tried {', '.join(tried)}. "
        f"Install the kernel image or set {where}."
    )

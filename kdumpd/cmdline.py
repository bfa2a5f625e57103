"""The capture kernel's command line (kdump-utils ``prepare_cmdline``) and the host facts it needs.

:func:`build_capture_cmdline` is pure: it takes the base command line, the remove and
append settings and the host facts, and returns the line ``kexec -p --command-line=``
receives. The readers below (:func:`cpu0_apicid`, :func:`active_watchdog_drivers`,
:func:`is_aws_graviton`) collect those facts from files under :class:`~kdumpd.paths.Paths`
without starting programs.

Quoting follows the kernel, not the shell: only double quotes group words
(``param="a b"`` is one parameter, quotes kept), because that is how the kernel split
``/proc/cmdline`` in the first place.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from kdumpd.paths import Paths

# Removed from every capture command line (kdump-utils prepare_cmdline): a second
# reservation or panic-on-warn makes no sense there, and dracut --hostonly-cmdline plus
# --mount generate exactly the root/LVM/LUKS/RAID/iSCSI parameters the dump needs.
ALWAYS_REMOVED: tuple[str, ...] = (
    "crashkernel",
    "panic_on_warn",
    "root",
    "rd.lvm.lv",
    "rd.luks.uuid",
    "rd.dm.uuid",
    "rd.md.uuid",
    "fcoe",
    "netroot",
    "rd.iscsi.initiator",
    "iscsi_initiator",
)

# Added last, always: systemd's gpt-auto-generator hangs the capture kernel's boot, and
# the dump target is mounted explicitly anyway.
_NO_GPT_AUTO = "rd.systemd.gpt_auto=no"


def _tokens(text: str, quotes: str = '"') -> list[str]:
    """Split on whitespace outside quotes; quotes stay in the tokens."""
    tokens: list[str] = []
    current: list[str] = []
    open_quote = ""
    for char in text:
        if open_quote:
            current.append(char)
            if char == open_quote:
                open_quote = ""
        elif char in quotes:
            open_quote = char
            current.append(char)
        elif char.isspace():
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        tokens.append("".join(current))
    return tokens


def param_name(token: str) -> str:
    """The parameter name of one token: ``b`` for ``b``, ``b=x`` and ``b="x y"``."""
    return token.partition("=")[0].replace('"', "").replace("'", "")


def _has_empty_value(token: str) -> bool:
    name, equals, value = token.partition("=")
    return bool(equals) and not value.replace('"', "")


def split_cmdline(text: str) -> list[str]:
    """Split a kernel command line into parameters, dropping ``foo=`` (and ``foo=""``).

    Double quotes group words and are kept: ``a b="x y" c=`` -> ``["a", 'b="x y"']``.
    """
    return [token for token in _tokens(text) if not _has_empty_value(token)]


def build_capture_cmdline(
    base: str,
    *,
    remove: str,
    append: str,
    apicid: int | None = None,
    watchdog_drivers: Sequence[str] = (),
    graviton: bool = False,
) -> str:
    """The capture kernel command line, built like kdump-utils' ``prepare_cmdline``.

    1. parameters of ``base`` (``KDUMP_COMMANDLINE`` or ``/proc/cmdline``), ``foo=`` dropped;
    2. every parameter named in ``remove`` (``KDUMP_COMMANDLINE_REMOVE``; values given there
       are ignored, ``b=x`` removes every ``b``/``b=...``) or in :data:`ALWAYS_REMOVED` dropped;
    3. ``append`` (``KDUMP_COMMANDLINE_APPEND``) added as written;
    4. ``disable_cpu_apicid=<apicid>`` when the boot CPU has an APIC id (x86);
    5. ``<driver>.pretimeout=0`` per watchdog driver, plus ``hpwdt.kdumptimeout=0`` for hpwdt;
    6. on AWS Graviton every ``irqpoll`` dropped (it can hot-remove PCI devices there);
    7. ``rd.systemd.gpt_auto=no``; whitespace collapsed to single spaces outside quotes.
    """
    # The remove setting is shell text, so single quotes group words there too.
    unwanted = {param_name(token) for token in _tokens(remove, quotes="\"'")}
    unwanted.update(ALWAYS_REMOVED)
    params = [token for token in split_cmdline(base) if param_name(token) not in unwanted]
    params += _tokens(append)
    if apicid is not None:
        params.append(f"disable_cpu_apicid={apicid}")
    for driver in dict.fromkeys(watchdog_drivers):
        # A pretimeout panics the kernel before the reset; in the capture kernel that
        # only adds a way for the watchdog to fail.
        params.append(f"{driver}.pretimeout=0")
        if driver == "hpwdt":
            # Non-zero only makes sense in the first kernel; here it could stop the
            # watchdog from resetting a hung capture.
            params.append("hpwdt.kdumptimeout=0")
    if graviton:
        params = [token for token in params if param_name(token) != "irqpoll"]
    params.append(_NO_GPT_AUTO)
    return " ".join(params)


# host readings -----------------------------------------------------------------


def cpu0_apicid(paths: Paths) -> int | None:
    """The ``apicid`` of processor 0 in ``/proc/cpuinfo``; None off x86 or when absent."""
    try:
        text = paths.proc_cpuinfo.read_text()
    except FileNotFoundError:
        return None
    processor = ""
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key = key.strip()
        if key == "processor":
            processor = value.strip()
        elif key == "apicid" and processor == "0":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def active_watchdog_drivers(paths: Paths, *, kernel_release: str = "") -> list[str]:
    """Module names of the drivers behind ``/sys/class/watchdog/*`` (each once, in order).

    Like kdump-utils, every watchdog device with a ``device/modalias`` counts, armed or
    not. kdump-utils asks ``modprobe -R <modalias>``; without starting a program the
    module is found, per device, from the first of:

    1. ``device/driver/module`` -> the module bound to the device (the exact prefix of
       its parameters, e.g. ``i6300esb`` whose PCI driver calls itself "i6300ESB timer");
    2. a ``platform:NAME`` modalias -> ``NAME`` (platform modaliases carry the driver name);
    3. ``/lib/modules/<kernel_release>/modules.alias`` patterns matching the modalias
       (what ``modprobe -R`` does), when ``kernel_release`` is given;
    4. ``device/driver`` -> the driver name, if it is usable as a parameter prefix.

    Devices resolved by none of these are skipped.
    """
    if not paths.watchdog_class.is_dir():
        return []
    aliases = _module_aliases(paths, kernel_release) if kernel_release else []
    found: dict[str, None] = {}
    for device_dir in sorted(paths.watchdog_class.iterdir()):
        device = device_dir / "device"
        try:
            modalias = (device / "modalias").read_text().strip()
        except OSError:
            continue
        for module in _watchdog_modules(device, modalias, aliases):
            found.setdefault(module, None)
    return list(found)


def _watchdog_modules(device: Path, modalias: str, aliases: Sequence[tuple[str, str]]) -> list[str]:
    bound_module = _link_name(device / "driver" / "module")
    if bound_module:
        return [bound_module]
    bus, colon, name = modalias.partition(":")
    if colon and bus == "platform" and _is_param_prefix(name):
        return [name]
    matching = [module for pattern, module in aliases if fnmatch.fnmatchcase(modalias, pattern)]
    if matching:
        return list(dict.fromkeys(matching))
    driver = _link_name(device / "driver")
    if driver and _is_param_prefix(driver):
        return [driver]
    return []


def _link_name(path: Path) -> str:
    """The last component of a symlink's target, or "" when it is not a symlink."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return ""


def _is_param_prefix(name: str) -> bool:
    return bool(name) and not any(char.isspace() or char in "=\"'." for char in name)


def _module_aliases(paths: Paths, kernel_release: str) -> list[tuple[str, str]]:
    """``(pattern, module)`` pairs of a kernel's modules.alias; empty when absent."""
    try:
        text = (paths.modules / kernel_release / "modules.alias").read_text()
    except OSError:
        return []
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "alias":
            pairs.append((fields[1], fields[2]))
    return pairs


# SMBIOS type 4 (processor) structure: the "Processor Version" string number sits at
# offset 0x10; lscpu shows that string as "BIOS Model name".
_SMBIOS_PROCESSOR_VERSION = 0x10


def is_aws_graviton(paths: Paths) -> bool:
    """True when SMBIOS names an AWS Graviton processor (lscpu's "BIOS Model name").

    Reads the raw type-4 entries under ``/sys/firmware/dmi/entries`` (root only).
    """
    return any("AWS Graviton" in version for version in _processor_versions(paths))


def _processor_versions(paths: Paths) -> Iterable[str]:
    entries = paths.dmi_entries
    if not entries.is_dir():
        return
    for entry in sorted(entries.glob("4-*")):
        try:
            raw = (entry / "raw").read_bytes()
        except OSError:
            continue
        if len(raw) <= _SMBIOS_PROCESSOR_VERSION:
            continue
        length = raw[1]
        number = raw[_SMBIOS_PROCESSOR_VERSION]
        strings = raw[length:].split(b"\0")
        if 1 <= number <= len(strings):
            yield strings[number - 1].decode("ascii", "replace").strip()

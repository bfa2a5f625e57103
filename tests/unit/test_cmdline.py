"""The capture kernel command line (spec §2.2, prepare_cmdline cases of §7.1) and its readers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdumpd import cmdline
from kdumpd.cmdline import build_capture_cmdline, split_cmdline
from kdumpd.paths import Paths
from tests.conftest import write

# The suffix kdump-utils' spec expects with apicid 1 and one watchdog driver "foo".
SUFFIX = "disable_cpu_apicid=1 foo.pretimeout=0 rd.systemd.gpt_auto=no"


@pytest.mark.parametrize(
    ("base", "remove", "append", "expected"),
    [
        pytest.param("a b c", "", "", "a b c", id="01-nothing-to-do"),
        pytest.param("a b c", "b", "", "a c", id="02-remove-name"),
        pytest.param("a b=x c", "b", "", "a c", id="03-remove-name-with-value"),
        pytest.param('a b="x y" c', "b", "", "a c", id="04-remove-quoted-value"),
        pytest.param('a b="x y" c', "b=x", "", "a c", id="05-value-in-remove-ignored"),
        pytest.param('a b="x y" c', "b='x y'", "", "a c", id="06-shell-quoted-remove"),
        pytest.param("a b=1 c b=2 b", "b", "", "a c", id="07-every-occurrence-removed"),
        pytest.param("a b c", "x y", "", "a b c", id="08-absent-names"),
        pytest.param('a b= c="" d', "", "", "a d", id="09-empty-values-dropped"),
        pytest.param("a b c", "a", 'x="1 2"', 'b c x="1 2"', id="10-remove-and-append-quoted"),
        pytest.param("a b c", "x", 'x="1 2"', 'a b c x="1 2"', id="11-append-after-remove"),
    ],
)
def test_prepare_cmdline_cases(base: str, remove: str, append: str, expected: str) -> None:
    result = build_capture_cmdline(
        base, remove=remove, append=append, apicid=1, watchdog_drivers=["foo"]
    )
    assert result == f"{expected} {SUFFIX}"


def test_always_removed_names() -> None:
    assert cmdline.ALWAYS_REMOVED == (
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


def test_always_removed_parameters_leave_the_rest() -> None:
    base = (
        "BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=UUID=0a1b ro crashkernel=2G-64G:256M,64G-:512M"
        " rd.lvm.lv=vg0/root rd.luks.uuid=luks-1234 rd.dm.uuid=ddf1 rd.md.uuid=abcd"
        " panic_on_warn=1 fcoe=eth0:nodcb netroot=iscsi:10.0.0.1::::iqn.x"
        " rd.iscsi.initiator=iqn.y iscsi_initiator=iqn.z quiet"
    )
    result = build_capture_cmdline(base, remove="quiet", append="irqpoll nr_cpus=1")
    expected = "BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 ro irqpoll nr_cpus=1 rd.systemd.gpt_auto=no"
    assert result == expected


def test_only_the_fixed_suffix_without_host_facts() -> None:
    assert build_capture_cmdline("a", remove="", append="") == "a rd.systemd.gpt_auto=no"


def test_apicid_zero_is_still_disabled() -> None:
    result = build_capture_cmdline("a", remove="", append="", apicid=0)
    assert result == "a disable_cpu_apicid=0 rd.systemd.gpt_auto=no"


def test_watchdog_suffix_with_hpwdt_and_duplicates() -> None:
    result = build_capture_cmdline(
        "a", remove="", append="", watchdog_drivers=["hpwdt", "iTCO_wdt", "hpwdt"]
    )
    assert result == (
        "a hpwdt.pretimeout=0 hpwdt.kdumptimeout=0 iTCO_wdt.pretimeout=0 rd.systemd.gpt_auto=no"
    )


def test_graviton_drops_every_irqpoll_but_not_lookalikes() -> None:
    base = "a irqpoll foo.irqpoll=1 irqpollx"
    append = "irqpoll nr_cpus=1"
    on = build_capture_cmdline(base, remove="", append=append, graviton=True)
    assert on == "a foo.irqpoll=1 irqpollx nr_cpus=1 rd.systemd.gpt_auto=no"
    off = build_capture_cmdline(base, remove="", append=append)
    assert off == "a irqpoll foo.irqpoll=1 irqpollx irqpoll nr_cpus=1 rd.systemd.gpt_auto=no"


def test_whitespace_collapsed_outside_quotes_only() -> None:
    result = build_capture_cmdline(
        '  a \t b="x   y"\n c  ', remove="  ", append='   x="1    2"   z  '
    )
    assert result == 'a b="x   y" c x="1    2" z rd.systemd.gpt_auto=no'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("a b c", ["a", "b", "c"]),
        ('a b="x y" c', ["a", 'b="x y"', "c"]),
        ('"a b"=c d', ['"a b"=c', "d"]),
        ("a= b c=", ["b"]),
        ('a="" b', ["b"]),
        ("a=b=c", ["a=b=c"]),
        # The kernel knows double quotes only; single quotes are ordinary characters.
        ("a='x y'", ["a='x", "y'"]),
        ('a="unterminated b', ['a="unterminated b']),
    ],
)
def test_split_cmdline(text: str, expected: list[str]) -> None:
    assert split_cmdline(text) == expected


@pytest.mark.parametrize(
    ("token", "name"),
    [("a", "a"), ("a=1", "a"), ('a="x y"', "a"), ('"a=x y"', "a"), ("a.b=c=d", "a.b")],
)
def test_param_name(token: str, name: str) -> None:
    assert cmdline.param_name(token) == name


# readers -------------------------------------------------------------------------

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
physical id\t: 0
apicid\t\t: 6
initial apicid\t: 6
flags\t\t: fpu vme

processor\t: 1
vendor_id\t: GenuineIntel
apicid\t\t: 0
initial apicid\t: 0
"""

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd

processor\t: 1
BogoMIPS\t: 50.00
"""


def test_cpu0_apicid(fake_root: Paths) -> None:
    write(fake_root.proc_cpuinfo, X86_CPUINFO)
    assert cmdline.cpu0_apicid(fake_root) == 6


def test_cpu0_apicid_absent(fake_root: Paths) -> None:
    assert cmdline.cpu0_apicid(fake_root) is None
    write(fake_root.proc_cpuinfo, ARM_CPUINFO)
    assert cmdline.cpu0_apicid(fake_root) is None


def _watchdog(paths: Paths, name: str, modalias: str | None) -> Path:
    device = paths.watchdog_class / name / "device"
    device.mkdir(parents=True)
    if modalias is not None:
        write(device / "modalias", modalias + "\n")
    return device


def test_active_watchdog_drivers(fake_root: Paths) -> None:
    # Platform device: the modalias names the driver.
    _watchdog(fake_root, "watchdog0", "platform:iTCO_wdt")
    # PCI device bound to a driver whose name is not its module name.
    device = _watchdog(fake_root, "watchdog1", "pci:v00008086d000025ABsv00001AF4sd00001100bc08")
    (device / "driver").mkdir()
    os.symlink("../../../../module/i6300esb", device / "driver" / "module")
    # No modalias (softdog): kdump-utils skips it too.
    _watchdog(fake_root, "watchdog2", None)
    # ACPI device only resolvable through the capture kernel's modules.alias.
    _watchdog(fake_root, "watchdog3", "acpi:PNP0C0B:")
    write(
        fake_root.modules / "6.1.0-18-amd64" / "modules.alias",
        "# Aliases extracted from modules themselves.\n"
        "alias pci:v0000103Cd00003306sv*sd*bc*sc*i* hpwdt\n"
        "alias acpi*:PNP0C0B:* acpi_wdog\n",
    )
    # Bound driver without a module link (built in): its name is the prefix.
    device = _watchdog(fake_root, "watchdog4", "acpi:INT3F0D:")
    os.symlink("../../../bus/platform/drivers/wdat_wdt", device / "driver")
    # A second iTCO device: reported once.
    _watchdog(fake_root, "watchdog5", "platform:iTCO_wdt")

    found = cmdline.active_watchdog_drivers(fake_root, kernel_release="6.1.0-18-amd64")
    assert found == ["iTCO_wdt", "i6300esb", "acpi_wdog", "wdat_wdt"]
    # Without the capture kernel's alias table the ACPI-only device is not resolved.
    assert cmdline.active_watchdog_drivers(fake_root) == ["iTCO_wdt", "i6300esb", "wdat_wdt"]


def test_watchdog_driver_names_unusable_as_prefix_are_skipped(fake_root: Paths) -> None:
    device = _watchdog(fake_root, "watchdog0", "pci:v00008086d000025ABsv*")
    os.symlink("../../../bus/pci/drivers/i6300ESB timer", device / "driver")
    assert cmdline.active_watchdog_drivers(fake_root) == []


def test_no_watchdog_class(fake_root: Paths) -> None:
    assert cmdline.active_watchdog_drivers(fake_root) == []


def _smbios_processor(version: str) -> bytes:
    length = 0x30
    formatted = bytearray(length)
    formatted[0] = 4  # SMBIOS structure 4: processor
    formatted[1] = length
    formatted[0x04] = 1  # socket designation: string 1
    formatted[0x07] = 2  # manufacturer: string 2
    formatted[0x10] = 3  # version: string 3
    strings = b"CPU 0\0Amazon\0" + version.encode() + b"\0\0"
    return bytes(formatted) + strings


def test_is_aws_graviton(fake_root: Paths) -> None:
    assert not cmdline.is_aws_graviton(fake_root)
    entry = fake_root.dmi_entries / "4-0"
    entry.mkdir(parents=True)
    (entry / "raw").write_bytes(_smbios_processor("Intel(R) Xeon(R) Platinum 8375C"))
    assert not cmdline.is_aws_graviton(fake_root)
    (entry / "raw").write_bytes(_smbios_processor("AWS Graviton3"))
    assert cmdline.is_aws_graviton(fake_root)


def test_is_aws_graviton_ignores_truncated_entries(fake_root: Paths) -> None:
    entry = fake_root.dmi_entries / "4-0"
    entry.mkdir(parents=True)
    (entry / "raw").write_bytes(b"\x04\x30")
    assert not cmdline.is_aws_graviton(fake_root)

"""Which init runs the capture image: kdumpd's own small one, or dracut's systemd initrd.

Memory is a feature: everything the image holds lives in the crash reservation.
Measured with tests/vm/bench_capture.py at crashkernel=128M (Debian 12, TCG):
systemd, udevd and their libraries were 17 of the image's 30 MiB unpacked, and
udev's coldplug left about 9 MiB of sysfs inodes and dentries in the slab. So
when nothing needs them, the image has no systemd and no udev: its ``/init`` is
``kdumpd-init.sh`` (rendered from dracut-module/templates), which mounts the
kernel filesystems, loads the kernel modules the image holds (strict host-only:
the target's drivers and filesystem, nothing else), waits for the plan's
devices and names them as udev would, brings up the NIC toward an ssh server
with klibc's ``ipconfig`` (DHCP or a static address, IPv4), and runs the agent,
which ends the boot through the kernel
(:class:`kdumpd.capture.actions.KernelExecutor`). For ssh that is the difference
between 160M and 128M: no systemd-networkd, no udev, and only the NIC's driver
chain instead of dracut's generic driver set.

What still needs dracut's systemd initrd, each for a reason :func:`choose_init`
names: an IPv6 network (ipconfig speaks IPv4 only), device stacks assembled by udev rules or
dracut modules (LVM, RAID, dm-crypt, multipath, multi-device btrfs), device
names only udev's helpers compute (``/dev/disk/by-id``, ``by-path``),
``dracut_args`` (they may add dracut modules written for dracut's init), and an
interactive ``shell`` action (a console with its keyboard drivers and job control).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.contract.plan import CapturePlan, FsTarget, NetworkSpec, RawTarget, SshTarget
from kdumpd.targets.ssh import NETWORK_DRACUT_MODULE

KDUMPD_INIT = "kdumpd"
SYSTEMD_INIT = "systemd"

#: /dev/disk/by-* directories the small init fills from blkid, with blkid's tag for each.
BLKID_TAGS: dict[str, str] = {
    "by-uuid": "UUID",
    "by-label": "LABEL",
    "by-partuuid": "PARTUUID",
    "by-partlabel": "PARTLABEL",
}
#: Filesystems that may span devices udev rules assemble (``btrfs device scan``).
UDEV_ASSEMBLED_FS = frozenset({"btrfs"})

_HEX_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
#: klibc's DHCP and static IPv4 client (package klibc-utils), as initramfs-tools uses it.
#: Its one library is klibc's own small libc, loaded as its ELF interpreter
#: (/lib/klibc-*.so): about 95 KiB together.
IPCONFIG = "/usr/lib/klibc/bin/ipconfig"


@dataclass(frozen=True)
class DeviceWait:
    """A device the small init waits for: the plan's path, and how blkid finds it.

    ``tag`` is empty for a kernel name (``/dev/vdb``), which devtmpfs creates itself.
    """

    path: str
    tag: str = ""
    value: str = ""


@dataclass(frozen=True)
class IpConfig:
    """The NIC the small init brings up with ipconfig: found by MAC, by DHCP or static.

    ``address`` is empty for DHCP; else the static address with its netmask and
    gateway (empty: the server is on the link), as ipconfig's long form wants them.
    """

    mac: str
    wait_seconds: int
    address: str = ""
    netmask: str = ""
    gateway: str = ""


@dataclass(frozen=True)
class InitChoice:
    init: str
    #: Why the image needs systemd (empty for the small init).
    reasons: tuple[str, ...] = ()
    #: The plan's devices, for the small init to wait for and name.
    devices: tuple[DeviceWait, ...] = ()
    #: The network the small init brings up (None: none, or already up).
    network: IpConfig | None = None


def _device_wait(path: str) -> DeviceWait | str:
    """How the small init finds ``path``, or why it cannot."""
    if path.startswith("/dev/disk/"):
        directory, _, name = path.removeprefix("/dev/disk/").partition("/")
        tag = BLKID_TAGS.get(directory)
        if tag is None or not name or "/" in name:
            return f"the device {path} is named by udev's helpers ({directory})"
        # udev hex-escapes blanks and slashes in labels; blkid wants the real text.
        value = _HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)
        return DeviceWait(path, tag, value)
    if path.startswith("/dev/mapper/") or path.startswith("/dev/md"):
        return f"the device {path} is assembled in the capture kernel (device mapper or RAID)"
    if path.startswith("/dev/") and "/" not in path.removeprefix("/dev/"):
        return DeviceWait(path)
    return f"the device {path} is not a kernel name or a /dev/disk/by-uuid-style name"


def _ip_config(net: NetworkSpec) -> IpConfig | str:
    """How the small init brings ``net`` up with ipconfig, or why it cannot."""
    if net.dhcp == "ipv6" or ":" in net.server or any(":" in a for a in net.addresses):
        return "the ssh server is reached over IPv6, which only systemd-networkd configures"
    if not net.mac:
        return f"the NIC {net.interface} has no MAC address to find it by"
    if net.dhcp == "ipv4":
        return IpConfig(mac=net.mac, wait_seconds=net.wait_seconds)
    if net.dhcp != "no" or len(net.addresses) != 1:
        return f"the network of {net.interface} (DHCP={net.dhcp}) is not one IPv4 address"
    try:
        own = ipaddress.IPv4Interface(net.addresses[0])
        gateway = str(ipaddress.IPv4Address(net.gateway)) if net.gateway else ""
    except ValueError:
        return f"the static network of {net.interface} is not IPv4"
    return IpConfig(
        mac=net.mac,
        wait_seconds=net.wait_seconds,
        address=str(own.ip),
        netmask=str(own.netmask),
        gateway=gateway,
    )


def _plan_devices(plan: CapturePlan) -> tuple[list[str], list[str], IpConfig | None]:
    """The plan's device paths, reasons its target kind alone needs systemd, its network."""
    devices: list[str] = []
    reasons: list[str] = []
    network: IpConfig | None = None
    target = plan.target
    match target:
        case FsTarget():
            if target.mount is not None:
                devices.append(target.mount.device)
                if target.mount.fstype in UDEV_ASSEMBLED_FS:
                    reasons.append(f"{target.mount.fstype} may span devices udev assembles")
        case RawTarget():
            devices.append(target.device)
        case SshTarget():
            # None: the network is up already (tests); the image brings nothing up.
            if target.network is not None:
                found = _ip_config(target.network)
                if isinstance(found, str):
                    reasons.append(found)
                else:
                    network = found
    if plan.rootfs is not None:
        devices.append(plan.rootfs.device)
        if plan.rootfs.fstype in UDEV_ASSEMBLED_FS:
            reasons.append(f"{plan.rootfs.fstype} may span devices udev assembles")
    return devices, reasons, network


def image_dracut_modules(choice: InitChoice, modules: Sequence[str]) -> tuple[str, ...]:
    """The extra dracut modules the chosen image gets: without systemd-networkd for the
    small init, which brings the network up itself."""
    if choice.init == KDUMPD_INIT:
        return tuple(m for m in modules if m != NETWORK_DRACUT_MODULE)
    return tuple(modules)


def choose_init(
    plan: CapturePlan, config: KdumpConfig, *, dracut_modules: tuple[str, ...] = ()
) -> InitChoice:
    """The small init when nothing in ``plan`` and ``config`` needs systemd; else why not.

    ``dracut_modules`` are the device-stack modules the planner found (lvm, dm, ...),
    and the ssh kind's systemd-networkd, which the small init replaces with ipconfig.
    """
    devices, reasons, network = _plan_devices(plan)
    stack = [m for m in dracut_modules if m != NETWORK_DRACUT_MODULE]
    if stack:
        reasons.append(f"the device stack needs dracut modules: {' '.join(stack)}")
    if config.dracut_args:
        reasons.append("dracut_args may add dracut modules written for dracut's own init")
    if "shell" in (plan.failure_action, plan.final_action):
        reasons.append("the shell action needs a console with its keyboard drivers")
    waits: list[DeviceWait] = []
    for path in devices:
        found = _device_wait(path)
        if isinstance(found, str):
            reasons.append(found)
        elif found not in waits:
            waits.append(found)
    if reasons:
        return InitChoice(SYSTEMD_INIT, tuple(reasons))
    return InitChoice(KDUMPD_INIT, devices=tuple(waits), network=network)


#: The image of a caller that did not choose (tests that stage a module by hand).
SYSTEMD_CHOICE = InitChoice(SYSTEMD_INIT)

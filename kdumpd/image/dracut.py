"""The dracut command line that builds a capture image."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.contract.plan import CapturePlan
from kdumpd.errors import ConfigError, Problem
from kdumpd.image.init import KDUMPD_INIT, SYSTEMD_INIT
from kdumpd.paths import KDUMP_CONF
from kdumpd.targets.base import ImageNeeds

#: dracut modules of every capture image; device stacks (lvm, dm, ...) are added per target.
BASE_DRACUT_MODULES: tuple[str, ...] = (
    "bash",
    "systemd",
    "systemd-initrd",
    "kernel-modules",
    "udev-rules",
    "base",
    "kdumpd",
)
#: dracut modules of an image whose /init is kdumpd-init.sh (:mod:`kdumpd.image.init`):
#: no systemd, no udev; 90kernel-modules for the drivers, our module for the rest.
SMALL_DRACUT_MODULES: tuple[str, ...] = ("bash", "kernel-modules", "kdumpd")
#: ~38 MB of GPU firmware nobody needs to write a dump (kdump-utils omits them too).
OMIT_DRIVERS: tuple[str, ...] = ("nouveau", "amdgpu")
#: Debian's dracut-network ships /etc/dracut.conf.d/11-ifcfg.conf (add_dracutmodules+=ifcfg),
#: which drags network, dbus and NetworkManager/networkd into every image, local
#: targets too (about 1 MB more compressed, and networkd started in every capture).
OMIT_DRACUT_MODULES: tuple[str, ...] = ("ifcfg",)
#: dracut flags that choose the compression; when the user gives one we add none.
COMPRESSION_FLAGS = frozenset(
    {
        "--gzip",
        "--bzip2",
        "--lzma",
        "--xz",
        "--lzo",
        "--lz4",
        "--zstd",
        "--no-compress",
        "--compress",
        "--squash-compressor",
    }
)
DRACUT_TIMEOUT = 600.0


def _has_compression_flag(args: Sequence[str]) -> bool:
    return any(a.split("=", 1)[0] in COMPRESSION_FLAGS for a in args)


def split_dracut_args(config: KdumpConfig) -> list[str]:
    """dracut_args split as a shell would (quotes honoured); errors name the line."""
    if not config.dracut_args:
        return []
    try:
        return shlex.split(config.dracut_args)
    except ValueError as exc:
        raise ConfigError(
            [
                Problem(
                    KDUMP_CONF,
                    config.lines.get("dracut_args", 0),
                    f"dracut_args cannot be split: {exc}; balance the quotes",
                )
            ]
        ) from exc


def dracut_argv(
    plan: CapturePlan,
    config: KdumpConfig,
    *,
    needs: ImageNeeds,
    image: Path,
    kernel_release: str,
    build_dir: Path,
    extra_dracut_modules: Sequence[str] = (),
    zstd: bool = True,
    init: str = SYSTEMD_INIT,
) -> list[str]:
    """The dracut command that builds the capture image for ``plan`` into ``image``.

    ``needs`` says what the target kind needs (:func:`kdumpd.image.needs.image_needs`).
    Strict host-only with no default device: only the target's devices
    (``--add-device``) bring drivers in; no root= or mount on the image's
    command line (the agent mounts); an explicit module list (without systemd
    and udev when ``init`` is kdumpd's own); zstd unless dracut_args choose a
    compression; dracut_args last, verbatim.
    """
    user = split_dracut_args(config)
    modules = list(SMALL_DRACUT_MODULES if init == KDUMPD_INIT else BASE_DRACUT_MODULES)
    for module in extra_dracut_modules:
        if module not in modules:
            modules.insert(-1, module)
    drivers = list(needs.drivers)
    for name in config.extra_modules:
        if name not in drivers:
            drivers.append(name)
    argv = [
        "dracut",
        "--force",
        "--hostonly",
        "--hostonly-mode",
        "strict",
        "--no-hostonly-cmdline",
        "--no-hostonly-default-device",
        "--modules",
        " ".join(modules),
        "--omit-drivers",
        " ".join(OMIT_DRIVERS),
        "--omit",
        " ".join(OMIT_DRACUT_MODULES),
        "--nofscks",
        "--no-early-microcode",
        "--tmpdir",
        str(build_dir),
    ]
    if drivers:
        argv += ["--add-drivers", " ".join(drivers)]
        generic = needs.generic_drivers and init != KDUMPD_INIT
        if not generic and plan.failure_action != "shell":
            # A non-empty --drivers turns off 90kernel-modules' generic set, which even in
            # strict host-only mode brings every crypto module, hid, usb, ata and serial
            # driver (~6 MB unpacked, measured by tests/vm/bench_capture.py). The block
            # drivers of the --add-device devices then come from 99kdumpd's installkernel.
            # failure_action shell keeps the set: a console needs its keyboard. So do
            # kinds that ask for it on dracut's systemd initrd (network targets: a NIC's
            # bus driver, virtio_pci, is not a dependency of its driver); for the small
            # init, which loads every module of the image, 99kdumpd's installkernel walks
            # the NIC's devices up and installs each one's driver instead.
            argv += ["--drivers", " ".join(drivers)]
    for device in needs.devices:
        argv += ["--add-device", device]
    for nic in needs.nics:
        # Only the NIC that reaches the dump server gets its driver in (strict host-only).
        argv += ["--hostonly-nics", nic]
    if zstd and not _has_compression_flag(user):
        argv.append("--zstd")
    argv += user
    argv += [str(image), kernel_release]
    return argv

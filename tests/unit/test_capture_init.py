"""kdumpd's small capture init: when it is chosen, what it runs, how the agent ends the boot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kdumpd.capture.actions import ActionError, KernelExecutor
from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.contract.plan import (
    CapturePlan,
    FsTarget,
    MountSpec,
    RawTarget,
    SshSpec,
    SshTarget,
)
from kdumpd.image import render
from kdumpd.image.dracut import dracut_argv
from kdumpd.image.init import KDUMPD_INIT, SYSTEMD_INIT, DeviceWait, choose_init
from kdumpd.image.render import ModuleContext
from kdumpd.targets.base import ImageNeeds
from tests.conftest import ProgramStub

KVER = "6.1.0-28-amd64"
TEMPLATES = Path(__file__).resolve().parents[2] / "dracut-module" / "templates"


def fs_plan(
    device: str = "/dev/disk/by-uuid/abc", fstype: str = "ext4", **changes: object
) -> CapturePlan:
    base: dict[str, object] = {
        "kernel_release": KVER,
        "target": FsTarget(path="/var/crash", mount=MountSpec(device, "/sysroot", fstype)),
        "core_collector": ("makedumpfile", "-l", "-d", "31"),
    }
    base.update(changes)
    return CapturePlan(**base)  # type: ignore[arg-type]


def test_a_disk_named_by_uuid_gets_the_small_init() -> None:
    choice = choose_init(fs_plan(), KdumpConfig())
    assert choice.init == KDUMPD_INIT and choice.reasons == ()
    assert choice.devices == (DeviceWait("/dev/disk/by-uuid/abc", "UUID", "abc"),)


@pytest.mark.parametrize(
    ("device", "wait"),
    [
        (
            "/dev/disk/by-label/my\\x20dump",
            DeviceWait("/dev/disk/by-label/my\\x20dump", "LABEL", "my dump"),
        ),
        (
            "/dev/disk/by-partuuid/1234-01",
            DeviceWait("/dev/disk/by-partuuid/1234-01", "PARTUUID", "1234-01"),
        ),
        ("/dev/vdb1", DeviceWait("/dev/vdb1")),
    ],
)
def test_names_blkid_can_find_keep_the_small_init(device: str, wait: DeviceWait) -> None:
    choice = choose_init(fs_plan(device), KdumpConfig())
    assert choice.init == KDUMPD_INIT
    assert choice.devices == (wait,)


def test_dump_to_rootfs_waits_for_both_devices_once_each() -> None:
    root = MountSpec("/dev/disk/by-uuid/root", "/sysroot", "ext4")
    plan = fs_plan(rootfs=root, failure_action="dump_to_rootfs")
    choice = choose_init(plan, KdumpConfig())
    assert [d.value for d in choice.devices] == ["abc", "root"]
    same = fs_plan("/dev/disk/by-uuid/root", rootfs=root, failure_action="dump_to_rootfs")
    assert [d.value for d in choose_init(same, KdumpConfig()).devices] == ["root"]


SSH = SshTarget(
    path="/var/crash",
    ssh=SshSpec(user="root", host="h", identity="/root/.ssh/k", known_hosts="/etc/k"),
)


@pytest.mark.parametrize(
    ("plan", "config", "modules", "reason"),
    [
        (fs_plan(target=SSH), KdumpConfig(), (), "needs the network"),
        (fs_plan(), KdumpConfig(), ("lvm", "dm"), "device stack needs dracut modules: lvm dm"),
        (fs_plan(), KdumpConfig(dracut_args="--add foo"), (), "dracut_args"),
        (fs_plan(failure_action="shell"), KdumpConfig(), (), "shell action"),
        (fs_plan(final_action="shell"), KdumpConfig(), (), "shell action"),
        (fs_plan("/dev/disk/by-id/virtio-x"), KdumpConfig(), (), "udev's helpers (by-id)"),
        (fs_plan("/dev/disk/by-path/pci-0"), KdumpConfig(), (), "udev's helpers (by-path)"),
        (fs_plan("/dev/mapper/vg-lv"), KdumpConfig(), (), "device mapper"),
        (fs_plan(fstype="btrfs"), KdumpConfig(), (), "btrfs may span devices"),
        (fs_plan(target=RawTarget("/dev/disk/by-id/x")), KdumpConfig(), (), "by-id"),
    ],
)
def test_what_keeps_dracuts_systemd_initrd(
    plan: CapturePlan, config: KdumpConfig, modules: tuple[str, ...], reason: str
) -> None:
    choice = choose_init(plan, config, dracut_modules=modules)
    assert choice.init == SYSTEMD_INIT
    assert any(reason in r for r in choice.reasons), choice.reasons


def test_the_small_image_asks_dracut_for_no_systemd(tmp_path: Path) -> None:
    argv = dracut_argv(
        fs_plan(),
        KdumpConfig(),
        needs=ImageNeeds(drivers=("ext4",)),
        image=tmp_path / "i.img",
        kernel_release=KVER,
        build_dir=tmp_path,
        init=KDUMPD_INIT,
    )
    modules = argv[argv.index("--modules") + 1].split()
    assert modules == ["bash", "kernel-modules", "kdumpd"]
    systemd = dracut_argv(
        fs_plan(),
        KdumpConfig(),
        needs=ImageNeeds(drivers=("ext4",)),
        image=tmp_path / "i.img",
        kernel_release=KVER,
        build_dir=tmp_path,
    )
    assert "systemd" in systemd[systemd.index("--modules") + 1].split()


def small_context(devices: tuple[str, ...], failure_action: str = "reboot") -> ModuleContext:
    return ModuleContext(
        kernel_release=KVER,
        build_dir="/b",
        agent_files=(),
        python_files=(),
        python_extensions=(),
        collector="/usr/bin/makedumpfile",
        vmcore_dmesg="/usr/sbin/vmcore-dmesg",
        user_programs=(),
        failure_action=failure_action,
        init=KDUMPD_INIT,
        wait_devices=devices,
    )


@pytest.mark.integration
def test_the_rendered_init_keeps_hostile_names_as_data(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    hostile = ("/dev/disk/by-label/$(touch pwned)", "LABEL", "a'b\"c $(id) `x`")
    render.render_module(
        small_context(hostile, "poweroff"), template_dir=TEMPLATES, out_dir=tmp_path
    )
    init = tmp_path / "kdumpd-init.sh"
    subprocess.run([bash, "-n", str(init)], check=True)
    text = init.read_text()
    assert "fallback_action=poweroff\n" in text
    # The array, evaluated by bash, gives back exactly the three words.
    line = next(x for x in text.splitlines() if x.startswith("devices=("))
    words = subprocess.run(
        [bash, "-c", line + '\nprintf "%s\\0" "${devices[@]}"'],
        capture_output=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split(b"\0")[:-1]
    assert [w.decode() for w in words] == list(hostile)
    assert not (tmp_path / "pwned").exists()
    # dracut's systemd units stay out of a small image's setup
    setup = (tmp_path / "kdumpd-setup.sh").read_text()
    assert 'inst_simple "$build/kdumpd-init.sh" /init' in setup
    assert "kdumpd-capture.service" not in setup
    assert "echo bash kernel-modules" in setup


def mountinfo(tmp_path: Path) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(
        "1 0 0:2 / / rw - rootfs rootfs rw\n"
        "20 1 0:5 / /proc rw - proc proc rw\n"
        "30 1 8:1 / /sysroot rw - ext4 /dev/vda1 rw\n"
        "31 1 8:17 / /kdumproot rw - xfs /dev/vdb1 rw\n"
    )
    return path


class Stop(Exception):
    """Raised by the fake sleep: the executor would wait here."""


def stop(_seconds: float) -> None:
    raise Stop


def test_reboot_releases_filesystems_then_asks_the_kernel(
    tmp_path: Path, programs: ProgramStub
) -> None:
    programs.expect("umount")
    programs.expect("umount", returncode=32)  # busy: python runs from /sysroot
    programs.expect("mount")
    sysrq = tmp_path / "sysrq-trigger"
    with pytest.raises(Stop):
        KernelExecutor(sysrq, mountinfo(tmp_path), sleep=stop)("reboot")
    assert programs.calls == [
        ("umount", "/kdumproot"),
        ("umount", "/sysroot"),
        ("mount", "-o", "remount,ro", "/sysroot"),
    ]
    assert sysrq.read_bytes() == b"b"


def test_poweroff_and_halt(tmp_path: Path, programs: ProgramStub) -> None:
    programs.expect("umount")
    sysrq = tmp_path / "sysrq-trigger"
    with pytest.raises(Stop):
        KernelExecutor(sysrq, mountinfo(tmp_path), sleep=stop)("poweroff")
    assert sysrq.read_bytes() == b"o"
    sysrq.unlink()
    with pytest.raises(Stop):  # halt waits for good, and writes nothing
        KernelExecutor(sysrq, mountinfo(tmp_path), sleep=stop)("halt")
    assert not sysrq.exists()


def test_a_failed_kernel_action_is_an_error(tmp_path: Path, programs: ProgramStub) -> None:
    programs.expect("umount")
    missing = tmp_path / "no" / "sysrq-trigger"
    with pytest.raises(ActionError, match="reboot through .* failed"):
        KernelExecutor(missing, mountinfo(tmp_path), sleep=stop)("reboot")
    with pytest.raises(ActionError, match="unknown action"):
        KernelExecutor(missing, mountinfo(tmp_path), sleep=stop)("explode")

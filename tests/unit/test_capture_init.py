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
    NetworkSpec,
    RawTarget,
    SshSpec,
    SshTarget,
)
from kdumpd.image import render
from kdumpd.image.agent import PythonFiles
from kdumpd.image.build import stage
from kdumpd.image.dracut import dracut_argv
from kdumpd.image.init import (
    IPCONFIG,
    KDUMPD_INIT,
    SYSTEMD_INIT,
    DeviceWait,
    InitChoice,
    IpConfig,
    choose_init,
    image_dracut_modules,
)
from kdumpd.image.render import ModuleContext
from kdumpd.paths import Paths
from kdumpd.targets.base import ImageFile, ImageNeeds
from kdumpd.targets.ssh import NETWORK_DRACUT_MODULE
from tests.conftest import ProgramStub, write
from tests.support.module_context import small_init_context

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
MAC = "52:54:00:12:34:56"
DHCP4 = NetworkSpec(interface="ens3", mac=MAC, driver="virtio_net", dhcp="ipv4", server="10.0.2.2")
STATIC4 = NetworkSpec(
    interface="ens3",
    mac=MAC,
    driver="virtio_net",
    dhcp="no",
    server="192.0.2.9",
    addresses=("10.0.0.5/24",),
    gateway="10.0.0.1",
    wait_seconds=60,
)


def ssh_plan(network: NetworkSpec | None, **changes: object) -> CapturePlan:
    base: dict[str, object] = {
        "kernel_release": KVER,
        "target": SshTarget(path="/var/crash", ssh=SSH.ssh, network=network),
        "core_collector": ("makedumpfile", "-F", "-l", "-d", "31"),
    }
    base.update(changes)
    return CapturePlan(**base)  # type: ignore[arg-type]


def test_ssh_over_dhcp4_gets_the_small_init_which_brings_the_nic_up() -> None:
    choice = choose_init(ssh_plan(DHCP4), KdumpConfig(), dracut_modules=(NETWORK_DRACUT_MODULE,))
    assert choice.init == KDUMPD_INIT, choice.reasons
    assert choice.network == IpConfig(mac=MAC, wait_seconds=180)


def test_ssh_with_a_static_ipv4_address_gets_ipconfigs_long_form_values() -> None:
    choice = choose_init(ssh_plan(STATIC4), KdumpConfig(), dracut_modules=(NETWORK_DRACUT_MODULE,))
    assert choice.init == KDUMPD_INIT, choice.reasons
    assert choice.network == IpConfig(
        mac=MAC, wait_seconds=60, address="10.0.0.5", netmask="255.255.255.0", gateway="10.0.0.1"
    )
    on_link = STATIC4.__class__(**{**STATIC4.__dict__, "gateway": None})
    assert choose_init(ssh_plan(on_link), KdumpConfig()).network == IpConfig(
        mac=MAC, wait_seconds=60, address="10.0.0.5", netmask="255.255.255.0"
    )


def test_ssh_with_the_network_up_already_needs_nothing_brought_up() -> None:
    choice = choose_init(ssh_plan(None), KdumpConfig())
    assert choice.init == KDUMPD_INIT and choice.network is None


def test_ssh_with_dump_to_rootfs_waits_for_the_root_device_too() -> None:
    root = MountSpec("/dev/disk/by-uuid/root", "/sysroot", "ext4")
    choice = choose_init(
        ssh_plan(DHCP4, rootfs=root, failure_action="dump_to_rootfs"), KdumpConfig()
    )
    assert choice.init == KDUMPD_INIT
    assert choice.devices == (DeviceWait("/dev/disk/by-uuid/root", "UUID", "root"),)


def _net(**changes: object) -> NetworkSpec:
    return NetworkSpec(**{**STATIC4.__dict__, **changes})


@pytest.mark.parametrize(
    ("network", "reason"),
    [
        (_net(dhcp="ipv6", addresses=(), gateway=None), "IPv6"),
        (_net(server="2001:db8::9", addresses=("2001:db8::5/64",), gateway=None), "IPv6"),
        (_net(addresses=("2001:db8::5/64",)), "IPv6"),
        (_net(mac=""), "no MAC address"),
        (_net(addresses=("10.0.0.5/24", "10.0.0.6/24")), "not one IPv4 address"),
        (_net(addresses=()), "not one IPv4 address"),
        (_net(gateway="fe80::1x"), "not IPv4"),
    ],
)
def test_networks_ipconfig_cannot_bring_up_keep_systemd_networkd(
    network: NetworkSpec, reason: str
) -> None:
    choice = choose_init(ssh_plan(network), KdumpConfig(), dracut_modules=(NETWORK_DRACUT_MODULE,))
    assert choice.init == SYSTEMD_INIT
    assert any(reason in r for r in choice.reasons), choice.reasons
    # networkd is the way the systemd image brings that network up: it is no device stack.
    assert not any("device stack" in r for r in choice.reasons), choice.reasons
    assert image_dracut_modules(choice, (NETWORK_DRACUT_MODULE, "lvm")) == (
        NETWORK_DRACUT_MODULE,
        "lvm",
    )


def test_the_small_image_leaves_systemd_networkd_out() -> None:
    choice = choose_init(ssh_plan(DHCP4), KdumpConfig())
    assert image_dracut_modules(choice, (NETWORK_DRACUT_MODULE,)) == ()
    # Another reason for systemd keeps networkd: that image needs it for the network.
    shell = choose_init(ssh_plan(DHCP4, failure_action="shell"), KdumpConfig())
    assert shell.init == SYSTEMD_INIT
    assert image_dracut_modules(shell, (NETWORK_DRACUT_MODULE,)) == (NETWORK_DRACUT_MODULE,)


@pytest.mark.parametrize(
    ("plan", "config", "modules", "reason"),
    [
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


def test_the_small_ssh_image_gets_only_the_nics_driver_chain(tmp_path: Path) -> None:
    """No generic driver set (megabytes of crypto, hid, usb): 99kdumpd walks the NIC's devices."""
    needs = ImageNeeds(drivers=("virtio_net",), nics=("ens3",), generic_drivers=True)

    def argv(init: str) -> list[str]:
        return dracut_argv(
            ssh_plan(DHCP4),
            KdumpConfig(),
            needs=needs,
            image=tmp_path / "i.img",
            kernel_release=KVER,
            build_dir=tmp_path,
            init=init,
        )

    small = argv(KDUMPD_INIT)
    assert small[small.index("--drivers") + 1] == "virtio_net"
    assert small[small.index("--hostonly-nics") + 1] == "ens3"
    # dracut's systemd initrd keeps the generic set, as before.
    assert "--drivers" not in argv(SYSTEMD_INIT)


def small_context(devices: tuple[str, ...], failure_action: str = "reboot") -> ModuleContext:
    return small_init_context(wait_devices=devices, failure_action=failure_action)


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


def _rendered(tmp_path: Path, **network: object) -> tuple[str, str, str]:
    """The rendered init, network script and setup of a small image."""
    context = small_init_context(**network)
    render.render_module(context, template_dir=TEMPLATES, out_dir=tmp_path)
    return tuple(  # type: ignore[return-value]
        (tmp_path / name).read_text()
        for name in ("kdumpd-init.sh", "kdumpd-network.sh", "kdumpd-setup.sh")
    )


def _shell_values(text: str, names: tuple[str, ...], cwd: Path) -> list[str]:
    """The values the rendered assignments of ``names`` give, as bash evaluates them."""
    bash = shutil.which("bash")
    assert bash is not None
    lines = [x for x in text.splitlines() if x.split("=", 1)[0] in names]
    script = "\n".join(lines) + '\nprintf "%s\\0"' + "".join(f' "${n}"' for n in names)
    out = subprocess.run([bash, "-c", script], capture_output=True, check=True, cwd=cwd).stdout
    return [w.decode() for w in out.split(b"\0")[:-1]]


@pytest.mark.integration
def test_the_rendered_init_brings_the_nic_up_with_ipconfig(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    hostile = "52:54:00:$(touch pwned):'\"`x`"
    init, net, setup = _rendered(
        tmp_path,
        nics=("ens3", "a b$(touch pwned)"),
        network_mac=hostile,
        network_address="10.0.0.5",
        network_netmask="255.255.255.0",
        network_gateway="10.0.0.1",
        network_wait_seconds=60,
    )
    for name in ("kdumpd-init.sh", "kdumpd-network.sh", "kdumpd-setup.sh"):
        subprocess.run([bash, "-n", str(tmp_path / name)], check=True)
    names = ("net_mac", "net_address", "net_netmask", "net_gateway", "net_wait", "ipconfig")
    assert _shell_values(net, names, tmp_path) == [
        hostile,
        "10.0.0.5",
        "255.255.255.0",
        "10.0.0.1",
        "60",
        IPCONFIG,
    ]
    assert not (tmp_path / "pwned").exists()
    # The network comes up after the modules are loaded, before the agent runs.
    assert init.index("modprobe -a") < init.index("network_up") < init.index('"$agent"')
    assert ". /usr/lib/kdumpd/kdumpd-network.sh" in init
    assert '-c dhcp -d "$iface"' in net
    assert '-d "$net_address::$net_gateway:$net_netmask::$iface:none"' in net
    assert 'inst_simple "$build/kdumpd-network.sh" "$agent_dir/kdumpd-network.sh"' in setup
    # The setup installs ipconfig with klibc's library, root's passwd line (ssh needs
    # one) and walks the NICs' devices for their drivers.
    assert "inst_simple /usr/lib/klibc/bin/ipconfig" in setup
    assert "/lib/klibc-*.so" in setup
    assert "root:x:0:0:root:/root:/bin/sh" in setup
    line = next(x for x in setup.splitlines() if x.strip().startswith("local -a nics=("))
    words = subprocess.run(
        [bash, "-c", line.strip().removeprefix("local -a ") + '\nprintf "%s\\0" "${nics[@]}"'],
        capture_output=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split(b"\0")[:-1]
    assert [w.decode() for w in words] == ["ens3", "a b$(touch pwned)"]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.integration
def test_an_image_without_a_network_to_bring_up_has_no_ipconfig(tmp_path: Path) -> None:
    init, net, setup = _rendered(tmp_path)
    assert "ipconfig" not in init + net + setup
    assert "network_up" not in init
    assert "root:x:0:0" in setup  # ssh with the network up already still needs it


def test_staging_the_small_image_leaves_networkd_files_out(
    fake_root: Paths, tmp_path: Path
) -> None:
    needs = ImageNeeds(
        drivers=("virtio_net",),
        programs=("ssh", "ip"),
        files=(
            ImageFile("known_hosts", "/etc/k", "0644", b"h ssh-rsa AAAA\n"),
            ImageFile("n.network", "/etc/systemd/network/n.network", "0644", b"", True),
        ),
        nics=("ens3",),
        generic_drivers=True,
    )
    write(fake_root.under_root("/usr/bin/makedumpfile"), "makedumpfile")
    write(fake_root.under_root("/sbin/vmcore-dmesg"), "vmcore-dmesg")
    plan = ssh_plan(DHCP4)
    for init in (choose_init(plan, KdumpConfig()), InitChoice(SYSTEMD_INIT)):
        build = tmp_path / init.init
        build.mkdir()
        context = stage(
            fake_root,
            KdumpConfig(),
            plan,
            needs=needs,
            build_dir=build,
            template_dir=TEMPLATES,
            python_files=PythonFiles((), ()),
            init=init,
        )
        if init.init == KDUMPD_INIT:
            assert context.image_files == ("known_hosts", "/etc/k", "0644")
            assert context.nics == ("ens3",) and context.network_mac == MAC
            assert context.network_address == ""  # DHCP
        else:
            assert "/etc/systemd/network/n.network" in context.image_files
            assert context.nics == () and context.network_mac == ""


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

"""Plans, images and capture steps of the stream targets (ssh, raw) with stubbed programs."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from kdumpd import proc
from kdumpd.capture.agent import CaptureContext, run_capture
from kdumpd.capture.fs import FsDump
from kdumpd.capture.log import CaptureLog
from kdumpd.capture.raw import RawDump
from kdumpd.capture.ssh import SshDump, fresh_directory_command
from kdumpd.config.kdumpconf import KdumpConfig, parse_kdump_conf
from kdumpd.contract.plan import (
    CapturePlan,
    FsTarget,
    MountSpec,
    NetworkSpec,
    RawTarget,
    SshSpec,
    SshTarget,
    Target,
)
from kdumpd.errors import ConfigError, Problem
from kdumpd.image.dracut import dracut_argv
from kdumpd.image.needs import image_needs
from kdumpd.paths import Paths
from kdumpd.planner import compile_full
from kdumpd.targets import network, raw
from kdumpd.targets.ssh import NETWORK_FILE_IN_IMAGE, SshTargetError
from tests.conftest import ProgramStub, write
from tests.support.synth import CoreSpec, generate_core

KVER = "6.1.0-28-amd64"
WHEN = datetime(2024, 6, 23, 21, 27, 26)
SSH_G = "user root\nhostname 192.0.2.7\nport 22\nuserknownhostsfile /root/.ssh/known_hosts\n"
KNOWN = "192.0.2.7 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAtest\n"
ROUTE = json.dumps([{"dst": "192.0.2.7", "dev": "ens3", "prefsrc": "10.0.2.15", "flags": []}])


def addr(dynamic: bool) -> str:
    info: dict[str, Any] = {"family": "inet", "local": "10.0.2.15", "prefixlen": 24}
    if dynamic:
        info["dynamic"] = True
    return json.dumps([{"ifname": "ens3", "address": "52:54:00:12:34:56", "addr_info": [info]}])


def ssh_host(
    paths: Paths,
    programs: ProgramStub,
    *,
    dynamic: bool = True,
    networkd: bool = True,
    extra: str = "",
) -> KdumpConfig:
    """A fake machine with the kdump key, dracut-network, and a virtio NIC toward the server."""
    write(paths.under_root("/root/.ssh/kdump_id_rsa"), "PRIVATE\n")
    write(paths.under_root("/root/.ssh/known_hosts"), KNOWN)
    if networkd:
        (paths.dracut_modules / "01systemd-networkd").mkdir(parents=True)
    module = paths.under_root("/sys/module/virtio_net")
    module.mkdir(parents=True)
    driver = paths.under_root("/sys/class/net/ens3/device/driver")
    driver.mkdir(parents=True)
    (driver / "module").symlink_to(module)
    programs.expect("ssh", stdout=SSH_G)
    programs.expect("ssh-keygen", stdout=f"# Host 192.0.2.7 found: line 1\n{KNOWN}")
    programs.expect("ip", stdout=ROUTE)
    programs.expect("ip", stdout=addr(dynamic))
    text = "ssh root@192.0.2.7\npath /srv//crash\ncore_collector makedumpfile -F -d 31\n"
    return parse_kdump_conf(text + extra).config


def test_ssh_plan_carries_destination_key_known_hosts_and_network(
    fake_root: Paths, programs: ProgramStub
) -> None:
    config = ssh_host(fake_root, programs)
    compiled = compile_full(config, fake_root, kernel_release=KVER)
    plan = compiled.plan
    assert plan.target == SshTarget(
        path="/srv/crash",
        ssh=SshSpec(
            user="root",
            host="192.0.2.7",
            identity="/root/.ssh/kdump_id_rsa",
            known_hosts="/etc/kdumpd/ssh/known_hosts",
            address="192.0.2.7",
            known_hosts_text=KNOWN,
        ),
        network=NetworkSpec(
            interface="ens3",
            mac="52:54:00:12:34:56",
            driver="virtio_net",
            dhcp="ipv4",
            server="192.0.2.7",
            wait_seconds=180,
        ),
    )
    assert "systemd-networkd" in compiled.dracut_modules
    assert CapturePlan.from_dict(json.loads(plan.to_json())) == plan
    assert ["ip", "-j", "route", "get", "192.0.2.7"] in [list(c) for c in programs.calls]


def test_ssh_plan_mirrors_a_static_address(fake_root: Paths, programs: ProgramStub) -> None:
    config = ssh_host(fake_root, programs, dynamic=False)
    plan = compile_full(config, fake_root, kernel_release=KVER).plan
    assert isinstance(plan.target, SshTarget) and plan.target.network is not None
    net = plan.target.network
    assert (net.dhcp, net.addresses) == ("no", ("10.0.2.15/24",))
    unit = network.network_unit(net)
    assert "MACAddress=52:54:00:12:34:56" in unit
    assert "Address=10.0.2.15/24" in unit
    assert "DHCP=" not in unit


def test_an_ipv4_ssh_target_needs_no_dracut_network(
    fake_root: Paths, programs: ProgramStub
) -> None:
    """kdumpd's small init brings IPv4 up with ipconfig: systemd-networkd is not needed."""
    config = ssh_host(fake_root, programs, networkd=False)
    plan = compile_full(config, fake_root, kernel_release=KVER).plan
    assert isinstance(plan.target, SshTarget) and plan.target.network is not None


def test_an_ssh_target_on_the_systemd_initrd_needs_dracut_network(
    fake_root: Paths, programs: ProgramStub
) -> None:
    config = ssh_host(fake_root, programs, networkd=False, extra="failure_action shell\n")
    with pytest.raises(SshTargetError) as caught:
        compile_full(config, fake_root, kernel_release=KVER)
    message = str(caught.value)
    assert "the shell action needs a console" in message
    assert "apt install dracut-network" in message


def test_ssh_plan_needs_the_key(fake_root: Paths, programs: ProgramStub) -> None:
    config = ssh_host(fake_root, programs)
    fake_root.under_root("/root/.ssh/kdump_id_rsa").unlink()
    with pytest.raises(ConfigError) as caught:
        compile_full(config, fake_root, kernel_release=KVER)
    assert "/etc/kdump.conf:1: the ssh key /root/.ssh/kdump_id_rsa does not exist" in str(
        caught.value
    )
    assert "kdumpctl propagate" in str(caught.value)


def test_ssh_plan_refuses_a_server_on_this_machine(fake_root: Paths, programs: ProgramStub) -> None:
    config = ssh_host(fake_root, programs)
    programs.answers["ip"] = []
    programs.expect("ip", stdout=json.dumps([{"type": "local", "dst": "192.0.2.7", "dev": "lo"}]))
    with pytest.raises(network.NetworkError, match="is this machine"):
        compile_full(config, fake_root, kernel_release=KVER)


def test_image_gets_key_known_hosts_network_and_only_that_nic(
    fake_root: Paths, programs: ProgramStub, tmp_path: Path
) -> None:
    config = ssh_host(fake_root, programs)
    plan = compile_full(config, fake_root, kernel_release=KVER).plan
    build = tmp_path / "build"
    build.mkdir()
    needs = image_needs(fake_root, plan)
    files = {f.name: (f.image_path, f.mode, f.content) for f in needs.files}
    assert files == {
        "ssh_identity": ("/root/.ssh/kdump_id_rsa", "0600", b"PRIVATE\n"),
        "ssh_known_hosts": ("/etc/kdumpd/ssh/known_hosts", "0644", KNOWN.encode()),
        "kdumpd.network": (NETWORK_FILE_IN_IMAGE, "0644", files["kdumpd.network"][2]),
    }
    assert b"DHCP=ipv4" in files["kdumpd.network"][2]
    assert needs.programs == ("ssh", "ip")
    argv = dracut_argv(
        plan, config, needs=needs, image=tmp_path / "img", kernel_release=KVER, build_dir=build
    )
    assert argv[argv.index("--hostonly-nics") + 1] == "ens3"
    assert "virtio_net" in argv[argv.index("--add-drivers") + 1].split()
    assert "--drivers" not in argv  # the NIC's bus driver comes with the generic set


def test_raw_plan_uses_the_persistent_name(
    fake_root: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []

    def check(paths: Paths, device: str, **_: Any) -> list[Problem]:
        checked.append(device)
        return []

    monkeypatch.setattr(raw, "check_raw_device", check)
    write(fake_root.under_root("/dev/vdb"), "")
    fake_root.under_root("/dev/disk/by-id").mkdir(parents=True)
    fake_root.under_root("/dev/disk/by-id/virtio-kdumpraw").symlink_to("../../vdb")
    config = parse_kdump_conf("raw /dev/vdb\ncore_collector makedumpfile -F -d 31\n").config
    compiled = compile_full(config, fake_root, kernel_release=KVER)
    assert checked == ["/dev/vdb"]
    assert compiled.plan.target == RawTarget(device="/dev/disk/by-id/virtio-kdumpraw")
    argv = dracut_argv(
        compiled.plan,
        config,
        needs=image_needs(fake_root, compiled.plan),
        image=Path("/i"),
        kernel_release=KVER,
        build_dir=Path("/b"),
    )
    assert argv[argv.index("--add-device") + 1] == "/dev/disk/by-id/virtio-kdumpraw"


def test_raw_plan_refuses_what_the_check_refuses(
    fake_root: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = Problem("/etc/kdump.conf", 1, "raw dump target /dev/vdb (/dev/vdb) is mounted at /")
    monkeypatch.setattr(raw, "check_raw_device", lambda *a, **k: [problem])
    config = parse_kdump_conf("raw /dev/vdb\ncore_collector makedumpfile -F -d 31\n").config
    with pytest.raises(ConfigError, match="is mounted at /"):
        compile_full(config, fake_root, kernel_release=KVER)


# -- capture side --------------------------------------------------------------


class Recorder:
    """A runner that answers by program name and keeps every call's options."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> proc.Completed:
        self.calls.append((tuple(argv), kwargs))
        answer = self.answers[Path(argv[0]).name]
        result: proc.Completed = answer(tuple(argv), kwargs)
        if result.returncode not in kwargs.get("ok_codes", (0,)):
            raise proc.ProgramError(
                argv, result.returncode, result.stdout, result.stderr, "exited with status"
            )
        return result

    def remote_commands(self) -> list[str]:
        found = []
        for argv, kwargs in self.calls:
            if argv[0] == "ssh":
                found.append(argv[-1])
            if "pipe_to" in kwargs:
                found.append(kwargs["pipe_to"][-1])
        return found


def done(argv: tuple[str, ...], code: int = 0, out: str = "", err: str = "") -> proc.Completed:
    return proc.Completed(argv, code, out, err)


NET = NetworkSpec("ens3", "52:54:00:12:34:56", "virtio_net", "ipv4", "192.0.2.7")
DUMP_DIR = "/srv/crash/10.0.2.15-2024-06-23-21:27:26"
SSH_TARGET = SshTarget(
    path="/srv/crash",
    ssh=SshSpec("root", "192.0.2.7", "/root/.ssh/kdump_id_rsa", "/etc/kdumpd/ssh/known_hosts"),
    network=NET,
)


def context(root: Paths, vmcore: Path, plan: CapturePlan, actions: list[str]) -> CaptureContext:
    return CaptureContext(
        paths=root,
        plan=plan,
        vmcore=vmcore,
        execute=actions.append,
        log=CaptureLog(console=io.StringIO()),
        now=lambda: WHEN,
        kernel_log=lambda: "",
    )


def test_ssh_capture_names_the_dir_by_source_address_and_streams_with_F(
    fake_root: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vmcore = generate_core(tmp_path / "vmcore", CoreSpec(data_pages=2)).path
    route = json.dumps([{"dst": "192.0.2.7", "prefsrc": "10.0.2.15", "dev": "ens3"}])
    recorder = Recorder(
        {
            "ip": lambda a, k: done(a, out=route),
            # the server names the fresh directory it created
            "ssh": lambda a, k: done(a, out=f"{DUMP_DIR}\n" if "mkdir" in a[-1] else ""),
            "vmcore-dmesg": lambda a, k: done(a),
            "makedumpfile": lambda a, k: done(a),
        }
    )
    monkeypatch.setattr(proc, "runner", recorder)
    plan = CapturePlan(KVER, SSH_TARGET, ("makedumpfile", "-l", "-d", "31"))
    actions: list[str] = []
    assert run_capture(context(fake_root, vmcore, plan, actions)) == 0
    assert actions == ["reboot"]
    d = DUMP_DIR
    assert recorder.remote_commands() == [
        fresh_directory_command(d),
        f"umask 0077 && set -C && dd bs=512 >{d}/vmcore-dmesg-incomplete.txt",
        f"mv -f -- {d}/vmcore-dmesg-incomplete.txt {d}/vmcore-dmesg.txt",
        f"umask 0077 && set -C && dd bs=512 >{d}/vmcore-incomplete",
        f"mv -f -- {d}/vmcore-incomplete {d}/vmcore.flat",
        f"umask 0077 && set -C && dd 2>/dev/null >{d}/.kdumpd-metadata.json.incomplete && "
        f"mv -f -- {d}/.kdumpd-metadata.json.incomplete {d}/kdumpd-metadata.json",
        f"umask 0077 && set -C && dd 2>/dev/null >{d}/.kexec-dmesg.log.incomplete && "
        f"mv -f -- {d}/.kexec-dmesg.log.incomplete {d}/kexec-dmesg.log",
    ]
    collector = next(a for a, _ in recorder.calls if a[0] == "makedumpfile")
    assert collector == ("makedumpfile", "-l", "-d", "31", "-F", str(vmcore))
    meta = next(k["input"] for a, k in recorder.calls if "kdumpd-metadata" in a[-1])
    assert json.loads(meta)["result"] == "success"


def test_ssh_capture_failure_goes_to_rootfs_and_says_why(
    fake_root: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vmcore = generate_core(tmp_path / "vmcore", CoreSpec(data_pages=2)).path
    write(fake_root.proc_mounts, "30 1 254:1 / /sysroot rw - ext4 /dev/vda rw\n")
    route = json.dumps([{"dst": "192.0.2.7", "prefsrc": "10.0.2.15", "dev": "ens3"}])
    closed = "kex_exchange_identification: Connection closed by remote host\n"

    def makedumpfile(argv: tuple[str, ...], kwargs: dict[str, Any]) -> proc.Completed:
        Path(argv[-1]).write_bytes(b"KDUMP   ")
        return done(argv)

    recorder = Recorder(
        {
            "ip": lambda a, k: done(a, out=route),
            "ssh": lambda a, k: done(a, 255, err=closed),
            "vmcore-dmesg": lambda a, k: done(a),
            "makedumpfile": makedumpfile,
        }
    )
    monkeypatch.setattr(proc, "runner", recorder)
    plan = CapturePlan(
        KVER,
        SSH_TARGET,
        ("makedumpfile", "-l", "-d", "31"),
        failure_action="dump_to_rootfs",
        rootfs=MountSpec("/dev/disk/by-uuid/r", "/sysroot", "ext4"),
        rootfs_path="/var/crash",
    )
    actions: list[str] = []
    ctx = context(fake_root, vmcore, plan, actions)
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    def make_sink(target: Target) -> Any:
        if isinstance(target, SshTarget):
            return SshDump(target, ctx.log, sleep=sleep, clock=lambda: clock[0])
        assert isinstance(target, FsTarget)
        return FsDump(fake_root, target, ctx.log)

    ctx.make_sink = make_sink
    assert run_capture(ctx) == 1
    assert actions == ["reboot"]  # final_action after dump_to_rootfs
    assert 30 <= clock[0] <= 40  # retried for the bounded time, not forever
    local = fake_root.under_root("/sysroot/var/crash/127.0.0.1-2024-06-23-21:27:26")
    meta = json.loads((local / "kdumpd-metadata.json").read_text())
    assert meta["result"] == "success" and meta["dump_to_rootfs"] is True
    assert meta["planned_target"]["kind"] == "ssh"
    assert meta["planned_target"]["reason"].startswith("network: cannot reach root@192.0.2.7")
    assert "Connection closed by remote host" in meta["planned_target"]["reason"]
    # A file on the root filesystem: the plain collector, no -F (that is for streams).
    assert meta["target"]["kind"] == "fs"
    assert meta["fallback"]["used"] is False
    assert "-F" not in meta["collector"]["argv"]


def test_raw_capture_writes_the_stream_to_the_device_and_nothing_else(
    fake_root: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vmcore = generate_core(tmp_path / "vmcore", CoreSpec(data_pages=2)).path
    device = "/dev/disk/by-id/virtio-kdumpraw"
    write(fake_root.under_root(device), "old contents of the device\n")

    def makedumpfile(argv: tuple[str, ...], kwargs: dict[str, Any]) -> proc.Completed:
        kwargs["stdout"].write(b"makedumpfile\0\0\0\0stream")
        return done(argv)

    recorder = Recorder({"makedumpfile": makedumpfile})
    monkeypatch.setattr(proc, "runner", recorder)
    plan = CapturePlan(KVER, RawTarget(device=device), ("makedumpfile", "-d", "31"))
    actions: list[str] = []
    ctx = context(fake_root, vmcore, plan, actions)
    assert isinstance(ctx.sink_for(plan.target), RawDump)
    assert run_capture(ctx) == 0
    assert actions == ["reboot"]
    assert [a for a, _ in recorder.calls] == [("makedumpfile", "-d", "31", "-F", str(vmcore))]
    data = fake_root.under_root(device).read_bytes()
    assert data.startswith(b"makedumpfile\0\0\0\0stream")
    assert not fake_root.var_crash.exists()


def test_ssh_capture_sends_kdumpd_log_when_vmcore_dmesg_fails(
    fake_root: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vmcore = generate_core(tmp_path / "vmcore", CoreSpec(data_pages=2)).path
    route = json.dumps([{"dst": "192.0.2.7", "prefsrc": "10.0.2.15", "dev": "ens3"}])
    recorder = Recorder(
        {
            "ip": lambda a, k: done(a, out=route),
            "ssh": lambda a, k: done(a, out=f"{DUMP_DIR}\n" if "mkdir" in a[-1] else ""),
            "vmcore-dmesg": lambda a, k: done(a, 1, err="unsupported kernel"),
            "makedumpfile": lambda a, k: done(a),
        }
    )
    monkeypatch.setattr(proc, "runner", recorder)
    plan = CapturePlan(KVER, SSH_TARGET, ("makedumpfile", "-l", "-d", "31"))
    assert run_capture(context(fake_root, vmcore, plan, [])) == 0
    sent = next(k["input"] for a, k in recorder.calls if ".vmcore-dmesg.txt.incomplete" in a[-1])
    assert sent.endswith("] Kernel panic - not syncing: sysrq triggered crash\n")
    meta = next(k["input"] for a, k in recorder.calls if "kdumpd-metadata" in a[-1])
    assert json.loads(meta)["dmesg"] == {"file": "vmcore-dmesg.txt", "tool": "kdumpd"}

"""The ssh target on a real kernel: the dump streams through ssh to a host sshd.

The server is an sshd on the host's loopback with throw-away keys (the integration
tests' fixture). The guest reaches it as 10.0.2.100:22 through a QEMU guest forward
and nothing else: user networking stays restricted. The capture initramfs brings the
guest's network up as the guest has it (DHCP from QEMU) and streams
``makedumpfile -F`` into ``dd`` on the server.

* ssh: after the crash the server holds <path>/10.0.2.15-<date>/vmcore.flat, which
  ``makedumpfile -R`` reassembles, and whose kernel log holds the panic.
* ssh-unreachable: the server is stopped before the crash; with failure_action
  dump_to_rootfs the dump lands in the guest's own <path>, and the metadata says why.

The guest reserves the smallest crashkernel= claimed for an ssh target, so both
scenarios prove that claim on every run, with the image kdumpd builds for an IPv4
network: its own small init, which brings the NIC up with klibc's ipconfig (no systemd,
no udev, no systemd-networkd). KDUMPD_VM_CRASHKERNEL overrides the size to probe another.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from arming import arm_with_config
from harness import Guest, loopback_forward
from scenario import PANIC_LINE, check_local_dump, crash_and_wait

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from sshd import LoopbackSshd, start_sshd, unavailable_reason

SERVER = "10.0.2.100"
GUEST_ADDRESS = "10.0.2.15"  # what QEMU's DHCP hands out
#: The smallest reservation claimed for an ssh dump: with kdumpd's small init and
#: ipconfig, 128M kept about 15 MiB available before makedumpfile started (the
#: systemd initrd with systemd-networkd needed about 160M).
CLAIMED_SSH = "128M"
CRASHKERNEL = os.environ.get("KDUMPD_VM_CRASHKERNEL", CLAIMED_SSH)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackSshd]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(f"the ssh scenarios need a loopback sshd: {reason}")
    started = start_sshd(tmp_path / "sshd")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def dump_path() -> Iterator[str]:
    """A dump path outside /tmp (the guest empties /tmp at boot), removed afterwards."""
    path = f"/var/tmp/kdumpd-vmtest-{uuid.uuid4().hex[:8]}/crash"
    yield path
    shutil.rmtree(Path(path).parent, ignore_errors=True)


def ssh_guest(make_guest: Callable[..., Guest], server: LoopbackSshd, tmp_path: Path) -> Guest:
    """A booted guest whose root has the kdump key and the server's known_hosts line."""
    guest = make_guest(
        crashkernel=CRASHKERNEL,
        guest_forwards=[loopback_forward(SERVER, 22, server.port)],
    )
    guest.start()
    guest.wait_for_ssh()
    key = tmp_path / "kdump_id_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-N", "", "-f", key], check=True)
    server.authorize(key.with_suffix(".pub"))
    guest.ssh("mkdir -p -m 700 /root/.ssh")
    guest.copy_to(key, "/root/.ssh/kdump_id_rsa")
    guest.ssh("chmod 600 /root/.ssh/kdump_id_rsa")
    kind, host_key = server.host_key.with_suffix(".pub").read_text().split()[:2]
    guest.ssh(f"echo '{SERVER} {kind} {host_key}' >> /root/.ssh/known_hosts")
    return guest


def conf(path: str) -> str:
    return (
        f"ssh root@{SERVER}\n"
        f"path {path}\n"
        "core_collector makedumpfile -F -l --message-level 7 -d 31\n"
        "failure_action dump_to_rootfs\n"
    )


def test_ssh(
    make_guest: Callable[..., Guest],
    kdumpd_deb: str,
    server: LoopbackSshd,
    dump_path: str,
    tmp_path: Path,
) -> None:
    guest = ssh_guest(make_guest, server, tmp_path)
    arm_with_config(guest, kdumpd_deb, conf(dump_path))
    # An IPv4 network needs neither systemd nor networkd: the image runs kdumpd's init.
    release = guest.ssh("uname -r").stdout.strip()
    image = f"/var/lib/kdumpd/initramfs-{release}kdump.img"
    assert "kdumpd capture init" in guest.ssh(f"lsinitrd -f init {image}").stdout

    mark = guest.serial_mark()
    crash_and_wait(guest)

    dumps = sorted(Path(dump_path).glob(f"{GUEST_ADDRESS}-*"))
    assert dumps, (
        f"nothing under {dump_path} on the server\n{server.logs()[-3000:]}\n"
        f"{guest.serial_text()[mark:][-4000:]}"
    )
    dump = dumps[-1]
    names = sorted(p.name for p in dump.iterdir())
    assert "vmcore-incomplete" not in names, names
    assert {"vmcore.flat", "vmcore-dmesg.txt", "kexec-dmesg.log", "kdumpd-metadata.json"} <= set(
        names
    ), names
    assert (dump / "vmcore.flat").stat().st_mode & 0o077 == 0
    rebuilt = tmp_path / "vmcore"
    with (dump / "vmcore.flat").open("rb") as stream:
        subprocess.run(
            ["makedumpfile", "-R", str(rebuilt)], stdin=stream, check=True, capture_output=True
        )
    assert rebuilt.read_bytes()[:8] == b"KDUMP   "
    extracted = tmp_path / "dmesg.txt"
    subprocess.run(
        ["makedumpfile", "--dump-dmesg", str(rebuilt), str(extracted)],
        check=True,
        capture_output=True,
    )
    assert PANIC_LINE in extracted.read_text(errors="replace")
    assert PANIC_LINE in (dump / "vmcore-dmesg.txt").read_text(errors="replace")
    meta = json.loads((dump / "kdumpd-metadata.json").read_text())
    assert meta["result"] == "success", meta
    assert meta["target"]["kind"] == "ssh"
    assert meta["collector"]["returncode"] == 0, meta["collector"]
    steps = {s["name"]: s["seconds"] for s in meta["steps"]}
    timings = {"crashkernel": CRASHKERNEL, "steps": steps}
    (guest.artifacts / "ssh-timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"ssh capture at crashkernel={CRASHKERNEL}: {steps}")


def test_ssh_unreachable(
    make_guest: Callable[..., Guest],
    kdumpd_deb: str,
    server: LoopbackSshd,
    dump_path: str,
    tmp_path: Path,
) -> None:
    guest = ssh_guest(make_guest, server, tmp_path)
    arm_with_config(guest, kdumpd_deb, conf(dump_path))
    server.stop()

    crash_and_wait(guest)

    assert not list(Path(dump_path).glob(f"{GUEST_ADDRESS}-*")), "the server was down"
    local = check_local_dump(guest, dump_path)
    meta = json.loads(guest.ssh(f"cat {local}/kdumpd-metadata.json").stdout)
    assert meta["result"] == "success", meta
    assert meta["dump_to_rootfs"] is True
    assert meta["fallback"]["used"] is False, meta["collector"]
    planned = meta["planned_target"]
    assert planned["kind"] == "ssh", planned
    assert planned["reason"].startswith("network: cannot reach root@10.0.2.100"), planned

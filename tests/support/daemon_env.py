"""A private system bus with the shipped policy, a fake system tree, and kdumpd running on both.

Shared by the daemon's integration tests. dracut is replaced by a script on
PATH that writes the image it is asked for and counts its builds (dracut
itself is tested in test_initramfs); kexec is never run: ``kdumpd --root``
loads through the tree loader, which moves the tree's kexec_crash_loaded.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "dbus" / "org.kdumpd1.conf"
KVER = "6.1.0-test-amd64"
GOOD_CONF = "path /var/crash\ncore_collector makedumpfile -l --message-level 7 -d 31\n"
# Wait bound for the daemon's answers; a hang fails the test instead of blocking the run.
WAIT_S = 60.0

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <!-- the default policy of Debian's system bus (dbus 1.14 system.conf) -->
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""

FAKE_DRACUT = """#!/bin/sh
# dracut stand-in: --version answers, a build writes the image (argument before last).
if [ "$1" = "--version" ]; then echo "dracut 059"; exit 0; fi
# a test holds the build (to look at the daemon meanwhile) by creating the hold file
while [ -e "{count}.hold" ]; do sleep 0.1; done
echo build >> "{count}"
eval "image=\\${{$(($# - 1))}}"
echo "capture image" > "$image"
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_tree(root: Path) -> None:
    """A bootable x86 host with 256 MiB reserved, nothing loaded, a valid kdump.conf."""
    write(root / "sys/kernel/kexec_crash_loaded", "0\n")
    write(root / "sys/kernel/kexec_crash_size", "268435456\n")
    write(root / "etc/kdump.conf", GOOD_CONF)
    write(root / "etc/default/kdump", f'KDUMP_KERNELVER="{KVER}"\nKEXEC_ARGS=""\n')
    write(root / f"boot/vmlinuz-{KVER}", "kernel")
    write(
        root / "proc/cmdline",
        f"BOOT_IMAGE=/boot/vmlinuz-{KVER} root=UUID=1234 ro crashkernel=256M console=ttyS0\n",
    )
    write(root / "proc/self/mountinfo", "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    for program in ("usr/sbin/makedumpfile", "usr/sbin/vmcore-dmesg", "usr/bin/python3"):
        write(root / program, program)
    (root / "var/crash").mkdir(parents=True)
    for hooks in ("pre.d", "post.d", "emergency.d"):
        (root / "etc/kdump" / hooks).mkdir(parents=True)


@dataclass
class DaemonEnv:
    """The running bus and daemon; ``notes`` is every sd_notify datagram received so far."""

    base: Path
    root: Path
    address: str
    bus: subprocess.Popen[bytes]
    daemon: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    notes: list[str] = field(default_factory=list)
    stderr_path: Path | None = None

    @property
    def hold(self) -> Path:
        """While this file exists, the dracut stand-in waits before building."""
        return self.base / "dracut-builds.hold"

    @property
    def builds(self) -> int:
        count = self.base / "dracut-builds"
        return len(count.read_text().splitlines()) if count.exists() else 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        env["PATH"] = f"{self.base / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONPATH"] = str(REPO)
        return env

    def start_daemon(self) -> None:
        notify_path = self.base / "notify.sock"
        if self.notify is not None:
            self.notify.close()
        notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        env = self.env()
        env["NOTIFY_SOCKET"] = str(notify_path)
        self.stderr_path = self.base / "kdumpd.stderr"
        with self.stderr_path.open("ab") as err:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "kdumpd.daemon.main", "--root", str(self.root)],
                env=env,
                stdout=err,
                stderr=err,
            )

    def next_note(self) -> str:
        """The next sd_notify datagram (fails the test when none comes within WAIT_S)."""
        assert self.notify is not None
        ready, _, _ = select.select([self.notify], [], [], WAIT_S)
        assert ready, f"no sd_notify message within {WAIT_S} s; daemon log: {self.log()}"
        text = self.notify.recv(65536).decode()
        self.notes.append(text)
        return text

    def wait_for(self, word: str) -> str:
        while True:
            note = self.next_note()
            if word in note.splitlines():
                return note

    def log(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path else ""

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(timeout=WAIT_S)
        self.bus.terminate()
        self.bus.wait(timeout=WAIT_S)
        if self.notify is not None:
            self.notify.close()


OPEN_POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy context="default">
    <allow own="org.kdumpd1"/>
    <allow send_destination="org.kdumpd1"/>
  </policy>
</busconfig>
"""


def start_bus(*, policy: Path = POLICY) -> DaemonEnv:
    # Not under pytest's tmp_path: that is 0700 and the "nobody" client must reach the socket.
    base = Path(tempfile.mkdtemp(prefix="kdumpd-bus-"))
    base.chmod(0o755)
    sock = base / "system_bus_socket"
    config = write(base / "bus.conf", BUS_CONFIG.format(socket=sock, policy=policy))
    write(base / "bin/dracut", FAKE_DRACUT.format(count=base / "dracut-builds")).chmod(0o755)
    root = base / "root"
    make_tree(root)
    bus = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
    )
    assert bus.stdout is not None
    address = bus.stdout.readline().decode().strip()
    assert address.startswith("unix:"), f"dbus-daemon printed no address: {address!r}"
    return DaemonEnv(base=base, root=root, address=address, bus=bus)


def cleanup(env: DaemonEnv) -> None:
    env.stop()
    shutil.rmtree(env.base, ignore_errors=True)

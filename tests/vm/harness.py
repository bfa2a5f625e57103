"""Boots the Debian 12 test guest under QEMU and talks to it over a loopback ssh forward.

Owns: getting the guest image (``build-guest-image.sh`` builds or reuses it), choosing
KVM or TCG for this host, and one QEMU process per :class:`Guest` with its own qcow2
overlay, serial log and artefact directory. Tests drive the guest with ``ssh``,
``copy_to``/``copy_from``, ``crash`` and ``wait_for_reboot``.

Short program starts (ssh, scp, qemu-img, the image build) go through
``kdumpd.proc.run``. QEMU itself runs for the whole test, which ``run`` is not made
for, so this module (test code, not the package) starts it with ``subprocess.Popen``.

The guest only ever gets QEMU user networking with ``restrict=on`` and one hostfwd from
127.0.0.1 to its sshd: it can reach nothing outside, and nothing but loopback reaches it.
A test may add guest forwards (:func:`loopback_forward`): one guest address and port
whose connections QEMU hands to ``tcp_bridge.py``, which connects to one loopback port
of the host (a test's own sshd). Nothing else becomes reachable from the guest.

Run by hand: ``python tests/vm/harness.py build`` builds or reuses the image;
``python tests/vm/harness.py shell`` boots a guest and waits until Enter is pressed,
printing the ssh command to reach it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kdumpd import proc

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VM_CACHE = Path(os.environ.get("KDUMPD_VM_CACHE", str(REPO / ".cache" / "vm")))
ARTIFACTS = VM_CACHE / "artifacts"
BUILD_SCRIPT = HERE / "build-guest-image.sh"
ACCEL_CACHE = VM_CACHE / "accel"

# A KVM guest prints this within a few seconds; a guest that hangs early never does.
USERSPACE_MARKER = "Run /init as init process"
KVM_PROBE_SECONDS = 30.0
# Each kernel start, the capture kernel's included, prints its banner once.
# (The printk time stamp, when on, precedes it; journald's console copies say "kernel:".)
KERNEL_BANNER = re.compile(r"^(?:\[[ 0-9.]+\] )?Linux version \S+", re.MULTILINE)
QEMU = "qemu-system-x86_64"
#: DIMM slots a guest made with hotplug_maxmem= offers for memory hot-add.
HOTPLUG_SLOTS = 4
SERIAL_TAIL_LINES = 40
TCP_BRIDGE = HERE / "tcp_bridge.py"


class GuestError(AssertionError):
    """The guest did not do what the test needed; the message names the artefacts."""


@dataclass(frozen=True)
class GuestImage:
    """A built guest image: base disk, kernel and initrd for direct boot, GRUB boot disk,
    root ssh key."""

    directory: Path
    base: Path
    kernel: Path
    initrd: Path
    ssh_key: Path
    kernel_release: str
    bootdisk: Path

    @classmethod
    def load(cls, directory: Path) -> GuestImage:
        """Read an image directory written by build-guest-image.sh."""
        ready = directory / "READY"
        if not ready.is_file():
            raise GuestError(f"{directory}: no READY file, the image build did not finish")
        fields = dict(line.split("=", 1) for line in ready.read_text().splitlines() if "=" in line)
        return cls(
            directory=directory,
            base=directory / "base.qcow2",
            kernel=directory / "vmlinuz",
            initrd=directory / "initrd.img",
            ssh_key=directory / "id_ed25519",
            kernel_release=fields.get("kernel", ""),
            bootdisk=directory / "bootdisk.raw",
        )


def ensure_image(on_line: Callable[[str], None] | None = None) -> GuestImage:
    """Build the guest image unless one for the current recipe is cached; return it.

    ``on_line`` receives the build's progress lines as they come. A missing tool or a
    failing build raises ProgramError with the build's last line (never a skip).
    """
    result = proc.run(["bash", str(BUILD_SCRIPT)], timeout=3600, on_line=on_line)
    found = re.findall(r"^IMAGE_DIR=(.+)$", result.stdout, re.MULTILINE)
    if not found:
        raise GuestError(f"{BUILD_SCRIPT} printed no IMAGE_DIR= line:\n{result.stdout[-2000:]}")
    return GuestImage.load(Path(found[-1]))


def _host_key() -> str:
    """What the KVM decision depends on: the host kernel and the QEMU build."""
    version = proc.run([QEMU, "--version"], timeout=30).stdout.splitlines()[0]
    return f"{os.uname().release} | {version}"


def choose_accel(image: GuestImage, on_line: Callable[[str], None] | None = None) -> str:
    """Return "kvm" or "tcg" for this host.

    KDUMPD_VM_ACCEL=kvm|tcg decides outright. Otherwise a KVM boot is tried once per
    host (kernel release and QEMU version) and the answer kept in .cache/vm/accel: on
    some hosts /dev/kvm exists but guest kernels hang early under it.
    """
    forced = os.environ.get("KDUMPD_VM_ACCEL", "")
    if forced:
        if forced not in ("kvm", "tcg"):
            raise GuestError(f"KDUMPD_VM_ACCEL={forced!r}: use kvm or tcg")
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    # pytest-xdist workers all ask at start: one probes, the others wait and read its answer.
    ACCEL_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(ACCEL_CACHE.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _choose_accel_locked(image, on_line)


def _choose_accel_locked(image: GuestImage, on_line: Callable[[str], None] | None) -> str:
    key = _host_key()
    if ACCEL_CACHE.is_file():
        cached_key, _, cached = ACCEL_CACHE.read_text().strip().rpartition("\n")
        if cached_key == key and cached in ("kvm", "tcg"):
            return cached
    say = on_line or (lambda _line: None)
    say(f"probing KVM: does a guest kernel reach userspace within {KVM_PROBE_SECONDS:.0f} s?")
    probe = Guest(image, fresh_artifacts("kvm-probe"), accel="kvm", crashkernel=None)
    try:
        probe.start()
        works = probe.wait_for_serial(USERSPACE_MARKER, KVM_PROBE_SECONDS, check=False)
    except GuestError as exc:
        # QEMU refusing to start under KVM (e.g. an MSR the host will not set) is a
        # "no" as well; keep its words for whoever wonders why TCG was chosen.
        say(f"KVM probe: {str(exc).splitlines()[0]} (see {probe.qemu_log})")
        works = False
    finally:
        probe.stop()
    decision = "kvm" if works else "tcg"
    verdict = "works" if works else "hangs or fails"
    say(f"KVM {verdict} here; using {decision} (kept in {ACCEL_CACHE})")
    ACCEL_CACHE.parent.mkdir(parents=True, exist_ok=True)
    ACCEL_CACHE.write_text(f"{key}\n{decision}\n")
    return decision


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accel_args(accel: str) -> list[str]:
    """QEMU options for the accelerator; TCG gets a modern CPU without 5-level paging."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # 4-level paging is what nearly every real machine runs, and what the dump tools
    # are best exercised on.
    return ["-accel", "tcg", "-cpu", "max,la57=off"]


def loopback_forward(guest_address: str, guest_port: int, host_port: int) -> str:
    """A QEMU ``guestfwd`` rule: guest connections to address:port reach 127.0.0.1:host_port.

    QEMU starts the bridge program once per connection (``cmd:``), so every ssh run of
    the guest gets its own connection; when nothing listens on the host port the bridge
    exits and the guest sees the connection closed. The rule adds no route: with
    ``restrict=on`` the guest still reaches nothing else.
    """
    bridge = f"{sys.executable} {TCP_BRIDGE} 127.0.0.1 {host_port}"
    if "," in bridge:
        raise GuestError(f"a comma in {bridge!r} would break QEMU's option parsing")
    return f"tcp:{guest_address}:{guest_port}-cmd:{bridge}"


@dataclass
class Disk:
    """An extra disk given to the guest, in the order added (vdb, vdc, ...).

    ``serial`` gives the guest a /dev/disk/by-id/virtio-<serial> name for it.
    """

    path: Path
    fmt: str = "qcow2"
    serial: str = ""


class Guest:
    """One QEMU guest booted from a per-test overlay of the guest image."""

    def __init__(
        self,
        image: GuestImage,
        artifacts: Path,
        *,
        accel: str = "tcg",
        memory: str = "2048M",
        smp: int = 1,
        crashkernel: str | None = "256M",
        append: Sequence[str] = (),
        restrict_network: bool = True,
        keep_overlay: bool = False,
        guest_forwards: Sequence[str] = (),
        boot: str = "kernel",
        hotplug_maxmem: str = "",
    ) -> None:
        if boot not in ("kernel", "grub"):
            raise GuestError(f"boot={boot!r}: use kernel (QEMU loads it) or grub (from disk)")
        self.boot = boot
        self.image = image
        self.artifacts = artifacts
        self.accel = accel
        self.memory = memory
        self.smp = smp
        self.crashkernel = crashkernel
        self.extra_append = list(append)
        self.restrict_network = restrict_network
        self.keep_overlay = keep_overlay
        self.guest_forwards = list(guest_forwards)
        # Memory hot-add (off by default): DIMM slots up to this size, and a QMP
        # monitor socket to plug them. The socket lives in a short private dir
        # (unix socket paths are limited to 108 bytes).
        self.hotplug_maxmem = hotplug_maxmem
        self.qmp_socket: Path | None = None
        self._dimms = 0
        self.disks: list[Disk] = []
        self.overlay = artifacts / "root-overlay.qcow2"
        self.serial_log = artifacts / "serial.log"
        self.qemu_log = artifacts / "qemu.log"
        self.journal_file = artifacts / "journal.txt"
        self.port = 0
        self.boot_id = ""
        self._qemu: subprocess.Popen[bytes] | None = None
        self._qemu_log_handle: IO[bytes] | None = None

    # --- set-up -----------------------------------------------------------------

    def create_disk(self, name: str, size: str = "4G", *, serial: str = "") -> Path:
        """Make an empty qcow2 disk in the artefact dir and attach it; return its path."""
        path = self.artifacts / f"{name}.qcow2"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        proc.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], timeout=60)
        self.add_disk(path, serial=serial)
        return path

    def add_disk(self, path: Path, fmt: str = "qcow2", *, serial: str = "") -> str:
        """Attach a disk image before start(); return the device name the guest sees."""
        if self._qemu is not None:
            raise GuestError("add_disk() must come before start()")
        self.disks.append(Disk(path, fmt, serial))
        return f"/dev/vd{chr(ord('a') + len(self.disks))}"

    def kernel_cmdline(self) -> str:
        """The command line the guest kernel boots with."""
        words = ["root=/dev/vda", "ro", "console=ttyS0,115200"]
        if self.crashkernel:
            words.append(f"crashkernel={self.crashkernel}")
        return " ".join(words + self.extra_append)

    def _memory_arg(self) -> str:
        if not self.hotplug_maxmem:
            return self.memory
        return f"{self.memory},slots={HOTPLUG_SLOTS},maxmem={self.hotplug_maxmem}"

    def qemu_argv(self) -> list[str]:
        """The full QEMU command line (pure: reads only this object's settings)."""
        netdev = f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.port}-:22"
        if self.restrict_network:
            netdev += ",restrict=on"
        for rule in self.guest_forwards:
            netdev += f",guestfwd={rule}"
        argv = [
            QEMU,
            "-name", "kdumpguest",
            "-nodefaults", "-no-user-config",
            "-display", "none", "-vga", "none",
            *accel_args(self.accel),
            "-m", self._memory_arg(),
            "-smp", str(self.smp),
            *self._boot_args(),
            "-netdev", netdev,
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci",
            "-chardev", f"file,id=serial0,path={self.serial_log},append=on",
            "-serial", "chardev:serial0",
        ]  # fmt: skip
        if self.qmp_socket is not None:
            argv += ["-qmp", f"unix:{self.qmp_socket},server=on,wait=off"]
        disks = [Disk(self.overlay), *self.disks]
        if not any(disk.serial for disk in disks):
            for disk in disks:
                argv += ["-drive", f"file={disk.path},if=virtio,format={disk.fmt}"]
            return argv
        # QEMU creates -device disks before if=virtio ones: with any serial, every disk is
        # an explicit device, in order, so the root disk stays vda.
        for number, disk in enumerate(disks):
            serial = f",serial={disk.serial}" if disk.serial else ""
            argv += [
                "-drive", f"file={disk.path},if=none,id=disk{number},format={disk.fmt}",
                "-device", f"virtio-blk-pci,drive=disk{number}{serial}",
            ]  # fmt: skip
        return argv

    def _boot_args(self) -> list[str]:
        """QEMU loads kernel and initrd itself, or the BIOS boots GRUB from its boot disk.

        With boot="grub" the kernel, its command line and crashkernel= come from the
        guest's own /boot/grub/grub.cfg (what update-grub wrote), as on a real machine.
        The boot disk is IDE, so the virtio disks keep their names (root is vda);
        snapshot=on keeps the shared image file unchanged.
        """
        if self.boot == "kernel":
            return [
                "-kernel", str(self.image.kernel),
                "-initrd", str(self.image.initrd),
                "-append", self.kernel_cmdline(),
            ]  # fmt: skip
        if not self.image.bootdisk.is_file():
            raise GuestError(
                f"{self.image.bootdisk} is missing: the image predates GRUB boot; "
                "rebuild it (tests/vm/build-guest-image.sh)"
            )
        return [
            "-drive", f"file={self.image.bootdisk},if=none,id=grubboot,format=raw,snapshot=on",
            "-device", "ide-hd,drive=grubboot,bootindex=0",
        ]  # fmt: skip

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Create the overlay and start QEMU; returns as soon as QEMU runs."""
        if self._qemu is not None:
            raise GuestError("start() called twice; stop() first")
        self.artifacts.mkdir(parents=True, exist_ok=True)
        if self.hotplug_maxmem and self.qmp_socket is None:
            self.qmp_socket = Path(tempfile.mkdtemp(prefix="kdumpd-qmp-")) / "qmp.sock"
        if not self.overlay.exists():
            proc.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                 "-b", str(self.image.base), str(self.overlay)],
                timeout=60,
            )  # fmt: skip
        for _attempt in range(3):
            self.port = free_loopback_port()
            if self._launch():
                return
        raise self._error("QEMU did not start", show_qemu_log=True)

    def _launch(self) -> bool:
        """Start QEMU once; False if it exited at once because the port was taken."""
        argv = self.qemu_argv()
        self._qemu_log_handle = self.qemu_log.open("ab")
        self._qemu_log_handle.write(f"$ {shlex.join(argv)}\n".encode())
        self._qemu_log_handle.flush()
        # Popen, not proc.run: QEMU runs for the whole test (see the module docstring).
        self._qemu = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._qemu_log_handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if self._qemu.poll() is not None:
                log = self.qemu_log.read_text(errors="replace")
                self._qemu = None
                if "host forwarding" in log:
                    return False
                raise self._error("QEMU exited right after starting", show_qemu_log=True)
            time.sleep(0.1)
        return True

    def running(self) -> bool:
        """Whether the QEMU process is alive."""
        return self._qemu is not None and self._qemu.poll() is None

    def stop(self) -> None:
        """Stop QEMU (the guest gets no shutdown: its disk is throw-away) and tidy up."""
        if self._qemu is not None:
            if self._qemu.poll() is None:
                self._qemu.terminate()
                try:
                    self._qemu.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._qemu.kill()
                    self._qemu.wait(timeout=15)
            self._qemu = None
        if self._qemu_log_handle is not None:
            self._qemu_log_handle.close()
            self._qemu_log_handle = None
        if not self.keep_overlay:
            self.overlay.unlink(missing_ok=True)
        if self.qmp_socket is not None:
            shutil.rmtree(self.qmp_socket.parent, ignore_errors=True)
            self.qmp_socket = None

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- talking to the guest -------------------------------------------------------

    def ssh_argv(self, command: str) -> list[str]:
        """ssh to the guest's root through the loopback forward, with the image's key."""
        return [
            "ssh", "-F", "/dev/null",
            "-i", str(self.image.ssh_key), "-p", str(self.port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
            "root@127.0.0.1", command,
        ]  # fmt: skip

    def ssh(self, command: str, *, check: bool = True, timeout: float = 120) -> proc.Completed:
        """Run a shell command in the guest as root; with check, a non-zero exit fails."""
        try:
            result = proc.run(self.ssh_argv(command), ok_codes=range(256), timeout=timeout)
        except proc.ProgramError as exc:
            raise self._error(f"ssh {command!r}: {exc}") from exc
        if check and result.returncode != 0:
            raise self._error(
                f"ssh {command!r} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
            )
        return result

    def _scp(self, source: str, target: str, timeout: float) -> None:
        argv = [
            "scp", "-F", "/dev/null", "-q", "-r",
            "-i", str(self.image.ssh_key), "-P", str(self.port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10",
            source, target,
        ]  # fmt: skip
        try:
            proc.run(argv, timeout=timeout)
        except proc.ProgramError as exc:
            raise self._error(f"scp {source} {target}: {exc}") from exc

    def copy_to(self, local: Path | str, remote: str, *, timeout: float = 300) -> None:
        """Copy a local file or directory into the guest."""
        self._scp(str(local), f"root@127.0.0.1:{remote}", timeout)

    def copy_from(self, remote: str, local: Path | str, *, timeout: float = 600) -> None:
        """Copy a file or directory out of the guest."""
        self._scp(f"root@127.0.0.1:{remote}", str(local), timeout)

    def read_boot_id(self, *, timeout: float = 30) -> str:
        """The guest kernel's boot id (new on every boot)."""
        return self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=timeout).stdout.strip()

    def wait_for_ssh(self, timeout: float = 300) -> None:
        """Wait until root can log in by ssh; remember the boot id."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive("waiting for ssh")
            result = proc.run(
                self.ssh_argv("cat /proc/sys/kernel/random/boot_id"),
                ok_codes=range(256),
                timeout=30,
            )
            if result.returncode == 0 and result.stdout.strip():
                self.boot_id = result.stdout.strip()
                return
            last = result.stderr.strip()
            time.sleep(2)
        raise self._error(f"no ssh login within {timeout:.0f} s (last ssh error: {last})")

    def qmp(self, command: str, **arguments: object) -> dict[str, object]:
        """Run one QMP command on the guest's monitor; raise GuestError on an error reply."""
        if self.qmp_socket is None:
            raise GuestError("the guest has no QMP monitor: create it with hotplug_maxmem=")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(60)
            conn.connect(str(self.qmp_socket))
            reader = conn.makefile("r", encoding="utf-8")
            json.loads(reader.readline())  # the greeting
            for name, args in (("qmp_capabilities", {}), (command, arguments)):
                conn.sendall(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
                while True:
                    reply = json.loads(reader.readline())
                    if "event" not in reply:
                        break
                if "error" in reply:
                    raise GuestError(f"QMP {name} failed: {reply['error']}")
        return dict(reply)

    def hot_add_memory(self, size_mib: int = 512) -> None:
        """Plug a DIMM of ``size_mib`` MiB into the running guest (ACPI memory hotplug)."""
        self._dimms += 1
        backend = f"hotmem{self._dimms}"
        self.qmp(
            "object-add",
            **{"qom-type": "memory-backend-ram", "id": backend, "size": size_mib << 20},
        )
        self.qmp("device_add", driver="pc-dimm", id=f"dimm{self._dimms}", memdev=backend)

    def crash(self) -> None:
        """Crash the guest kernel with sysrq-c; returns while the guest goes down.

        The journal is synced first so the crashed boot's log survives the reboot.
        """
        if not self.boot_id:
            self.boot_id = self.read_boot_id()
        self.ssh("journalctl --sync; sync", timeout=60)
        # In the background, so that ssh returns before the kernel stops.
        self.ssh(
            "nohup sh -c 'sleep 1; echo c > /proc/sysrq-trigger' </dev/null >/dev/null 2>&1 &",
            timeout=30,
        )

    def wait_for_reboot(self, timeout: float = 900) -> str:
        """Wait until ssh answers with a boot id other than the last one; return it.

        QEMU does not suppress reboots: after the capture kernel reboots, the guest
        boots the same kernel again and sshd comes back.
        """
        old = self.boot_id
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("waiting for the reboot")
            result = proc.run(
                self.ssh_argv("cat /proc/sys/kernel/random/boot_id"),
                ok_codes=range(256),
                timeout=30,
            )
            current = result.stdout.strip()
            if result.returncode == 0 and current and current != old:
                self.boot_id = current
                return current
            time.sleep(3)
        raise self._error(
            f"the guest did not come back with a new boot within {timeout:.0f} s "
            f"({self.kernel_starts()} kernel starts in the serial log)"
        )

    def collect_journal(self, dest: Path | None = None) -> Path:
        """Save the guest's journal of every boot (or why it could not) to dest."""
        dest = dest or self.journal_file
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not self.running():
            dest.write_text("journal not collected: QEMU is not running\n")
            return dest
        argv = self.ssh_argv(
            "journalctl --list-boots --no-pager; journalctl -o short-monotonic --no-pager"
        )
        try:
            result = proc.run(argv, ok_codes=range(256), timeout=120)
            stderr = f"\n[ssh stderr]\n{result.stderr}" if result.stderr else ""
            dest.write_text(result.stdout + stderr)
        except proc.ProgramError as exc:
            dest.write_text(f"journal not collected: {exc}\n")
        return dest

    # --- the serial console -------------------------------------------------------------

    def serial_text(self) -> str:
        """Everything the guest wrote to its serial console so far."""
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def serial_mark(self) -> int:
        """A position in the serial log, for wait_for_serial(since=...)."""
        return len(self.serial_text())

    def kernel_starts(self) -> int:
        """How many kernels (first and capture) have booted since start()."""
        return len(KERNEL_BANNER.findall(self.serial_text()))

    def wait_for_serial(
        self, pattern: str, timeout: float, *, since: int = 0, check: bool = True
    ) -> bool:
        """Wait for a regex in the serial log after position ``since``.

        Returns True when it appears; on timeout returns False, or fails with check.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if regex.search(self.serial_text(), since):
                return True
            if not self.running():
                break
            time.sleep(0.5)
        if regex.search(self.serial_text(), since):
            return True
        if check:
            raise self._error(
                f"{pattern!r} did not appear on the serial console within {timeout:.0f} s"
            )
        return False

    # --- failing well -----------------------------------------------------------------

    def artefact_note(self) -> str:
        """Where this guest's serial log, QEMU log and journal are."""
        return (
            f"serial log: {self.serial_log}\nQEMU log:   {self.qemu_log}\n"
            f"journal:    {self.journal_file} (written when a test fails)"
        )

    def _check_alive(self, doing: str) -> None:
        if not self.running():
            code = None if self._qemu is None else self._qemu.returncode
            raise self._error(f"QEMU exited (status {code}) while {doing}", show_qemu_log=True)

    def _error(self, message: str, *, show_qemu_log: bool = False) -> GuestError:
        tail = "\n".join(self.serial_text().splitlines()[-SERIAL_TAIL_LINES:])
        parts = [message, self.artefact_note(), f"last serial lines:\n{tail}"]
        if show_qemu_log and self.qemu_log.exists():
            parts.append(f"QEMU said:\n{self.qemu_log.read_text(errors='replace')[-3000:]}")
        return GuestError("\n".join(parts))


def fresh_artifacts(name: str) -> Path:
    """An empty artefact directory for a test, named after it."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "guest"
    path = ARTIFACTS / safe
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _main(argv: Sequence[str]) -> int:
    """Hand-run entry: ``build`` or ``shell``."""

    def say(line: str) -> None:
        print(line, flush=True)

    command = argv[0] if argv else "build"
    image = ensure_image(on_line=say)
    if command == "build":
        say(f"image: {image.directory} (kernel {image.kernel_release})")
        say(f"accelerator: {choose_accel(image, on_line=say)}")
        return 0
    if command == "shell":
        accel = choose_accel(image, on_line=say)
        guest = Guest(image, fresh_artifacts("shell"), accel=accel)
        with guest:
            started = time.monotonic()
            guest.start()
            guest.wait_for_ssh()
            say(f"ssh up after {time.monotonic() - started:.1f} s ({accel})")
            say(shlex.join(guest.ssh_argv("")[:-1]))
            say(guest.artefact_note())
            input("Enter stops the guest: ")
        return 0
    say("usage: harness.py build|shell")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

"""Steps shared by the capture scenarios: install and arm kdumpd, crash, check a dump."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from harness import KERNEL_BANNER, Guest

from kdumpd import proc

PANIC_LINE = "sysrq triggered crash"


def arm_guest(guest: Guest, deb: str) -> None:
    """Install the .deb with apt (dependencies resolve from the image), enable, arm."""
    guest.copy_to(deb, "/tmp/kdumpd.deb")
    # The package enables and starts the unit itself; the first start builds the
    # capture initramfs, about two minutes under TCG.
    guest.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/kdumpd.deb", timeout=1200)
    guest.ssh("systemctl enable --now kdumpd", timeout=1200)
    status = guest.ssh("kdumpctl status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Kdump is operational" in status.stderr
    assert guest.ssh("cat /sys/kernel/kexec_crash_loaded").stdout.strip() == "1"


def crash_and_wait(guest: Guest) -> str:
    """Crash the guest kernel; return the boot id after the capture's reboot."""
    before = guest.boot_id
    guest.crash()
    after = guest.wait_for_reboot(timeout=1200)
    assert after != before
    return after


def check_local_dump(guest: Guest, crash_dir: str) -> str:
    """The newest dump under crash_dir is complete and holds the panic; return its dir."""
    listing = guest.ssh(f"ls -1d {crash_dir}/127.0.0.1-* 2>/dev/null", check=False).stdout
    dirs = sorted(listing.split())
    assert dirs, f"no dump directory under {crash_dir}\n{guest.artefact_note()}"
    dump = dirs[-1]
    files = guest.ssh(f"ls -l {dump}").stdout
    assert "vmcore-incomplete" not in files, files
    guest.ssh(f"test -s {dump}/vmcore")
    guest.ssh(f"makedumpfile --dump-dmesg {dump}/vmcore /tmp/extracted-dmesg.txt", timeout=600)
    assert PANIC_LINE in guest.ssh("cat /tmp/extracted-dmesg.txt").stdout
    assert PANIC_LINE in guest.ssh(f"cat {dump}/vmcore-dmesg.txt").stdout
    return dump


# --- helpers for scenarios beyond the default target ------------------------------

CONF = "/etc/kdump.conf"
# A printk time stamp at the start of a serial line.
_PRINTK_TIME = re.compile(r"^\[\s*(\d+\.\d+)\]", re.MULTILINE)


def kdumpctl(guest: Guest, command: str, *, timeout: float = 1200) -> proc.Completed:
    """Run ``kdumpctl <command>`` in the guest; the caller judges the exit status."""
    return guest.ssh(f"kdumpctl {command}", check=False, timeout=timeout)


def make_ext4_disk(guest: Guest, device: str, mountpoint: str) -> str:
    """mkfs.ext4 ``device``, mount it at ``mountpoint`` by UUID from fstab; return the UUID.

    What an admin does for a dedicated dump disk: the fstab line keeps it mounted
    across the capture's reboot, so the dump can be read where it was written.
    """
    guest.ssh(f"mkfs.ext4 -q -F -L kdumpdisk {device}", timeout=300)
    uuid = guest.ssh(f"blkid -o value -s UUID {device}").stdout.strip()
    assert uuid, f"blkid found no UUID on {device}"
    guest.ssh(
        f"mkdir -p {mountpoint} && "
        f"echo 'UUID={uuid} {mountpoint} ext4 defaults 0 2' >> /etc/fstab && "
        f"systemctl daemon-reload && mount {mountpoint}"
    )
    assert guest.ssh(f"findmnt -n -o FSTYPE {mountpoint}").stdout.strip() == "ext4"
    return uuid


def capture_timings(serial: str, since: int) -> dict[str, float]:
    """Seconds the capture kernel ran, from its banner to its last line (from the serial log).

    ``since`` is a serial position taken before the crash. Keys: ``capture_kernel``
    (printk time of the capture kernel's last line: its boot, the dump and the
    reboot) and ``agent_start`` (the kernel's time when the capture agent started), as
    far as the log shows them.
    """
    text = serial[since:]
    banners = [m.start() for m in KERNEL_BANNER.finditer(text)]
    if not banners:
        return {}
    end = banners[1] if len(banners) > 1 else len(text)
    capture = text[banners[0] : end]
    times = [float(t) for t in _PRINTK_TIME.findall(capture)]
    out: dict[str, float] = {}
    if times:
        out["capture_kernel"] = max(times)
    agent = capture.find("capturing the crash dump")
    if agent >= 0:
        # The agent writes to the console without printk time stamps: take the
        # kernel's last stamp before its first line.
        before = [float(t) for t in _PRINTK_TIME.findall(capture[:agent])]
        if before:
            out["agent_start"] = max(before)
    return out


def record_timings(guest: Guest, timings: dict[str, float]) -> None:
    """Keep a scenario's timings in its artefact dir (timings.json) and print them."""
    text = json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2, sort_keys=True)
    (guest.artifacts / "timings.json").write_text(text + "\n")
    print(f"timings: {text}")


def crash_and_check_local(
    guest: Guest, crash_dir: str, timings: dict[str, float]
) -> tuple[str, dict[str, Any]]:
    """Crash, wait for the capture's reboot, time it, and check the dump under crash_dir.

    The capture must have succeeded (its metadata says so). Timings (crash to ssh,
    the capture kernel's own) are added to ``timings`` and recorded. Returns the dump
    directory and its metadata.
    """
    mark = guest.serial_mark()
    began = time.monotonic()
    crash_and_wait(guest)
    timings["crash_to_ssh"] = time.monotonic() - began
    timings.update(capture_timings(guest.serial_text(), mark))
    record_timings(guest, timings)
    dump = check_local_dump(guest, crash_dir)
    meta: dict[str, Any] = json.loads(guest.ssh(f"cat {dump}/kdumpd-metadata.json").stdout)
    assert meta["result"] == "success", meta
    return dump, meta

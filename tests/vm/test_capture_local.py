"""Arm, crash, capture on a real Debian 12 kernel: the default path target (/var/crash).

The guest installs the kdumpd .deb built from this tree with apt, arms kdump through
the unit, writes a marker to the kernel log and crashes with sysrq. After the reboot
the dump is read back with makedumpfile, an independent reader, and with kdumpd's
own reader (``kdumpctl dmesg``), which must agree byte for byte with vmcore-dmesg;
``kdumpctl dumps`` lists the dump with its kernel, cause and state. Without the
debug kernel ``kdumpctl analyze`` names the package to install; on the host, with
the debug vmlinux of the guest kernel, ``kdumpctl analyze --report`` lists every
task the guest's ``ps`` showed before the crash.

The guest reserves the smallest crashkernel= the README claims for a local target
(measured by tests/vm/bench_capture.py), so this scenario proves that claim on every
run, with the image kdumpd builds for it: its own small init, no systemd, no udev.
KDUMPD_VM_LOCAL_CRASHKERNEL overrides the size to probe another.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from harness import Guest
from scenario import PANIC_LINE, arm_guest, check_local_dump, crash_and_wait, kdumpctl

from kdumpd import proc

MARKER = "kdumpd-vm-marker: the last line before the crash"

#: The smallest reservation claimed for a local dump (README, "The capture environment"):
#: with kdumpd's small init (no systemd, no udev) 112M keeps about 14 MiB available
#: before makedumpfile starts; 96M runs out of memory while the kernel unpacks the image.
CLAIMED_LOCAL = "112M"
CRASHKERNEL = os.environ.get("KDUMPD_VM_LOCAL_CRASHKERNEL", CLAIMED_LOCAL)


def _mib(size: str) -> int:
    return int(size.rstrip("Mm"))


def _tasks_before_crash(guest: Guest) -> dict[int, str]:
    """PID -> command of every process, without this ssh session's own (they exit)."""
    out = guest.ssh("echo $$ $PPID; ps -e -o pid=,ppid=,comm=").stdout.splitlines()
    session = {int(p) for p in out[0].split()}
    tasks = {}
    for line in out[1:]:
        pid, ppid, comm = line.split(None, 2)
        if int(pid) not in session and not (int(ppid) in session and comm.strip() == "ps"):
            tasks[int(pid)] = comm.strip()
    return tasks


def test_local_default_path(
    make_guest: Callable[..., Guest], kdumpd_deb: str, debug_vmlinux: Path
) -> None:
    guest = make_guest(crashkernel=CRASHKERNEL)
    guest.start()
    guest.wait_for_ssh()
    arm_guest(guest, kdumpd_deb)
    release = guest.ssh("uname -r").stdout.strip()
    # kdumpctl estimate never recommends less than the size this scenario proves.
    estimate = json.loads(guest.ssh("kdumpctl --json estimate").stdout)
    assert estimate["recommended_bytes"] >> 20 >= _mib(CLAIMED_LOCAL), estimate
    # The image's /init is kdumpd's small init: nothing of systemd or udev inside.
    image = f"/var/lib/kdumpd/initramfs-{release}kdump.img"
    assert "kdumpd capture init" in guest.ssh(f"lsinitrd -f init {image}").stdout
    contents = guest.ssh(f"lsinitrd {image}").stdout
    assert "usr/sbin/blkid" in contents and "systemd-udevd" not in contents, contents
    assert "usr/lib/systemd/systemd" not in contents, contents

    before = _tasks_before_crash(guest)
    guest.ssh(f"echo '{MARKER}' > /dev/kmsg")
    crash_and_wait(guest)

    dump = check_local_dump(guest, "/var/crash")
    meta = json.loads(guest.ssh(f"cat {dump}/kdumpd-metadata.json").stdout)
    assert meta["result"] == "success", meta
    # The agent said where the memory was just before makedumpfile started.
    assert meta["memory_before_collector"]["meminfo_kib"]["MemAvailable"] > 0, meta
    # Debian 12's makedumpfile 1.7.2 does not know 6.1 and says so; the metadata keeps it.
    assert "The kernel version is not supported." in meta["collector"]["warnings"], meta

    # kdumpd's own reader of the printk ring buffer agrees with vmcore-dmesg.
    ours = kdumpctl(guest, f"dmesg {dump}/vmcore", timeout=300)
    assert ours.returncode == 0, ours.stderr
    theirs = guest.ssh(f"cat {dump}/vmcore-dmesg.txt").stdout
    assert ours.stdout == theirs
    assert PANIC_LINE in ours.stdout and MARKER in ours.stdout
    # The directory form reads the same dump.
    assert kdumpctl(guest, f"dmesg {dump}", timeout=300).stdout == theirs

    listing = kdumpctl(guest, "dumps --json", timeout=300)
    assert listing.returncode == 0, listing.stderr
    entries = json.loads(listing.stdout)["dumps"]
    entry = next(e for e in entries if e["directory"] == dump)
    assert entry["kernel_release"] == release
    assert entry["cause"] == f"Kernel panic - not syncing: {PANIC_LINE}"
    assert entry["state"] == "complete"
    assert entry["saved_by"].startswith("makedumpfile")
    report = kdumpctl(guest, f"dumps show {dump}", timeout=300)
    assert "sysrq_handle_crash" in report.stdout, report.stdout
    assert "the collector warned" in report.stdout and "not supported" in report.stdout

    # The guest has no debug kernel: analyze names the package and fails.
    missing = kdumpctl(guest, f"analyze {dump}", timeout=300)
    assert missing.returncode != 0
    assert f"linux-image-{release}-dbg" in missing.stderr, missing.stderr

    # On the host, with the debug vmlinux: every task ps saw, and the panic backtrace.
    local = guest.artifacts / "vmcore"
    guest.copy_from(f"{dump}/vmcore", local)
    analyzed = proc.run(
        [sys.executable, "-m", "kdumpd.cli", "analyze", "--report", "--json",
         "--vmlinux", str(debug_vmlinux), str(local)],
        timeout=900,
    )  # fmt: skip
    result = json.loads(analyzed.stdout)["report"]
    found = {t["pid"]: t["comm"] for t in result["tasks"]}
    print(f"tasks: ps before the crash {len(before)}, analyze --report {len(found)}")
    assert {pid: before[pid] for pid in before if pid not in found} == {}
    assert result["task_count"] >= len(before)
    assert any(f.startswith("sysrq_handle_crash") for f in result["panic_backtrace"]), result
    assert result["memory"]["total"], result["memory"]

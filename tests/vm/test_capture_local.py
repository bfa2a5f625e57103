"""Arm, crash, capture on a real Debian 12 kernel: the default path target (/var/crash).

The guest installs the kdumpd .deb built from this tree with apt, arms kdump through
the unit, crashes with sysrq, and after the reboot the dump is read back with
makedumpfile, an independent reader.

The guest reserves the smallest crashkernel= the README claims for a local target
(measured by tests/vm/bench_capture.py), so this scenario proves that claim on every
run; KDUMPD_VM_LOCAL_CRASHKERNEL overrides it to probe another size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from harness import Guest
from scenario import arm_guest, check_local_dump, crash_and_wait

#: The smallest reservation claimed for a local dump (README, "The capture environment").
CLAIMED_LOCAL = "128M"
CRASHKERNEL = os.environ.get("KDUMPD_VM_LOCAL_CRASHKERNEL", CLAIMED_LOCAL)


def _mib(size: str) -> int:
    return int(size.rstrip("Mm"))


def test_local_default_path(make_guest: Callable[..., Guest], kdumpd_deb: str) -> None:
    guest = make_guest(crashkernel=CRASHKERNEL)
    guest.start()
    guest.wait_for_ssh()
    arm_guest(guest, kdumpd_deb)
    # kdumpctl estimate never recommends less than the size this scenario proves.
    estimate = json.loads(guest.ssh("kdumpctl --json estimate").stdout)
    assert estimate["recommended_bytes"] >> 20 >= _mib(CLAIMED_LOCAL), estimate

    crash_and_wait(guest)

    dump = check_local_dump(guest, "/var/crash")
    meta = json.loads(guest.ssh(f"cat {dump}/kdumpd-metadata.json").stdout)
    assert meta["result"] == "success", meta
    # The agent said where the memory was just before makedumpfile started.
    assert meta["memory_before_collector"]["meminfo_kib"]["MemAvailable"] > 0, meta

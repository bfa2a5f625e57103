"""Arm, crash, capture on a real Debian 12 kernel: the default path target (/var/crash).

The guest installs the kdumpd .deb built from this tree with apt, arms kdump through
the unit, crashes with sysrq, and after the reboot the dump is read back with
makedumpfile, an independent reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from harness import Guest
from scenario import arm_guest, check_local_dump, crash_and_wait


def test_local_default_path(make_guest: Callable[..., Guest], kdumpd_deb: str) -> None:
    guest = make_guest()
    guest.start()
    guest.wait_for_ssh()
    arm_guest(guest, kdumpd_deb)

    crash_and_wait(guest)

    dump = check_local_dump(guest, "/var/crash")
    meta = json.loads(guest.ssh(f"cat {dump}/kdumpd-metadata.json").stdout)
    assert meta["result"] == "success", meta

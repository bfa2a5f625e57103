"""Arm, crash, capture to a dedicated ext4 disk named by UUID (``ext4 UUID=...``).

The admin's way: a second disk is formatted and mounted from /etc/fstab by UUID, the
package is installed (armed with the default /var/crash), then kdump.conf gets the
``ext4 UUID=<uuid>`` target and ``path /dumps`` and ``kdumpctl restart`` rebuilds the
capture image and re-arms. After the crash and reboot the dump is read back from that
disk with makedumpfile, and the root filesystem's /var/crash holds none.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from harness import Guest
from scenario import (
    CONF,
    arm_guest,
    crash_and_check_local,
    kdumpctl,
    make_ext4_disk,
)

MOUNT = "/mnt/dumps"


def test_dump_to_ext4_by_uuid(make_guest: Callable[..., Guest], kdumpd_deb: str) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    guest = make_guest()
    guest.create_disk("dumpdisk", "2G")
    guest.start()
    guest.wait_for_ssh()
    timings["boot"] = time.monotonic() - started

    uuid = make_ext4_disk(guest, "/dev/vdb", MOUNT)
    guest.ssh(f"mkdir -p {MOUNT}/dumps")

    began = time.monotonic()
    arm_guest(guest, kdumpd_deb)
    timings["install_and_arm"] = time.monotonic() - began

    # The admin edits the shipped file: the target line is added, path is changed,
    # core_collector stays as shipped.
    guest.ssh(f"sed -i 's|^path .*|path /dumps|' {CONF} && echo 'ext4 UUID={uuid}' >> {CONF}")
    began = time.monotonic()
    restarted = kdumpctl(guest, "restart")
    timings["restart_with_rebuild"] = time.monotonic() - began
    said = restarted.stdout + restarted.stderr
    assert restarted.returncode == 0, said
    assert "Starting kdump: [OK]" in said
    # The daemon may have rebuilt on the edit already (live reload) or the restart
    # did: either way the loaded image must carry the new target.
    plan = guest.ssh(
        "lsinitrd -f etc/kdumpd/plan.json /var/lib/kdumpd/initramfs-$(uname -r)kdump.img"
    )
    target = json.loads(plan.stdout)["target"]
    assert target["kind"] == "fs" and target["mount"]["device"].endswith(uuid), target
    assert guest.ssh("cat /sys/kernel/kexec_crash_loaded").stdout.strip() == "1"
    status = kdumpctl(guest, "status")
    assert status.returncode == 0 and "Kdump is operational" in status.stderr, status

    dump, meta = crash_and_check_local(guest, f"{MOUNT}/dumps", timings)

    # The fstab entry mounted the dump disk again at boot.
    source = guest.ssh(f"findmnt -n -o UUID {MOUNT}").stdout.strip()
    assert source == uuid, f"{MOUNT} is not the dump disk after the reboot ({source!r})"
    assert meta["target"]["kind"] == "fs", meta
    # The capture kernel wrote below its own mount point of the disk.
    assert meta["target"]["location"].endswith(dump.removeprefix(MOUNT)), meta
    on_root = guest.ssh("ls -A /var/crash 2>/dev/null", check=False).stdout.split()
    assert on_root == [], f"/var/crash on the root fs holds {on_root}"

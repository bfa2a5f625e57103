"""The raw target on a real kernel: a second virtio disk takes the flattened stream.

kdump.conf names the disk by its kernel name (/dev/vdb); the plan must carry its
persistent name (/dev/disk/by-id/virtio-kdumpraw, from the disk's serial). After the
crash the next boot's kdumpd start finds the stream, reassembles it into
/var/crash/127.0.0.1-<date>/vmcore with makedumpfile -R, checks it, and only then
erases the stream, so the device holds no pending dump and kdump is armed again.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from arming import arm_with_config, unit_log
from harness import Guest
from scenario import check_local_dump, crash_and_wait

SIGNATURE = "makedumpfile"  # the flattened stream's first bytes


def test_raw(make_guest: Callable[..., Guest], kdumpd_deb: str) -> None:
    guest = make_guest()
    guest.create_disk("raw", "3G", serial="kdumpraw")
    guest.start()
    guest.wait_for_ssh()
    conf = "raw /dev/vdb\ncore_collector makedumpfile -F -l --message-level 7 -d 31\n"
    arm_with_config(guest, kdumpd_deb, conf)
    plan = guest.ssh(
        "lsinitrd -f etc/kdumpd/plan.json /var/lib/kdumpd/initramfs-$(uname -r)kdump.img"
    )
    target = json.loads(plan.stdout)["target"]
    assert target == {"kind": "raw", "device": "/dev/disk/by-id/virtio-kdumpraw"}, target

    crash_and_wait(guest)

    # The boot's kdumpd start imports the dump before it arms again.
    guest.ssh("systemctl start kdumpd", check=False, timeout=1200)
    status = guest.ssh("kdumpctl status", check=False)
    assert status.returncode == 0, unit_log(guest)
    dump = check_local_dump(guest, "/var/crash")
    journal = unit_log(guest)
    assert f"Dump saved to {dump}/vmcore" in journal, journal
    head = guest.ssh("head -c 16 /dev/vdb | od -An -c").stdout
    assert SIGNATURE not in head.replace(" ", ""), head
    records = guest.ssh("cat /var/lib/kdumpd/raw-imports/*.json").stdout
    assert dump in records, records

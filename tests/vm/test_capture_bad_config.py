"""A broken kdump.conf never disarms a working capture kernel.

Armed with the shipped configuration, the admin breaks /etc/kdump.conf: ``kdumpctl
restart`` and ``kdumpctl reload`` both fail, name the file and line, and leave the
capture kernel loaded. A crash then still saves a dump under /var/crash with the
image built before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harness import Guest
from scenario import (
    CONF,
    arm_guest,
    crash_and_check_local,
    kdumpctl,
)

# The first two lines of a valid file; line 3 gets the mistake.
GOOD = "path /var/crash\ncore_collector makedumpfile -l --message-level 7 -d 31\n"
BAD_LINE = 3
# Name, size and mtime of the capture image(s).
IMAGE_STAT = "stat -c '%n %s %Y' /var/lib/kdumpd/*kdump.img"


def test_broken_config_keeps_the_capture_kernel(
    make_guest: Callable[..., Guest], kdumpd_deb: str
) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    guest = make_guest()
    guest.start()
    guest.wait_for_ssh()
    timings["boot"] = time.monotonic() - started
    began = time.monotonic()
    arm_guest(guest, kdumpd_deb)
    timings["install_and_arm"] = time.monotonic() - began
    image = guest.ssh(IMAGE_STAT).stdout
    assert "kdump.img" in image, image

    # restart meets a bad value, reload an unknown directive; both on line 3.
    for command, bad_line, expected in (
        ("restart", "failure_action explode", "Usage kdump.conf: failure_action {reboot|"),
        ("reload", "explode now", "Invalid kdump config option explode"),
    ):
        guest.ssh(f"printf '%s' '{GOOD}{bad_line}\n' > {CONF}")
        assert guest.ssh(f"sed -n {BAD_LINE}p {CONF}").stdout.strip() == bad_line
        result = kdumpctl(guest, command)
        said = result.stdout + result.stderr
        assert result.returncode != 0, f"kdumpctl {command} accepted a broken config:\n{said}"
        assert f"{CONF}:{BAD_LINE}: {expected}" in said, said
        assert "Starting kdump: [FAILED]" in said, said
        loaded = guest.ssh("cat /sys/kernel/kexec_crash_loaded").stdout.strip()
        assert loaded == "1", f"kdumpctl {command} disarmed kdump:\n{said}"
        status = kdumpctl(guest, "status")
        assert status.returncode == 0, status
        assert "Kdump is operational" in status.stderr, status

    # Nothing rebuilt or replaced the image the loaded kernel was built with.
    after = guest.ssh(IMAGE_STAT).stdout
    assert after == image, f"before:\n{image}\nafter:\n{after}"

    dump, meta = crash_and_check_local(guest, "/var/crash", timings)

    # The config is still broken after the reboot: arming at boot fails, loudly, and
    # names the line, rather than arming something the admin did not write.
    state = guest.ssh("systemctl is-failed kdumpd.service", check=False).stdout.strip()
    assert state == "failed", state
    journal = guest.ssh("journalctl -b -u kdump.service --no-pager").stdout
    assert f"{CONF}:{BAD_LINE}: Invalid kdump config option explode" in journal, journal

"""Arming a guest with a kdump.conf of the test's own, for the raw and ssh scenarios.

The package is installed with its unit held back (policy-rc.d), so that the first
start already sees the scenario's kdump.conf and the capture initramfs is built once.
"""

from __future__ import annotations

from harness import Guest


def unit_log(guest: Guest) -> str:
    """The kdumpd unit's journal of this boot, for failure messages."""
    return guest.ssh("journalctl -b -u kdump.service --no-pager | tail -n 80", check=False).stdout


def arm_with_config(guest: Guest, deb: str, conf: str) -> None:
    """Install the .deb, write /etc/kdump.conf, start kdumpd; fail with its log unless armed."""
    guest.copy_to(deb, "/tmp/kdumpd.deb")
    # policy-rc.d answering 101 keeps the package scripts from starting the unit.
    guest.ssh("printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d")
    guest.ssh("chmod 755 /usr/sbin/policy-rc.d")
    try:
        guest.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/kdumpd.deb", timeout=1200)
    finally:
        guest.ssh("rm -f /usr/sbin/policy-rc.d")
    guest.ssh(f"cat > /etc/kdump.conf <<'KDUMPD_EOF'\n{conf}KDUMPD_EOF")
    started = guest.ssh("systemctl enable --now kdumpd", check=False, timeout=1800)
    status = guest.ssh("kdumpctl status", check=False)
    assert (
        started.returncode == 0 and status.returncode == 0
    ), f"arming failed:\n{started.stderr}\n{unit_log(guest)}"
    assert guest.ssh("cat /sys/kernel/kexec_crash_loaded").stdout.strip() == "1"

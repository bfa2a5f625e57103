"""Smoke test of the VM harness: the guest boots, arms a crash kernel reservation, and
holds everything the kdumpd .deb needs; a crash reboots it into the same kernel."""

from __future__ import annotations

from collections.abc import Callable

from harness import Guest, GuestImage

MIB = 1024 * 1024


def test_guest_boots_with_crashkernel_and_kdumpd_runtime(
    make_guest: Callable[..., Guest], guest_image: GuestImage
) -> None:
    guest = make_guest(crashkernel="192M")
    guest.start()
    guest.wait_for_ssh()

    assert guest.ssh("uname -r").stdout.strip() == guest_image.kernel_release
    assert guest.ssh("hostname").stdout.strip() == "kdumpguest"
    cmdline = guest.ssh("cat /proc/cmdline").stdout.split()
    assert "crashkernel=192M" in cmdline
    crash_size = int(guest.ssh("cat /sys/kernel/kexec_crash_size").stdout)
    assert crash_size == 192 * MIB, f"reserved {crash_size} bytes, asked for 192M"

    guest.ssh('python3 -c "import dasbus, gi, systemd.journal, pyudev, jinja2"')
    # Debian's dracut 059 prints its version and exits 1.
    assert "dracut 0" in guest.ssh("dracut --version", check=False).stdout
    makedumpfile = guest.ssh("makedumpfile -v", check=False)
    assert "makedumpfile: version" in makedumpfile.stdout + makedumpfile.stderr
    # kexec-tools must not take over reboots (preseeded at build time).
    assert "LOAD_KEXEC=false" in guest.ssh("cat /etc/default/kexec").stdout
    root = guest.ssh("findmnt -n -o SOURCE,FSTYPE,OPTIONS /").stdout.split()
    assert root[:2] == ["/dev/vda", "ext4"] and "rw" in root[2].split(",")
    free_bytes = int(guest.ssh("df --output=avail -B1 /var/crash | tail -1").stdout)
    assert free_bytes > 3 * 1024 * MIB


def test_crash_reboots_into_the_same_kernel(make_guest: Callable[..., Guest]) -> None:
    # Without kdump armed, sysrq-c panics; panic=1 makes the kernel reset the machine,
    # and QEMU (no reboot suppression) boots the guest again.
    guest = make_guest(append=["panic=1"])
    guest.start()
    guest.wait_for_ssh()
    first_boot = guest.boot_id
    assert guest.kernel_starts() == 1

    guest.crash()
    second_boot = guest.wait_for_reboot(timeout=300)

    assert second_boot != first_boot
    assert guest.kernel_starts() == 2
    assert "sysrq: Trigger a crash" in guest.serial_text()
    # The crashed boot's journal survived (synced before the crash, persistent storage).
    boots = guest.ssh("journalctl --list-boots --no-pager").stdout.strip().splitlines()
    assert len(boots) >= 2, boots

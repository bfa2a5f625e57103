"""Steps shared by the capture scenarios: install and arm kdumpd, crash, check a dump."""

from __future__ import annotations

from harness import Guest

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

"""From ``apt install`` to armed, on a guest that boots through GRUB from its own disk.

One guest carries the four proofs of the installation story, in the order a machine
lives them:

1. The guest boots (GRUB, real ``update-grub`` config) without ``crashkernel=``.
   ``apt install ./kdumpd.deb`` sets it (GRUB drop-in + update-grub) and builds the
   capture image; after one reboot ``kdumpctl status`` is operational, nothing else done.
2. ``kdumpctl test --force`` crashes it; the dump is saved and, after the reboot,
   ``kdumpctl status`` reports that test's dump.
3. Another Debian kernel package, downloaded on the host with apt and copied in, is
   installed: its capture image is built during the apt run (kernel hook). After the
   reboot into it kdump is armed and the journal shows no dracut run at boot. Removing
   that kernel removes its image.
4. ``apt purge kdumpd`` leaves /etc/default/grub* and /boot/grub/grub.cfg as they were
   before the install.

Boot to armed with a prebuilt image is measured from systemd's own timestamps of
kdump.service (the daemon's start to its READY=1, which it sends once the capture
kernel is loaded) and printed/kept in timings.json.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from harness import VM_CACHE, Guest
from scenario import PANIC_LINE, record_timings

from kdumpd import proc

APT = "DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0"
DROP_IN = "/etc/default/grub.d/kdumpd.cfg"
BOOT_CONFIG = (
    "sha256sum /etc/default/grub /boot/grub/grub.cfg; ls -A /etc/default/grub.d 2>/dev/null"
)
_KERNEL_PACKAGE = re.compile(r"^linux-image-(6\.1\.0-(\d+)-amd64)$")


def reboot(guest: Guest) -> str:
    """A clean reboot (systemctl reboot); return the new boot id once the boot is done."""
    if not guest.boot_id:
        guest.boot_id = guest.read_boot_id()
    guest.ssh("nohup sh -c 'sleep 1; systemctl reboot' </dev/null >/dev/null 2>&1 &")
    return booted(guest, guest.wait_for_reboot(timeout=900))


def booted(guest: Guest, boot_id: str) -> str:
    """Wait until systemd has started every unit of this boot (sshd comes up earlier)."""
    guest.ssh("systemctl is-system-running --wait", check=False, timeout=900)
    return boot_id


def armed_in(guest: Guest) -> dict[str, float]:
    """The daemon's own time this boot (s), and when it was armed after the kernel start.

    kdump.service is Type=notify and sends READY=1 only once the capture kernel is
    loaded: the unit turns active at that moment.
    """
    show = guest.ssh(
        "systemctl show kdump.service -p ExecMainStartTimestampMonotonic "
        "-p ActiveEnterTimestampMonotonic"
    ).stdout
    fields = dict(line.split("=", 1) for line in show.split())
    start = int(fields["ExecMainStartTimestampMonotonic"])
    active = int(fields["ActiveEnterTimestampMonotonic"])
    assert 0 < start <= active, show
    return {"kdumpd_own": (active - start) / 1e6, "armed_after_kernel_start": active / 1e6}


def assert_operational(guest: Guest) -> None:
    status = guest.ssh("kdumpctl status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Kdump is operational" in status.stderr
    assert guest.ssh("cat /sys/kernel/kexec_crash_loaded").stdout.strip() == "1"


def no_dracut_this_boot(guest: Guest) -> str:
    """The boot's journal of the unit; the test asserts it holds no image build.

    The unit file is kdump.service (kdumpd.service is a symlink to it), and the
    journal knows it by that name only.
    """
    journal = guest.ssh("journalctl -b -u kdump.service --no-pager -o cat").stdout
    # Not empty: an empty journal would make "no dracut run" true of any boot.
    assert "Starting kdump: [OK]" in journal, journal
    return journal


def second_kernel_deb(guest_release: str) -> tuple[str, Path]:
    """A newer Debian 12 kernel package than the guest's, downloaded on the host with apt.

    Newer, so that GRUB boots it by default after its installation.
    """
    ours = _KERNEL_PACKAGE.match(f"linux-image-{guest_release}")
    assert ours, f"unexpected guest kernel {guest_release}"
    names = proc.run(["apt-cache", "pkgnames", "linux-image-6.1.0-"], timeout=120).stdout
    candidates = sorted(
        (int(m.group(2)), m.group(1))
        for m in map(_KERNEL_PACKAGE.match, names.split())
        if m and int(m.group(2)) > int(ours.group(2))
    )
    assert candidates, (
        f"the host's apt knows no 6.1 amd64 kernel newer than {guest_release}; "
        "enable bookworm-security or bookworm-updates on the host"
    )
    release = candidates[-1][1]
    where = VM_CACHE / "debs"
    where.mkdir(parents=True, exist_ok=True)
    for old in where.glob("linux-image-*.deb"):
        if release not in old.name:
            old.unlink()
    found = sorted(where.glob(f"linux-image-{release}_*.deb"))
    if not found:
        proc.run(["apt-get", "download", f"linux-image-{release}"], cwd=str(where), timeout=900)
        found = sorted(where.glob(f"linux-image-{release}_*.deb"))
    assert found, f"apt-get download linux-image-{release} left no .deb in {where}"
    return release, found[-1]


def test_install_to_armed_through_grub(make_guest: Callable[..., Guest], kdumpd_deb: str) -> None:
    guest = make_guest(boot="grub", crashkernel=None)
    guest.start()
    guest.wait_for_ssh()
    timings: dict[str, float] = {}
    old_release = guest.ssh("uname -r").stdout.strip()

    # The machine's real GRUB config, without crashkernel=: what "before" means.
    guest.ssh("update-grub", timeout=300)
    before = guest.ssh(BOOT_CONFIG).stdout
    assert "crashkernel" not in guest.ssh("cat /proc/cmdline").stdout
    assert "crashkernel" not in guest.ssh("cat /boot/grub/grub.cfg").stdout

    # 1. apt install: crashkernel= set, the image built, a reboot announced.
    guest.copy_to(kdumpd_deb, "/tmp/kdumpd.deb")
    install = guest.ssh(f"{APT} install -y /tmp/kdumpd.deb 2>&1", timeout=1500)
    assert "crashkernel=" in install.stdout and "reboot" in install.stdout, install.stdout
    assert "crashkernel=" in guest.ssh(f"cat {DROP_IN}").stdout
    grub_cfg = guest.ssh("grep -E '^\\s+linux\\s' /boot/grub/grub.cfg").stdout
    # GRUB_CMDLINE_LINUX_DEFAULT, like kdump-tools: recovery ("single") boots reserve nothing.
    normal = [line for line in grub_cfg.splitlines() if " single" not in line]
    assert normal and all("crashkernel=" in line for line in normal), grub_cfg
    guest.ssh(f"test -s /var/lib/kdumpd/initramfs-{old_release}kdump.img")
    status = guest.ssh("kdumpctl status", check=False)
    assert status.returncode == 3, status.stderr  # not armed before the reboot

    reboot(guest)
    assert "crashkernel=" in guest.ssh("cat /proc/cmdline").stdout
    assert_operational(guest)
    journal = no_dracut_this_boot(guest)
    assert "dracut" not in journal.lower() and "Rebuilding" not in journal, journal
    first = armed_in(guest)
    timings.update({f"first_boot_{k}": v for k, v in first.items()})

    # 2. kdumpctl test: a crash that saves a dump; the next status reports it.
    guest.ssh("journalctl --sync; sync", timeout=60)
    guest.ssh(
        "nohup sh -c 'sleep 1; kdumpctl test --force' </dev/null >/root/test.log 2>&1 &",
        timeout=60,
    )
    booted(guest, guest.wait_for_reboot(timeout=1500))
    status = guest.ssh("kdumpctl status", check=False)
    assert status.returncode == 0, status.stderr
    assert "Last successful vmcore creation test" in status.stderr, status.stderr
    dump = re.search(r"dump in (\S+)\)", status.stderr)
    assert dump, status.stderr
    guest.ssh(f"test -s {dump.group(1)}/vmcore")
    guest.ssh(f"makedumpfile --dump-dmesg {dump.group(1)}/vmcore /tmp/dmesg.txt", timeout=600)
    assert PANIC_LINE in guest.ssh("cat /tmp/dmesg.txt").stdout
    assert "kdump_test_id=" in guest.ssh(f"cat {dump.group(1)}/kexec-dmesg.log").stdout

    # 3. Another kernel: its image is built during apt; armed after booting into it.
    new_release, deb = second_kernel_deb(old_release)
    # The guest's own initrd for that kernel (initramfs-tools) with the modules of
    # this machine only: minutes less of mkinitramfs and of GRUB reading it under TCG.
    # It changes nothing kdumpd builds or checks.
    guest.ssh("echo MODULES=dep > /etc/initramfs-tools/conf.d/kdumpguest-speed")
    guest.copy_to(deb, "/tmp/linux-image.deb", timeout=900)
    kernel = guest.ssh(
        f"{APT} install -y --no-install-recommends /tmp/linux-image.deb 2>&1", timeout=2400
    )
    assert f"capture image for {new_release}" in kernel.stdout, kernel.stdout
    guest.ssh(f"test -s /var/lib/kdumpd/initramfs-{new_release}kdump.img")
    reboot(guest)
    assert guest.ssh("uname -r").stdout.strip() == new_release
    assert_operational(guest)
    journal = no_dracut_this_boot(guest)
    assert "dracut" not in journal.lower() and "Rebuilding" not in journal, journal
    second = armed_in(guest)
    timings.update({f"new_kernel_{k}": v for k, v in second.items()})
    record_timings(guest, timings)

    # Removing it removes its image. It is the running kernel: linux-base's
    # linux-check-removal does not ask under DEBIAN_FRONTEND=noninteractive, and the
    # answer is preseeded too so that the step never waits for a prompt.
    guest.ssh(
        "echo 'linux-base linux-base/removing-running-kernel boolean false' "
        "| debconf-set-selections"
    )
    guest.ssh(f"{APT} purge -y linux-image-{new_release} 2>&1", timeout=1200)
    guest.ssh(f"test ! -e /var/lib/kdumpd/initramfs-{new_release}kdump.img")
    guest.ssh(f"test ! -e /var/lib/kdumpd/initramfs-{new_release}kdump.manifest.json")
    guest.ssh(f"test -s /var/lib/kdumpd/initramfs-{old_release}kdump.img")

    # 4. purge: the boot configuration as it was before the install.
    guest.ssh(f"{APT} purge -y kdumpd 2>&1", timeout=900)
    assert guest.ssh(BOOT_CONFIG).stdout == before
    guest.ssh("test ! -e /var/lib/kdumpd")

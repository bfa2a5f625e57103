"""The demo behind tools/demo.sh: arm kdumpd in a guest, crash it, show what came home.

After the crash it shows the dump, its panic read back by makedumpfile (an
independent reader), the capture metadata, ``kdumpctl dumps``, the journal entry
and crash report the daemon wrote at the next boot, and the kernel log as
kdumpd's own reader extracts it.

Reuses the VM harness of the tests (tests/vm/harness.py): the guest image is built
from the repo (cached under .cache/vm), QEMU runs with user networking and only a
loopback ssh forward, KVM when guests boot under it here and TCG otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "vm"), str(REPO)]

from harness import Guest, choose_accel, ensure_image, fresh_artifacts  # noqa: E402

from kdumpd import proc  # noqa: E402

STARTED = time.monotonic()


def say(text: str) -> None:
    elapsed = int(time.monotonic() - STARTED)
    print(f"[demo {elapsed // 60:2d}:{elapsed % 60:02d}] {text}", flush=True)


def show(title: str, text: str) -> None:
    print(f"\n--- {title} " + "-" * max(0, 60 - len(title)))
    print(text.rstrip())
    print("-" * 65 + "\n", flush=True)


def main() -> int:
    say("building (or reusing) the Debian 12 guest image")
    image = ensure_image(on_line=say)
    accel = choose_accel(image, on_line=say)
    say("building the kdumpd .deb from this tree")
    deb = proc.run(["bash", str(REPO / "tools" / "build-deb.sh")], timeout=600)
    deb_path = deb.stdout.strip().splitlines()[-1]

    guest = Guest(image, fresh_artifacts("demo"), accel=accel, crashkernel="256M")
    with guest:
        say(f"booting the guest ({accel}, 2 GiB, crashkernel=256M)")
        guest.start()
        guest.wait_for_ssh()
        say("installing kdumpd with apt; the first start builds the capture initramfs")
        guest.copy_to(deb_path, "/tmp/kdumpd.deb")
        guest.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/kdumpd.deb", timeout=1200)
        guest.ssh("systemctl enable --now kdumpd", timeout=1200)
        status = guest.ssh("kdumpctl status; kdumpctl showmem", check=False)
        show("kdumpctl status", status.stderr)
        if status.returncode != 0:
            say("kdump is not operational in the guest; see " + guest.artefact_note())
            return 1
        unit = guest.ssh("systemctl show -p StatusText kdumpd", check=False).stdout
        show("the daemon's status line (systemctl show -p StatusText kdumpd)", unit)
        guest.ssh("echo 'kdumpd demo: crashing on purpose' > /dev/kmsg")

        say("crashing the guest kernel: echo c > /proc/sysrq-trigger")
        guest.crash()
        say("waiting for the capture kernel to save the dump and reboot")
        guest.wait_for_reboot(timeout=1200)
        say("the guest is back; waiting for kdumpd to re-arm and report the dump")
        guest.ssh("systemctl is-system-running --wait", check=False, timeout=900)

        listing = guest.ssh("ls -1d /var/crash/127.0.0.1-* | tail -1", check=False).stdout.strip()
        if not listing:
            say("no dump directory under /var/crash; see " + guest.artefact_note())
            return 1
        show(f"saved dump {listing}", guest.ssh(f"ls -l {listing}").stdout)
        guest.ssh(f"makedumpfile --dump-dmesg {listing}/vmcore /tmp/dmesg.txt", timeout=600)
        extracted = guest.ssh("cat /tmp/dmesg.txt").stdout
        panic = [line for line in extracted.splitlines() if "Kernel panic" in line]
        show("panic line read back from the vmcore (makedumpfile --dump-dmesg)", "\n".join(panic))
        meta = json.loads(guest.ssh(f"cat {listing}/kdumpd-metadata.json").stdout)
        steps = ", ".join(f"{s['name']} {s['seconds']:.1f}s" for s in meta.get("steps", []))
        show(
            "capture metadata",
            f"result: {meta.get('result')}\ncollector: {' '.join(meta['collector']['argv'])}\n"
            f"steps: {steps}",
        )
        show("kdumpctl dumps", guest.ssh("kdumpctl dumps", check=False).stdout)
        found = guest.ssh(
            "journalctl -b -u kdump.service -o cat --no-pager | grep 'crash dump saved'",
            check=False,
        ).stdout
        show("the journal at the next boot (journalctl -u kdump.service)", found)
        report = guest.ssh(f"cat {listing}/crash-report.txt", check=False)
        show(f"the crash report the daemon wrote ({listing}/crash-report.txt)", report.stdout)
        ours = guest.ssh(
            f"kdumpctl dmesg {listing} | grep -E 'kdumpd demo|sysrq: Trigger|Kernel panic'",
            check=False,
        ).stdout
        show("the last words of the kernel, by kdumpd's own reader (kdumpctl dmesg DUMP)", ours)
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

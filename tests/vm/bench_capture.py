#!/usr/bin/env python3
"""Benchmark of the capture environment: smallest working crashkernel=, capture time, image size.

Not a pytest test: a measurement run by hand (it holds a VM slot for 20-30 minutes under TCG)::

    tests/vm/bench_capture.py [--sizes 256M,192M,...] [--json out.json]
    tests/vm/bench_capture.py --analyze IMAGE      # only the image table, no guest

One guest (the harness's Debian 12 image, 2 GiB by default) gets the kdumpd .deb built
from this tree and builds its capture image once (the dracut build is timed with a
forced ``kdumpctl rebuild``). The image is copied out and measured here: compressed
size, unpacked size (the cpio's file bytes, and the RAM they take in the initramfs,
rounded up to pages), file count and the biggest directories.

Then, for every size, the same disk (one qcow2 overlay kept across guests) boots with
``crashkernel=SIZE``, waits until kdumpd has armed, and crashes with sysrq-c. The serial
log is polled: "panic" is the moment the panic line shows up, "reboot" the moment the
capture kernel prints ``reboot:`` (or a new kernel banner appears: a capture kernel
that panicked reboots after panic=10 without that line). The guest is stopped right
there, and the next size's boot reads the dump back: ``kdumpd-metadata.json`` says
whether the capture succeeded. A failure is classified from the capture kernel's part
of the serial log (OOM, initramfs unpack failure, kernel panic, agent failure, timeout).
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from harness import (  # noqa: E402
    Guest,
    GuestImage,
    choose_accel,
    ensure_image,
    fresh_artifacts,
)
from scenario import PANIC_LINE, arm_guest  # noqa: E402

from kdumpd import proc  # noqa: E402

DEFAULT_SIZES = "256M,192M,160M,128M,112M,96M"
CRASH_DIR = "/var/crash"
STATE_DIR = "/var/lib/kdumpd"
PAGE = 4096

CAPTURE_END = re.compile(
    r"^\[ *([0-9.]+)\] reboot: (?:Restarting system|Power down|System halted)", re.M
)
BANNER = re.compile(r"^(?:\[[ 0-9.]+\] )?Linux version \S+", re.M)
MEMORY_LINE = re.compile(r"\] Memory: (\d+)K/(\d+)K available")
FREEING_INITRD = re.compile(r"\] Freeing initrd memory: (\d+)K")
FAILURE_SIGNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("OOM", re.compile(r"Out of memory|invoked oom-killer|System is deadlocked on memory")),
    ("killed", re.compile(r"Out of memory: Killed process \d+ \(([^)]+)\)")),
    ("initramfs unpack failed", re.compile(r"Initramfs unpacking failed[^\n]*")),
    ("kernel panic", re.compile(r"Kernel panic - not syncing: [^\n]*")),
    ("agent failed", re.compile(r"kdumpd error handler[^\n]*|internal error in the capture agent")),
)


# -- the image -----------------------------------------------------------------------


@dataclass
class ImageFacts:
    """What one capture initramfs holds."""

    compressed: int
    compression: str
    unpacked: int
    unpacked_pages: int
    files: int
    biggest: list[tuple[str, int]] = field(default_factory=list)


def _payload(data: bytes) -> tuple[str, bytes]:
    """Skip an uncompressed early cpio (microcode) and name the compression of the rest."""
    offset = 0
    if data.startswith(b"070701"):
        offset = _cpio_end(data)
        while offset < len(data) and data[offset] == 0:
            offset += 1
    rest = data[offset:]
    if rest.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd", rest
    if rest.startswith(b"\xfd7zXZ"):
        return "xz", rest
    if rest.startswith(b"\x1f\x8b"):
        return "gzip", rest
    if rest.startswith(b"070701"):
        return "none", rest
    return "unknown", rest


def _decompress(kind: str, blob: bytes) -> bytes:
    if kind == "none":
        return blob
    if kind == "gzip":
        return gzip.decompress(blob)
    if kind == "xz":
        return lzma.decompress(blob)
    if kind == "zstd":
        with tempfile.TemporaryDirectory() as tmp:
            packed, plain = Path(tmp) / "in.zst", Path(tmp) / "out"
            packed.write_bytes(blob)
            proc.run(["zstd", "-q", "-d", "-f", "-o", str(plain), str(packed)], timeout=300)
            return plain.read_bytes()
    raise ValueError(f"cannot decompress an image compressed with {kind}")


def _cpio_entries(data: bytes) -> list[tuple[str, int, int]]:
    """(name, mode, size) of every entry of a newc cpio archive."""
    entries: list[tuple[str, int, int]] = []
    offset = 0
    while offset + 110 <= len(data):
        header = data[offset : offset + 110]
        if header[:6] not in (b"070701", b"070702"):
            break
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = offset + 110
        name = data[name_start : name_start + namesize - 1].decode(errors="replace")
        offset = (name_start + namesize + 3) & ~3
        offset = (offset + size + 3) & ~3
        if name == "TRAILER!!!":
            break
        entries.append((name, mode, size))
    return entries


def _cpio_end(data: bytes) -> int:
    offset = 0
    while offset + 110 <= len(data) and data[offset : offset + 6] in (b"070701", b"070702"):
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name = data[offset + 110 : offset + 110 + namesize - 1]
        offset = (offset + 110 + namesize + 3) & ~3
        offset = (offset + size + 3) & ~3
        if name == b"TRAILER!!!":
            break
    return offset


def analyze_image(path: Path, *, top: int = 15) -> ImageFacts:
    """Sizes and the biggest directories of an initramfs file."""
    data = path.read_bytes()
    kind, blob = _payload(data)
    entries = _cpio_entries(_decompress(kind, blob))
    regular = [(name, size) for name, mode, size in entries if mode & 0o170000 == 0o100000]
    by_dir: dict[str, int] = defaultdict(int)
    for name, size in regular:
        parts = name.lstrip("./").split("/")
        key = "/".join(parts[:3]) if len(parts) > 3 else "/".join(parts[:-1]) or parts[0]
        by_dir["/" + key] += size
    biggest = sorted(by_dir.items(), key=lambda kv: -kv[1])[:top]
    return ImageFacts(
        compressed=len(data),
        compression=kind,
        unpacked=sum(size for _name, size in regular),
        unpacked_pages=sum((size + PAGE - 1) // PAGE * PAGE for _name, size in regular),
        files=len(entries),
        biggest=biggest,
    )


# -- one capture ------------------------------------------------------------------------


@dataclass
class Attempt:
    """One crash at one crashkernel= size."""

    size: str
    armed: bool = False
    outcome: str = "not run"
    reason: str = ""
    panic_to_reboot: float | None = None
    capture_uptime: float | None = None
    agent_seconds: float | None = None
    mem_available_kib: int | None = None
    mem_total_kib: int | None = None
    initrd_kib: int | None = None
    dump_dir: str = ""
    arm_note: str = ""


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f}"


def _dump_dirs(guest: Guest) -> list[str]:
    listing = guest.ssh(f"ls -1d {CRASH_DIR}/127.0.0.1-* 2>/dev/null", check=False).stdout
    return sorted(listing.split())


def read_back(guest: Guest, attempt: Attempt, before: list[str]) -> None:
    """Judge ``attempt`` by the dump directory it left (if any) on the guest's disk."""
    new = [d for d in _dump_dirs(guest) if d not in before]
    if not new:
        if attempt.outcome == "captured?":
            attempt.outcome = "FAIL"
            attempt.reason = attempt.reason or "no dump directory"
        return
    attempt.dump_dir = new[-1]
    meta_text = guest.ssh(f"cat {new[-1]}/kdumpd-metadata.json", check=False).stdout
    files = guest.ssh(f"ls {new[-1]}", check=False).stdout.split()
    try:
        meta = json.loads(meta_text)
    except ValueError:
        meta = {}
    steps = meta.get("steps", [])
    if steps:
        attempt.agent_seconds = round(sum(float(s.get("seconds", 0)) for s in steps), 2)
    dmesg = guest.ssh(f"cat {new[-1]}/vmcore-dmesg.txt", check=False).stdout
    ok = meta.get("result") == "success" and "vmcore" in files and PANIC_LINE in dmesg
    if ok:
        attempt.outcome = "ok"
        attempt.reason = ""
    else:
        attempt.outcome = "FAIL"
        attempt.reason = attempt.reason or f"metadata result {meta.get('result')!r}, files {files}"


def wait_armed(guest: Guest, timeout: float) -> tuple[bool, str]:
    """Wait until kdumpd has loaded the capture kernel after boot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loaded = guest.ssh("cat /sys/kernel/kexec_crash_loaded", check=False).stdout.strip()
        if loaded == "1":
            return True, ""
        state = guest.ssh("systemctl is-active kdumpd", check=False).stdout.strip()
        if state == "failed":
            break
        time.sleep(3)
    status = guest.ssh(
        "kdumpctl status; journalctl -b -u kdump.service --no-pager | tail -5", check=False
    )
    return False, (status.stdout + status.stderr).strip().replace("\n", " | ")[-300:]


def crash_and_watch(guest: Guest, attempt: Attempt, timeout: float) -> None:
    """Crash, time panic -> capture kernel's reboot from the serial log, classify."""
    mark = guest.serial_mark()
    guest.crash()
    panic_at = None
    deadline = time.monotonic() + timeout
    end_at = None
    while time.monotonic() < deadline:
        text = guest.serial_text()[mark:]
        if panic_at is None and PANIC_LINE in text:
            panic_at = time.monotonic()
        if panic_at is not None:
            after = text[text.index(PANIC_LINE) :]
            banners = list(BANNER.finditer(after))
            capture = after[banners[0].start() :] if banners else ""
            if CAPTURE_END.search(capture) or len(banners) >= 2:
                end_at = time.monotonic()
                break
        if not guest.running():
            break
        time.sleep(0.2)
    text = guest.serial_text()[mark:]
    if panic_at is None:
        attempt.outcome, attempt.reason = "FAIL", "no panic line on the serial console"
        return
    after = text[text.index(PANIC_LINE) :]
    banners = list(BANNER.finditer(after))
    capture = after[banners[0].start() : banners[1].start() if len(banners) > 1 else None]
    if not banners:
        capture = after
    if (memory := MEMORY_LINE.search(capture)) is not None:
        attempt.mem_available_kib, attempt.mem_total_kib = int(memory[1]), int(memory[2])
    if (freeing := FREEING_INITRD.search(capture)) is not None:
        attempt.initrd_kib = int(freeing[1])
    if (end := CAPTURE_END.search(capture)) is not None:
        attempt.capture_uptime = float(end[1])
    signs = []
    for label, pattern in FAILURE_SIGNS:
        found = pattern.search(capture)
        if found is not None:
            if label == "kernel panic":
                signs.append(found[0].split(": ", 1)[-1][:60])
            elif label == "killed":
                signs.append(f"{found[1]} killed")
            else:
                signs.append(label)
    if end_at is None:
        attempt.outcome = "FAIL"
        attempt.reason = "; ".join(["timeout", *signs])
        return
    attempt.panic_to_reboot = round(end_at - panic_at, 1)
    attempt.outcome = "captured?"
    attempt.reason = "; ".join(signs)


# -- the run --------------------------------------------------------------------------


@dataclass
class Run:
    accel: str
    memory: str
    image: ImageFacts | None = None
    dracut_seconds: float | None = None
    attempts: list[Attempt] = field(default_factory=list)


def _guest(image: GuestImage, accel: str, where: Path, overlay: Path, **options: object) -> Guest:
    guest = Guest(image, where, accel=accel, keep_overlay=True, **options)  # type: ignore[arg-type]
    guest.overlay = overlay
    return guest


def build_deb() -> str:
    built = proc.run(["bash", str(HERE.parents[1] / "tools" / "build-deb.sh")], timeout=900)
    return built.stdout.strip().splitlines()[-1]


def measure(args: argparse.Namespace) -> Run:
    say = print
    image = ensure_image(on_line=say)
    accel = choose_accel(image, on_line=say)
    deb = args.deb or build_deb()
    root = fresh_artifacts(args.name)
    overlay = root / "root-overlay.qcow2"
    run = Run(accel=accel, memory=args.memory)

    setup = _guest(image, accel, root / "setup", overlay, memory=args.memory, crashkernel="256M")
    try:
        setup.start()
        setup.wait_for_ssh()
        say("installing kdumpd and building the capture image (first build)")
        arm_guest(setup, deb)
        kver = setup.ssh("uname -r").stdout.strip()
        say("timing a forced rebuild: kdumpctl rebuild")
        started = time.monotonic()
        setup.ssh("kdumpctl rebuild", timeout=1200)
        run.dracut_seconds = round(time.monotonic() - started, 1)
        local = root / "initramfs-kdump.img"
        setup.copy_from(f"{STATE_DIR}/initramfs-{kver}kdump.img", local)
        run.image = analyze_image(local)
        print_image(run)
    finally:
        setup.stop()

    before: list[str] = []
    pending: Attempt | None = None
    for size in args.sizes.split(","):
        attempt = Attempt(size=size)
        run.attempts.append(attempt)
        guest = _guest(image, accel, root / size, overlay, memory=args.memory, crashkernel=size)
        try:
            guest.start()
            guest.wait_for_ssh()
            if pending is not None:
                read_back(guest, pending, before)
                say(f"  {pending.size}: {pending.outcome} {pending.reason}")
            before = _dump_dirs(guest)
            attempt.armed, attempt.arm_note = wait_armed(guest, args.arm_timeout)
            if not attempt.armed:
                attempt.outcome, attempt.reason = "FAIL", f"not armed: {attempt.arm_note}"
                pending = None
                say(f"  {size}: {attempt.reason}")
                continue
            say(f"crashkernel={size}: crashing")
            crash_and_watch(guest, attempt, args.capture_timeout)
            pending = attempt
        finally:
            guest.stop()
    if pending is not None:
        guest = _guest(image, accel, root / "readback", overlay, memory=args.memory)
        try:
            guest.start()
            guest.wait_for_ssh()
            read_back(guest, pending, before)
        finally:
            guest.stop()
    overlay.unlink(missing_ok=True)
    return run


# -- output ---------------------------------------------------------------------------------


def print_image(run: Run) -> None:
    facts = run.image
    if facts is None:
        return
    print(
        f"capture image: {_mib(facts.compressed)} MiB {facts.compression}, "
        f"unpacked {_mib(facts.unpacked)} MiB in {facts.files} entries "
        f"({_mib(facts.unpacked_pages)} MiB of pages in the initramfs)"
        + (f"; dracut build {run.dracut_seconds} s" if run.dracut_seconds is not None else "")
    )
    print("biggest directories (MiB):")
    for name, size in facts.biggest:
        print(f"  {_mib(size):>6}  {name}")


def print_table(run: Run) -> None:
    print(f"\nguest: {run.memory}, 1 vCPU, {run.accel}")
    header = (
        f"{'crashkernel':>11}  {'result':<6} {'panic->reboot s':>15} {'capture-kernel s':>16} "
        f"{'agent s':>7} {'MemAvail/Total MiB':>18}  why"
    )
    print(header)
    print("-" * len(header))
    for a in run.attempts:
        mem = (
            f"{a.mem_available_kib // 1024}/{a.mem_total_kib // 1024}"
            if a.mem_available_kib is not None and a.mem_total_kib is not None
            else "-"
        )

        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        print(
            f"{a.size:>11}  {a.outcome:<6} {num(a.panic_to_reboot):>15} "
            f"{num(a.capture_uptime):>16} {num(a.agent_seconds):>7} {mem:>18}  {a.reason}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"default {DEFAULT_SIZES}")
    parser.add_argument("--memory", default="2048M", help="guest RAM (default 2048M)")
    parser.add_argument("--deb", help="a built kdumpd .deb (default: build one from this tree)")
    parser.add_argument("--capture-timeout", type=float, default=300.0)
    parser.add_argument("--arm-timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--name", default="bench_capture", help="artefact directory under .cache/vm/artifacts"
    )
    parser.add_argument("--analyze", type=Path, help="only measure this initramfs file")
    args = parser.parse_args(argv)
    if args.analyze:
        run = Run(accel="-", memory="-", image=analyze_image(args.analyze))
        print_image(run)
        return 0
    run = measure(args)
    print_image(run)
    print_table(run)
    if args.json:
        args.json.write_text(json.dumps(asdict(run), indent=2) + "\n")
    return 0 if any(a.outcome == "ok" for a in run.attempts) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark of the capture environment: smallest working crashkernel=, capture time, image size.

Not a pytest test: a measurement run by hand (it holds a VM slot for 40-60 minutes under TCG)::

    tests/vm/bench_capture.py [--sizes 256M,192M,...] [--systems kdumpd,kdump-tools]
                              [--json out.json]
    tests/vm/bench_capture.py --analyze IMAGE      # only the image table, no guest

Two systems are measured in one invocation, at the same sizes, in guests of the same
image: kdumpd (the .deb built from this tree) and Debian's kdump-tools (its .debs, from
Debian's archive, fetched on this machine with ``apt-get download`` and copied in: the
guest has no network). kdump-tools runs as Debian ships it, except that MAKEDUMP_ARGS
is set to kdumpd's default collector (``-l -d 31``) so both write the same dump.

For each system one guest (the harness's Debian 12 image, 2 GiB by default) installs
it and builds its capture image once (timed: a forced ``kdumpctl rebuild``, or
kdump-tools' initramfs hook). The image is copied out and measured here: compressed
size, unpacked size (the cpio's file bytes, and the RAM they take in the initramfs,
rounded up to pages), file count and the biggest directories.

Then, for every size, the same disk (one qcow2 overlay kept across guests) boots with
``crashkernel=SIZE``, waits until kdumpd has armed, and crashes with sysrq-c. The serial
log is polled: "panic" is the moment the panic line shows up, "reboot" the moment the
capture kernel prints ``reboot:`` (or a new kernel banner appears: a capture kernel
that panicked reboots after panic=10 without that line). The guest is stopped right
there, and the next size's boot reads the dump back: ``kdumpd-metadata.json`` says
whether kdumpd's capture succeeded (and holds the agent's memory report taken just
before makedumpfile starts); for kdump-tools the dump file and its dmesg file must
both be there, the dmesg holding the panic, and a drop-in of kdump-tools-dump.service
logs MemAvailable to the kernel log before the dump starts. A failure is classified from
the capture kernel's part of the serial log (OOM, initramfs unpack failure, kernel panic,
agent failure, timeout).
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
from collections.abc import Callable
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

#: The capture kernel's last line: systemd's reboot, or the kernel's own (kdumpd's small init).
CAPTURE_END = re.compile(
    r"^\[ *([0-9.]+)\] (?:reboot: (?:Restarting system|Power down|System halted)"
    r"|sysrq: (?:Resetting|Power Off))",
    re.M,
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


# -- the two systems --------------------------------------------------------------------

#: Debian's kdump-tools and what it needs beyond the guest image's packages.
KDUMP_TOOLS_DEBS: tuple[str, ...] = (
    "kdump-tools",
    "busybox",
    "file",
    "libmagic1",
    "libmagic-mgc",
    "bsdextrautils",
    "bsdmainutils",
    "ncal",
    "linux-base",
)
#: Where the .debs are kept on this machine between runs (under the repository).
DEB_CACHE = HERE.parents[1] / ".cache" / "bench-debs"
#: Logs MemAvailable to the kernel log in kdump-tools' capture boot, before the dump.
KDUMP_TOOLS_MEMINFO = """#!/bin/sh
awk '/^MemAvailable:/ {a=$2} /^MemTotal:/ {t=$2} /^Shmem:/ {s=$2}
     END {printf "bench: kdump-tools memory: MemTotal %.1f MiB, ", t/1024;
          printf "MemAvailable %.1f MiB, Shmem %.1f MiB\\n", a/1024, s/1024}' \\
    /proc/meminfo >/dev/kmsg
"""
KDUMP_TOOLS_DROPIN = """[Service]
ExecStartPre=-/usr/local/sbin/bench-meminfo
"""
MEMORY_REPORT = re.compile(r"(?:kdumpd:|bench: kdump-tools) memory: ([^\n]*)")
MEM_AVAILABLE = re.compile(r"MemAvailable ([0-9.]+) MiB")


@dataclass
class Attempt:
    """One crash at one crashkernel= size."""

    system: str
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
    before_dump_available_mib: float | None = None
    memory_report: str = ""
    dump_bytes: int | None = None
    dump_dir: str = ""
    arm_note: str = ""


class KdumpdSystem:
    """kdumpd from this tree's .deb."""

    name = "kdumpd"
    service = "kdump.service"  # kdumpd.service is a symlink to it

    def __init__(self, deb: str, *, time_build: bool = False) -> None:
        self.deb = deb
        self.time_build = time_build
        #: kdumpctl estimate's estimated and recommended sizes (MiB) after the build.
        self.estimate_mib: tuple[int, int] | None = None

    def install(self, guest: Guest, say: Callable[[str], None]) -> tuple[str, float | None]:
        """Install, arm (time a forced rebuild if asked); return the image's path in the guest."""
        say("kdumpd: installing and building the capture image (first build)")
        arm_guest(guest, self.deb)
        kver = guest.ssh("uname -r").stdout.strip()
        seconds = None
        if self.time_build:
            say("kdumpd: timing a forced rebuild: kdumpctl rebuild")
            started = time.monotonic()
            guest.ssh("kdumpctl rebuild", timeout=1200)
            seconds = round(time.monotonic() - started, 1)
        # What kdumpctl estimate recommends for this image, to set beside what worked.
        estimate = guest.ssh("kdumpctl --json estimate", check=False)
        try:
            found = json.loads(estimate.stdout)
            self.estimate_mib = (
                found["estimated_bytes"] >> 20,
                found["recommended_bytes"] >> 20,
            )
        except (ValueError, KeyError, TypeError):
            say(f"kdumpd: kdumpctl estimate said: {estimate.stdout} {estimate.stderr}")
        return f"{STATE_DIR}/initramfs-{kver}kdump.img", seconds

    def dump_dirs(self, guest: Guest) -> list[str]:
        listing = guest.ssh(f"ls -1d {CRASH_DIR}/127.0.0.1-* 2>/dev/null", check=False).stdout
        return sorted(listing.split())

    def judge(self, guest: Guest, attempt: Attempt, where: str) -> tuple[bool, str]:
        meta_text = guest.ssh(f"cat {where}/kdumpd-metadata.json", check=False).stdout
        files = guest.ssh(f"ls {where}", check=False).stdout.split()
        try:
            meta = json.loads(meta_text)
        except ValueError:
            meta = {}
        steps = meta.get("steps", [])
        if steps:
            attempt.agent_seconds = round(sum(float(s.get("seconds", 0)) for s in steps), 2)
        size = guest.ssh(f"stat -c %s {where}/vmcore", check=False).stdout.strip()
        attempt.dump_bytes = int(size) if size.isdigit() else None
        dmesg = guest.ssh(f"cat {where}/vmcore-dmesg.txt", check=False).stdout
        ok = meta.get("result") == "success" and "vmcore" in files and PANIC_LINE in dmesg
        return ok, f"metadata result {meta.get('result')!r}, files {files}"


class KdumpToolsSystem:
    """Debian's kdump-tools, from Debian's archive, as Debian configures it."""

    name = "kdump-tools"
    service = "kdump-tools"

    def __init__(self, debs: list[Path], *, time_build: bool = False) -> None:
        self.debs = debs
        self.time_build = time_build

    def install(self, guest: Guest, say: Callable[[str], None]) -> tuple[str, float | None]:
        say("kdump-tools: installing " + " ".join(d.name for d in self.debs))
        guest.ssh(
            "rm -rf /tmp/kt && mkdir /tmp/kt " "/etc/systemd/system/kdump-tools-dump.service.d"
        )
        for deb in self.debs:
            guest.copy_to(deb, f"/tmp/kt/{deb.name}")
        guest.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/kt/*.deb", timeout=1200)
        # The same dump as kdumpd's default collector writes (Debian's default is -c).
        guest.ssh(
            "sed -i -e 's/^#*USE_KDUMP=.*/USE_KDUMP=1/' "
            "-e 's/^#*MAKEDUMP_ARGS=.*/MAKEDUMP_ARGS=\"-l -d 31\"/' /etc/default/kdump-tools"
            " && grep -q '^MAKEDUMP_ARGS=' /etc/default/kdump-tools"
            " || echo 'MAKEDUMP_ARGS=\"-l -d 31\"' >> /etc/default/kdump-tools"
        )
        with tempfile.TemporaryDirectory() as tmp:
            script, dropin = Path(tmp) / "bench-meminfo", Path(tmp) / "bench.conf"
            script.write_text(KDUMP_TOOLS_MEMINFO)
            dropin.write_text(KDUMP_TOOLS_DROPIN)
            guest.copy_to(script, "/usr/local/sbin/bench-meminfo")
            guest.copy_to(dropin, "/etc/systemd/system/kdump-tools-dump.service.d/bench.conf")
        guest.ssh("chmod 0755 /usr/local/sbin/bench-meminfo && systemctl daemon-reload")
        kver = guest.ssh("uname -r").stdout.strip()
        seconds = None
        if self.time_build:
            # The package's postinst built the image already; this times a second build.
            say("kdump-tools: timing its image build: the kernel postinst hook")
            guest.ssh("kdump-config unload; rm -f /var/lib/kdump/initrd.img-*", check=False)
            started = time.monotonic()
            guest.ssh(f"/etc/kernel/postinst.d/kdump-tools {kver}", timeout=1200)
            seconds = round(time.monotonic() - started, 1)
        guest.ssh("systemctl enable kdump-tools && systemctl restart kdump-tools", timeout=600)
        loaded = guest.ssh("cat /sys/kernel/kexec_crash_loaded").stdout.strip()
        if loaded != "1":
            show = guest.ssh("kdump-config show", check=False)
            raise RuntimeError(f"kdump-tools did not load: {show.stdout} {show.stderr}")
        return f"/var/lib/kdump/initrd.img-{kver}", seconds

    def dump_dirs(self, guest: Guest) -> list[str]:
        # KDUMP_COREDIR/<YYYYMMDDHHMM>/ with dump.<stamp> and dmesg.<stamp>
        listing = guest.ssh(f"ls -1d {CRASH_DIR}/2???????????/ 2>/dev/null", check=False)
        return sorted(d.rstrip("/") for d in listing.stdout.split())

    def judge(self, guest: Guest, attempt: Attempt, where: str) -> tuple[bool, str]:
        files = guest.ssh(f"ls {where}", check=False).stdout.split()
        dumps = [f for f in files if f.startswith("dump.")]
        dmesgs = [f for f in files if f.startswith("dmesg.")]
        if dumps:
            size = guest.ssh(f"stat -c %s {where}/{dumps[0]}", check=False).stdout.strip()
            attempt.dump_bytes = int(size) if size.isdigit() else None
        dmesg = guest.ssh(f"cat {where}/{dmesgs[0]}", check=False).stdout if dmesgs else ""
        ok = bool(dumps) and bool(attempt.dump_bytes) and PANIC_LINE in dmesg
        return ok, f"files {files}"


System = KdumpdSystem | KdumpToolsSystem


def kdump_tools_debs(say: Callable[[str], None]) -> list[Path]:
    """Debian's kdump-tools and its missing dependencies, downloaded once into DEB_CACHE."""
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_", 1)[0] for p in DEB_CACHE.glob("*.deb")}
    missing = [name for name in KDUMP_TOOLS_DEBS if name not in have]
    if missing:
        say("downloading " + " ".join(missing) + " with apt-get download")
        proc.run(["apt-get", "download", *missing], cwd=str(DEB_CACHE), timeout=600)
    return sorted(p for p in DEB_CACHE.glob("*.deb") if p.name.split("_", 1)[0] in KDUMP_TOOLS_DEBS)


# -- one capture ------------------------------------------------------------------------


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f}"


def read_back(guest: Guest, system: System, attempt: Attempt, before: list[str]) -> None:
    """Judge ``attempt`` by the dump directory it left (if any) on the guest's disk."""
    new = [d for d in system.dump_dirs(guest) if d not in before]
    if not new:
        if attempt.outcome == "captured?":
            attempt.outcome = "FAIL"
            attempt.reason = attempt.reason or "no dump directory"
        return
    attempt.dump_dir = new[-1]
    ok, why = system.judge(guest, attempt, new[-1])
    if ok:
        attempt.outcome = "ok"
        attempt.reason = ""
    else:
        attempt.outcome = "FAIL"
        attempt.reason = attempt.reason or why


def wait_armed(guest: Guest, service: str, timeout: float) -> tuple[bool, str]:
    """Wait until the service has loaded the capture kernel after boot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loaded = guest.ssh("cat /sys/kernel/kexec_crash_loaded", check=False).stdout.strip()
        if loaded == "1":
            return True, ""
        state = guest.ssh(f"systemctl is-active {service}", check=False).stdout.strip()
        if state == "failed":
            break
        time.sleep(3)
    status = guest.ssh(
        f"systemctl status {service} --no-pager | tail -5; "
        f"journalctl -b -u {service} --no-pager | tail -5",
        check=False,
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
    if (report := MEMORY_REPORT.search(capture)) is not None:
        attempt.memory_report = report[1].strip()
        if (available := MEM_AVAILABLE.search(report[1])) is not None:
            attempt.before_dump_available_mib = float(available[1])
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
class SystemRun:
    system: str
    image: ImageFacts | None = None
    build_seconds: float | None = None
    estimate_mib: tuple[int, int] | None = None
    attempts: list[Attempt] = field(default_factory=list)
    error: str = ""


@dataclass
class Run:
    accel: str
    memory: str
    systems: list[SystemRun] = field(default_factory=list)


def _guest(image: GuestImage, accel: str, where: Path, overlay: Path, **options: object) -> Guest:
    guest = Guest(image, where, accel=accel, keep_overlay=True, **options)  # type: ignore[arg-type]
    guest.overlay = overlay
    return guest


def build_deb() -> str:
    built = proc.run(["bash", str(HERE.parents[1] / "tools" / "build-deb.sh")], timeout=900)
    return built.stdout.strip().splitlines()[-1]


def measure_system(
    system: System, args: argparse.Namespace, image: GuestImage, accel: str, root: Path
) -> SystemRun:
    """Install ``system`` in a fresh guest, then crash it once per size."""
    say = print
    where = root / system.name
    overlay = where / "root-overlay.qcow2"
    result = SystemRun(system=system.name)
    setup = _guest(image, accel, where / "setup", overlay, memory=args.memory, crashkernel="256M")
    try:
        setup.start()
        setup.wait_for_ssh()
        path, result.build_seconds = system.install(setup, say)
        if isinstance(system, KdumpdSystem) and system.estimate_mib is not None:
            result.estimate_mib = system.estimate_mib
            say(
                f"kdumpctl estimate: estimated {system.estimate_mib[0]}M, "
                f"recommended {system.estimate_mib[1]}M"
            )
        local = where / "capture-image.img"
        setup.copy_from(path, local)
        result.image = analyze_image(local)
        print_image(system.name, result)
    finally:
        setup.stop()

    before: list[str] = []
    pending: Attempt | None = None
    for size in args.sizes.split(","):
        attempt = Attempt(system=system.name, size=size)
        result.attempts.append(attempt)
        guest = _guest(image, accel, where / size, overlay, memory=args.memory, crashkernel=size)
        try:
            guest.start()
            guest.wait_for_ssh()
            if pending is not None:
                read_back(guest, system, pending, before)
                say(f"  {system.name} {pending.size}: {pending.outcome} {pending.reason}")
            before = system.dump_dirs(guest)
            attempt.armed, attempt.arm_note = wait_armed(guest, system.service, args.arm_timeout)
            if not attempt.armed:
                attempt.outcome, attempt.reason = "FAIL", f"not armed: {attempt.arm_note}"
                pending = None
                say(f"  {system.name} {size}: {attempt.reason}")
                continue
            say(f"{system.name} crashkernel={size}: crashing")
            crash_and_watch(guest, attempt, args.capture_timeout)
            pending = attempt
        finally:
            guest.stop()
    if pending is not None:
        guest = _guest(image, accel, where / "readback", overlay, memory=args.memory)
        try:
            guest.start()
            guest.wait_for_ssh()
            read_back(guest, system, pending, before)
            say(f"  {system.name} {pending.size}: {pending.outcome} {pending.reason}")
        finally:
            guest.stop()
    overlay.unlink(missing_ok=True)
    return result


def measure(args: argparse.Namespace) -> Run:
    say = print
    names = args.systems.split(",")
    unknown = [n for n in names if n not in ("kdumpd", "kdump-tools")]
    if unknown:
        raise SystemExit(f"--systems: unknown {', '.join(unknown)}; use kdumpd and kdump-tools")
    image = ensure_image(on_line=say)
    accel = choose_accel(image, on_line=say)
    systems: list[System] = []
    for name in names:
        if name == "kdumpd":
            systems.append(KdumpdSystem(args.deb or build_deb(), time_build=args.time_build))
        else:
            systems.append(KdumpToolsSystem(kdump_tools_debs(say), time_build=args.time_build))
    root = fresh_artifacts(args.name)
    run = Run(accel=accel, memory=args.memory)
    for system in systems:
        try:
            run.systems.append(measure_system(system, args, image, accel, root))
        except Exception as exc:  # one system's broken set-up must not cost the other's figures
            say(f"{system.name}: the measurement stopped: {exc}")
            run.systems.append(SystemRun(system=system.name, error=str(exc)[-2000:]))
        if args.json:
            # Saved after every system: a long run that stops early keeps what it measured.
            args.json.write_text(json.dumps(asdict(run), indent=2) + "\n")
    return run


# -- output ---------------------------------------------------------------------------------


def print_image(name: str, result: SystemRun) -> None:
    facts = result.image
    if facts is None:
        return
    print(
        f"{name} capture image: {_mib(facts.compressed)} MiB {facts.compression}, "
        f"unpacked {_mib(facts.unpacked)} MiB in {facts.files} entries "
        f"({_mib(facts.unpacked_pages)} MiB of pages in the initramfs)"
        + (f"; built in {result.build_seconds} s" if result.build_seconds is not None else "")
    )
    print("biggest directories (MiB):")
    for directory, size in facts.biggest:
        print(f"  {_mib(size):>6}  {directory}")


def print_table(run: Run) -> None:
    print(f"\nguest: {run.memory}, 1 vCPU, {run.accel}")
    header = (
        f"{'system':<11} {'crashkernel':>11}  {'result':<6} {'panic->reboot s':>15} "
        f"{'dump MiB':>8} {'image MiB':>9} {'MemAvail boot/dump':>18}  why"
    )
    print(header)
    print("-" * len(header))
    for result in run.systems:
        image = "-" if result.image is None else _mib(result.image.compressed)
        for a in result.attempts:
            boot = "-" if a.mem_available_kib is None else str(a.mem_available_kib // 1024)
            dump = (
                "-" if a.before_dump_available_mib is None else f"{a.before_dump_available_mib:.0f}"
            )
            size = "-" if a.dump_bytes is None else _mib(a.dump_bytes)
            seconds = "-" if a.panic_to_reboot is None else f"{a.panic_to_reboot:.1f}"
            print(
                f"{a.system:<11} {a.size:>11}  {a.outcome:<6} {seconds:>15} {size:>8} "
                f"{image:>9} {boot + '/' + dump:>18}  {a.reason}"
            )
    for result in run.systems:
        if result.estimate_mib is not None:
            print(
                f"{result.system}: kdumpctl estimate: estimated {result.estimate_mib[0]}M, "
                f"recommended {result.estimate_mib[1]}M"
            )
    print("\nmemory just before the dump started (capture kernel's log):")
    for result in run.systems:
        for a in result.attempts:
            if a.memory_report:
                print(f"  {a.system} {a.size}: {a.memory_report}")


#: What the README's table shows for "no figure" (an en dash).
NO_FIGURE = "\u2013"


def _md_outcome(a: Attempt) -> str:
    if a.outcome == "ok":
        return "ok"
    return "out of memory" if "OOM" in a.reason or "killed" in a.reason else "fails"


def _md_seconds(a: Attempt) -> str:
    return NO_FIGURE if a.panic_to_reboot is None or a.outcome != "ok" else f"{a.panic_to_reboot}"


def _md_dump(a: Attempt) -> str:
    return NO_FIGURE if a.dump_bytes is None else _mib(a.dump_bytes)


def _md_available(a: Attempt) -> str:
    value = a.before_dump_available_mib
    return NO_FIGURE if value is None else f"{value:.0f}"


MARKDOWN_ROWS: tuple[tuple[str, Callable[[Attempt], str]], ...] = (
    ("result", _md_outcome),
    ("panic to reboot (s)", _md_seconds),
    ("dump (MiB)", _md_dump),
    ("MemAvailable before the dump (MiB)", _md_available),
)


def print_markdown(run: Run) -> None:
    """The README's table: one column per size, both systems side by side."""
    sizes: list[str] = []
    for result in run.systems:
        for a in result.attempts:
            if a.size not in sizes:
                sizes.append(a.size)
    print(f"\n| crashkernel= | {' | '.join(sizes)} |")
    print("|---|" + "---|" * len(sizes))
    for result in run.systems:
        by_size = {a.size: a for a in result.attempts}
        for label, show in MARKDOWN_ROWS:
            cells = [show(by_size[s]) if s in by_size else NO_FIGURE for s in sizes]
            print(f"| {result.system}: {label} | {' | '.join(cells)} |")
    print()
    for result in run.systems:
        if result.image is not None:
            facts = result.image
            built = "" if result.build_seconds is None else f", built in {result.build_seconds} s"
            print(
                f"* {result.system}: image {_mib(facts.compressed)} MiB {facts.compression}, "
                f"{_mib(facts.unpacked)} MiB unpacked{built}"
            )
        if result.error:
            print(f"* {result.system}: the measurement stopped: {result.error.splitlines()[0]}")


def load_run(path: Path) -> Run:
    """A run saved with --json, back as objects."""
    data = json.loads(path.read_text())
    run = Run(accel=data["accel"], memory=data["memory"])
    for saved in data["systems"]:
        image = saved.get("image")
        estimate = saved.get("estimate_mib")
        run.systems.append(
            SystemRun(
                system=saved["system"],
                image=None
                if image is None
                else ImageFacts(**{**image, "biggest": [tuple(b) for b in image["biggest"]]}),
                build_seconds=saved.get("build_seconds"),
                estimate_mib=None if estimate is None else (estimate[0], estimate[1]),
                attempts=[Attempt(**a) for a in saved["attempts"]],
                error=saved.get("error", ""),
            )
        )
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"default {DEFAULT_SIZES}")
    parser.add_argument(
        "--systems", default="kdumpd,kdump-tools", help="default kdumpd,kdump-tools"
    )
    parser.add_argument("--memory", default="2048M", help="guest RAM (default 2048M)")
    parser.add_argument("--deb", help="a built kdumpd .deb (default: build one from this tree)")
    parser.add_argument(
        "--time-build", action="store_true", help="also time a second image build of each system"
    )
    parser.add_argument("--capture-timeout", type=float, default=300.0)
    parser.add_argument("--arm-timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--name", default="bench_capture", help="artefact directory under .cache/vm/artifacts"
    )
    parser.add_argument("--analyze", type=Path, help="only measure this initramfs file")
    parser.add_argument(
        "--from-json", type=Path, help="print the tables of a run saved with --json; no guest"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        run = load_run(args.from_json)
        print_table(run)
        print_markdown(run)
        return 0
    if args.analyze:
        print_image(args.analyze.name, SystemRun(system="-", image=analyze_image(args.analyze)))
        return 0
    run = measure(args)
    for result in run.systems:
        print_image(result.system, result)
    print_table(run)
    print_markdown(run)
    if args.json:
        args.json.write_text(json.dumps(asdict(run), indent=2) + "\n")
    ok = all(any(a.outcome == "ok" for a in r.attempts) for r in run.systems)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

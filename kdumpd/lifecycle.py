"""Use cases around the package's life: boot parameters, kernels coming and going, tests.

* ``kdumpctl reset-crashkernel`` (§4.5): set crashkernel= (and fadump= on POWER) of the
  boot configuration to the default, through :mod:`kdumpd.bootloader`.
* The automatic reset (``auto_reset_crashkernel``, package installs and kernel installs),
  safer than kdump-utils': it sets a value where none is configured and kdumpd never set
  one, and moves only a value kdumpd itself set; a value set by hand stays.
* Kernel install hooks: a new kernel's capture image is built at install time, a removed
  kernel's image and manifest are deleted. A dpkg trigger rebuilds a stale image when
  the tools it is made of are upgraded.
* ``kdumpctl test`` (§3.10) and, after the reboot, whether that test produced a dump.

Like :mod:`kdumpd.manager`, these functions speak only through :class:`Messages` and
fail by raising :class:`~kdumpd.errors.KdumpError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kdumpd import bootloader, crashkernel, host, manager, proc
from kdumpd.bootloader import BLS, GRUB, Change, Location
from kdumpd.config import load_kdump_conf, load_sysconfig
from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.config.sysconfig import SysConfig, canonical_arch
from kdumpd.errors import KdumpError
from kdumpd.image import manifest
from kdumpd.messages import Messages
from kdumpd.paths import Paths

REBOOT_NOTE = "WARNING: Please reboot the system for the change to take effect."
UNIT_NAMES = ("kdumpd.service", "kdump.service")
FADUMP_MODES = ("on", "off", "nocma")
TEST_STATUS_NAME = "vmcore-creation.status"


class ResetError(KdumpError):
    """reset-crashkernel cannot do what was asked."""


class TestRefused(KdumpError):
    """kdumpctl test will not crash this system."""


# ---------------------------------------------------------------------------
# defaults


def _default_cache(
    paths: Paths, messages: Messages, sysconfig: SysConfig, machine: os.uname_result
) -> Callable[[str], str]:
    """manager.default_crashkernel, asked once per dump mode: it reads the kernel log."""
    known: dict[str, str] = {}

    def get(mode: str) -> str:
        if mode not in known:
            known[mode] = manager.default_crashkernel(
                paths, messages, sysconfig, machine=machine, mode=mode
            )
        return known[mode]

    return get


def _memory_note(paths: Paths, value: str, messages: Messages) -> None:
    """kdump-utils' warning when the default reserves nothing on this machine."""
    try:
        size = crashkernel.recommend_size(value, crashkernel.read_iomem_memory_gib(paths))
    except (OSError, KdumpError):
        return
    if crashkernel.parse_size(size) == 0:
        messages.warn(
            "No memory will be reserved for crash kernel for this system because the "
            "system memory is smaller than the requirement "
            f"(crashkernel={value})."
        )


def unit_enabled(paths: Paths) -> bool:
    """Whether kdumpd.service (or its kdump.service alias) is enabled, from its symlinks."""
    wants = paths.under_root("/etc/systemd/system/multi-user.target.wants")
    return any((wants / name).exists() or (wants / name).is_symlink() for name in UNIT_NAMES)


# ---------------------------------------------------------------------------
# reset-crashkernel


@dataclass(frozen=True)
class ResetResult:
    changes: tuple[Change, ...]
    unchanged: tuple[Location, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _select(
    paths: Paths, found: Sequence[Location], kernel: str | None, default_release: str
) -> list[Location]:
    """The locations ``--kernel`` names (kdump-utils: PATH, ALL or DEFAULT)."""
    if kernel == "ALL":
        return list(found)
    if kernel is None or kernel == "DEFAULT":
        return [
            loc
            for loc in found
            if loc.kind != BLS
            or loc.version == default_release
            or (loc.kernel or "").endswith(f"-{default_release}")
        ]
    image = paths.under_root(kernel) if kernel.startswith("/") else None
    if image is None or not image.is_file():
        raise ResetError(
            f"Invalid --kernel={kernel}, please specify a valid kernel path, ALL or DEFAULT"
        )
    return [loc for loc in found if loc.kind != BLS or Path(loc.kernel or "").name == image.name]


def reset_crashkernel(
    paths: Paths,
    messages: Messages,
    *,
    machine: os.uname_result,
    kernel: str | None = None,
    fadump: str | None = None,
) -> ResetResult:
    """Set crashkernel= (and fadump=) of the selected boot configuration to the default.

    Never drops other parameters; a value already at the default is left as it is, so
    running it twice changes nothing the second time.
    """
    arch = machine.machine
    if fadump is not None:
        if canonical_arch(arch) != "ppc64le":
            raise ResetError("Option --fadump only valid on PPC")
        if fadump not in FADUMP_MODES:
            raise ResetError(f"--fadump={fadump}: use on, off or nocma")
    sysconfig, _ = load_sysconfig(paths, arch)
    release = sysconfig.kernelver or machine.release
    found = bootloader.locations(paths)
    if not found:
        raise ResetError(
            "Unable to update kernel command line: no boot configuration found "
            "(no /etc/default/grub with update-grub, no /boot/loader/entries/*.conf, "
            "no /etc/kernel/cmdline)"
        )
    chosen = _select(paths, found, kernel, release)
    if not chosen:
        raise ResetError(f"no boot entry for kernel {kernel or release}; check --kernel")
    if kernel not in (None, "ALL", "DEFAULT") and any(loc.kind != BLS for loc in chosen):
        messages.info(
            "Note: GRUB's defaults and /etc/kernel/cmdline apply to every kernel, "
            f"not only {kernel}"
        )
    changes: list[Change] = []
    unchanged: list[Location] = []
    default_for = _default_cache(paths, messages, sysconfig, machine)
    for loc in chosen:
        wanted_fadump = fadump if fadump is not None else loc.value("fadump")
        mode = "fadump" if wanted_fadump in ("on", "nocma") else "kdump"
        value = default_for(mode)
        mine = [Change(loc, "crashkernel", loc.value("crashkernel"), value)]
        if fadump is not None:
            mine.append(
                Change(loc, "fadump", loc.value("fadump"), None if fadump == "off" else fadump)
            )
        mine = [c for c in mine if c.old != c.new]
        if mine:
            changes += mine
        else:
            unchanged.append(loc)
    done = bootloader.apply(paths, changes)
    for change in done:
        where = bootloader.describe(paths, change.location)
        if change.new is None:
            messages.info(f"Removed {change.name}= from {where}.")
        else:
            messages.info(f"Updated {change.name}={change.new} for {where}.")
    if any(c.location.kind == GRUB for c in done):
        messages.info("Ran update-grub: /boot/grub/grub.cfg has the new command line.")
    for loc in unchanged:
        messages.info(f"No need to update crashkernel value for {bootloader.describe(paths, loc)}")
    if done:
        value = next((c.new for c in done if c.name == "crashkernel" and c.new), "")
        if value:
            _memory_note(paths, value, messages)
        messages.info(REBOOT_NOTE)
    return ResetResult(tuple(done), tuple(unchanged))


# ---------------------------------------------------------------------------
# the automatic reset


def auto_reset(
    paths: Paths,
    messages: Messages,
    *,
    machine: os.uname_result,
    kernel_release: str | None = None,
) -> list[Change]:
    """Package install/upgrade (all locations) or a kernel install (its BLS entries).

    Sets crashkernel= where it is absent and kdumpd never set it (first install, a new
    kernel's entry), and moves a value kdumpd set to a new default. A value the
    administrator set, or removed after kdumpd set it, stays as it is.
    """
    config = _config_or_none(paths, messages)
    if config is not None and not config.auto_reset_crashkernel:
        return []
    if not unit_enabled(paths):
        return []
    sysconfig, _ = load_sysconfig(paths, machine.machine)
    record = bootloader.read_record(paths)
    changes: list[Change] = []
    default_for = _default_cache(paths, messages, sysconfig, machine)
    for loc in bootloader.locations(paths):
        if kernel_release is not None and (loc.kind != BLS or loc.version != kernel_release):
            continue
        mode = "fadump" if loc.value("fadump") in ("on", "nocma") else "kdump"
        default = default_for(mode)
        current = loc.value("crashkernel")
        recorded = _recorded(paths, record, loc)
        if current is None and recorded is None:
            changes.append(Change(loc, "crashkernel", None, default))
        elif current is not None and current == recorded and current != default:
            changes.append(Change(loc, "crashkernel", current, default))
        elif current is not None and current != recorded and current != default:
            messages.info(
                f"crashkernel={current} in {bootloader.describe(paths, loc)} was not set by "
                f"kdumpd; it stays (kdumpd's default is {default})"
            )
    done = bootloader.apply(paths, changes)
    for change in done:
        messages.info(
            f"For {bootloader.describe(paths, change.location)}, crashkernel={change.new} now. "
            "A reboot arms kdump with it. kdumpd only changes values it set itself; "
            "set auto_reset_crashkernel no in /etc/kdump.conf to stop that."
        )
    if done:
        _memory_note(paths, next(c.new for c in done if c.new), messages)
    return done


def _recorded(paths: Paths, record: dict[tuple[str, str, str], str], loc: Location) -> str | None:
    file = bootloader.drop_in_path(paths) if loc.kind == GRUB else loc.file
    return record.get((loc.kind, bootloader.shown(paths, file), "crashkernel"))


def _config_or_none(paths: Paths, messages: Messages) -> KdumpConfig | None:
    try:
        return load_kdump_conf(paths).config
    except KdumpError as exc:
        messages.warn(f"{exc}\n(kdump.conf is broken; auto_reset_crashkernel counts as yes)")
        return None


# ---------------------------------------------------------------------------
# kernels and tools


def kernel_added(
    paths: Paths, messages: Messages, kernel_release: str, *, machine: os.uname_result
) -> None:
    """A kernel was installed: boot parameters of its entries, then its capture image."""
    auto_reset(paths, messages, machine=machine, kernel_release=kernel_release)
    if not unit_enabled(paths):
        messages.info("kdumpd.service is not enabled: no capture image built for the new kernel")
        return
    with manager.instance_lock(paths, messages):
        manager.prepare(paths, messages, image="auto", kernel_release=kernel_release)
    image = bootloader.shown(paths, manifest.image_path(paths, kernel_release))
    messages.info(f"capture image for {kernel_release}: {image}")


def kernel_removed(paths: Paths, messages: Messages, kernel_release: str) -> list[Path]:
    """A kernel was removed: delete its capture image and manifest; return what went."""
    removed: list[Path] = []
    for location in (
        manifest.image_path(paths, kernel_release),
        manifest.manifest_path(paths, kernel_release),
    ):
        if location.exists():
            try:
                location.unlink()
            except OSError as exc:
                raise KdumpError(
                    f"cannot delete {bootloader.shown(paths, location)}: {exc.strerror}; "
                    "run kdumpctl as root"
                ) from exc
            removed.append(location)
            messages.info(f"removed {bootloader.shown(paths, location)}")
    return removed


def tools_upgraded(paths: Paths, messages: Messages) -> None:
    """dracut, makedumpfile, kexec-tools or kdumpd changed: rebuild a stale image now.

    Armed: restart (rebuild if the manifest changed, then reload). Not armed but
    enabled: build the image, so the next boot only loads it.
    """
    if not unit_enabled(paths):
        return
    if host.crash_loaded(paths):
        manager.restart(paths, messages)
        return
    with manager.instance_lock(paths, messages):
        manager.prepare(paths, messages, image="auto")


# ---------------------------------------------------------------------------
# kdumpctl test


def test_status_path(paths: Paths) -> Path:
    return paths.state_dir / TEST_STATUS_NAME


def _boot_id(paths: Paths) -> str:
    try:
        return paths.under_root("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _sysrq_trigger(paths: Paths) -> Path:
    return paths.under_root("/proc/sysrq-trigger")


def new_test_id(clock: Callable[[], int] = time.time_ns) -> str:
    """kdump-utils' id: ``<epoch seconds>-<nanoseconds>``."""
    now = clock()
    return f"{now // 1_000_000_000}-{now % 1_000_000_000:09d}"


def run_test(
    paths: Paths,
    messages: Messages,
    *,
    force: bool,
    confirm: Callable[[str], str],
    clock: Callable[[], int] = time.time_ns,
) -> str | None:
    """Crash the system to test the dump (§3.10); returns the test id (None: cancelled).

    On a live system this does not return: the kernel panics.
    """
    if host.dump_mode(paths) != "kdump":
        raise TestRefused("Only kdump is supported for test.")
    if not host.crash_loaded(paths):
        raise TestRefused(
            "Kdump needs be operational before test. Run kdumpctl status to see why it is not."
        )
    if not force:
        answer = confirm(
            "DANGER!!! Will perform a kdump test by crashing the system, proceed? (y/N): "
        )
        if answer.strip() not in ("y", "Y"):
            messages.info("Operation cancelled.")
            return None
    test_id = new_test_id(clock)
    status = {
        "state": "pending",
        "kdump_test_id": test_id,
        "boot_id": _boot_id(paths),
    }
    try:
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        bootloader.write_atomic(test_status_path(paths), _status_text(status))
    except OSError as exc:
        raise TestRefused(
            f"cannot record the test in {bootloader.shown(paths, test_status_path(paths))}: "
            f"{exc.strerror}; run kdumpctl test as root"
        ) from exc
    manager.reload_with_append(paths, messages, f"kdump_test_id={test_id}")
    messages.info(f"kdump test {test_id}: crashing the system now")
    # Whatever is in page cache reaches the disk first: the status file says a test ran.
    os.sync()
    try:
        paths.under_root("/proc/sys/kernel/sysrq").write_text("1\n")
        _sysrq_trigger(paths).write_text("c\n")
    except OSError as exc:
        raise TestRefused(
            f"cannot crash the system through {bootloader.shown(paths, _sysrq_trigger(paths))}: "
            f"{exc.strerror}. The capture kernel is loaded with the test id; "
            "crash it another way (echo c > /proc/sysrq-trigger) or run kdumpctl test again"
        ) from exc
    return test_id


def _status_text(status: dict[str, str]) -> str:
    """kdump-utils' first line (``<state> kdump_test_id=<id>``), then our details as JSON."""
    return (
        f"{status['state']} kdump_test_id={status['kdump_test_id']}\n" + json.dumps(status) + "\n"
    )


def _read_status(paths: Paths) -> dict[str, str] | None:
    try:
        lines = test_status_path(paths).read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines[1:]:
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
    if lines:
        state, _, rest = lines[0].partition(" ")
        return {"state": state, "kdump_test_id": rest.partition("=")[2], "boot_id": ""}
    return None


@dataclass(frozen=True)
class TestResult:
    state: str  # none | pending | success | fail | manual
    test_id: str
    dump: str | None
    message: str
    level: str  # info | warning | error

    @property
    def date(self) -> str:
        seconds = self.test_id.partition("-")[0]
        if not seconds.isdigit():
            return self.test_id
        return datetime.fromtimestamp(int(seconds)).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _find_test_dump(root: Path, test_id: str) -> tuple[Path, bool] | None:
    """The dump directory whose capture kernel ran with this test id; and whether it succeeded."""
    if not root.is_dir():
        return None
    marker = f"kdump_test_id={test_id}"
    for directory in sorted(root.iterdir(), reverse=True):
        log = directory / "kexec-dmesg.log"
        try:
            if marker not in log.read_text(errors="replace"):
                continue
        except OSError:
            continue
        try:
            meta = json.loads((directory / "kdumpd-metadata.json").read_text())
        except (OSError, ValueError):
            meta = {}
        ok = meta.get("result") == "success" and (
            (directory / "vmcore").is_file() or (directory / "vmcore.flat").is_file()
        )
        return directory, ok
    return None


def last_test(paths: Paths, config: KdumpConfig | None) -> TestResult:
    """What became of the last ``kdumpctl test``, resolving a pending one after its reboot."""
    status = _read_status(paths)
    if status is None:
        return TestResult("none", "", None, "No vmcore creation test performed!", "warning")
    state, test_id = status.get("state", ""), status.get("kdump_test_id", "")
    dump = status.get("dump") or None
    if state == "pending":
        if status.get("boot_id") and status["boot_id"] == _boot_id(paths):
            result = TestResult("pending", test_id, None, "", "info")
            return replace_message(
                result, f"vmcore creation test {test_id} has not crashed the system yet"
            )
        if config is not None and config.is_default_target:
            found = _find_test_dump(paths.under_root(config.path), test_id)
            state = "success" if found and found[1] else "fail"
            dump = bootloader.shown(paths, found[0]) if found else None
        else:
            state = "manual"
        status.update({"state": state, "dump": dump or ""})
        # A user who cannot write the file still gets the answer.
        with contextlib.suppress(OSError):
            bootloader.write_atomic(test_status_path(paths), _status_text(status))
    result = TestResult(state, test_id, dump, "", "info")
    if state == "success":
        where = f" (dump in {dump})" if dump else ""
        return replace_message(
            result, f"Notice: Last successful vmcore creation test on {result.date}{where}"
        )
    if state == "fail":
        return replace_message(
            result, f"Last NOT successful vmcore creation test on {result.date}", "warning"
        )
    if state == "manual":
        return replace_message(
            result, f"Require manual check for vmcore creation test of {result.date}", "warning"
        )
    return replace_message(result, f"Unknown vmcore creation test status: {state}", "error")


def replace_message(result: TestResult, message: str, level: str = "info") -> TestResult:
    return TestResult(result.state, result.test_id, result.dump, message, level)


def reboot() -> None:
    """kdump-utils' deprecated --reboot: reboot when something changed."""
    proc.run(["systemctl", "reboot"], timeout=60)

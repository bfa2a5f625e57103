"""The arming use cases: start, stop, restart, reload and rebuild.

The CLI (``kdumpctl``) and, later, the daemon call these functions; they speak
to the administrator only through a :class:`~kdumpd.messages.Messages` and
report failure by raising :class:`ArmingFailed`.

The rule this module exists to keep: **an invalid configuration never disarms
a working capture kernel.** restart and reload first validate kdump.conf and
the variables file, compute the capture command line and the plan, and (for
restart) rebuild the image; only when all of that succeeded do they unload the
old kernel and load the new one. If that final load still fails, the kernel
loaded before is put back from the record of the last successful load.

Messages and exit codes follow kdump-utils' kdumpctl (§3.3-§3.8 of the
compatibility spec), so scripts that grep ``Starting kdump: [OK]`` keep working.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from kdumpd import cmdline as capture_cmdline
from kdumpd import crashkernel, host, kexec, targets
from kdumpd.config import (
    KdumpConfig,
    check_host,
    check_host_warnings,
    load_kdump_conf,
    load_sysconfig,
)
from kdumpd.config.sysconfig import SysConfig, canonical_arch
from kdumpd.durable import write_atomic
from kdumpd.errors import ConfigError, ExitCode, KdumpError, Problem, user_message
from kdumpd.estimate import Estimate, estimate_capture_memory, read_module_list
from kdumpd.host.kernel_image import kernel_image_size
from kdumpd.image import build, manifest
from kdumpd.messages import Messages
from kdumpd.paths import Paths
from kdumpd.planner import compile_full
from kdumpd.postcrash import dumps, raw_import
from kdumpd.postcrash.dumps import DumpInfo
from kdumpd.targets import raw as raw_target
from kdumpd.targets import ssh

STARTING_OK = "Starting kdump: [OK]"
STARTING_FAILED = "Starting kdump: [FAILED]"
STOPPING_OK = "Stopping kdump: [OK]"
STOPPING_FAILED = "Stopping kdump: [FAILED]"
ALREADY_RUNNING = "Kdump already running: [WARNING]"
NOT_RUNNING = "Kdump was not running: [WARNING]"
LOCK_WAIT = "Another app is currently holding the kdump lock; waiting for it to exit..."
LOCK_POLL_SECONDS = 5.0


class NotFeasible(KdumpError):
    """This kernel cannot arm kdump: no kexec crash support, or no memory reserved."""

    dbus_name = "org.kdumpd.Error.NotFeasible"


class ArmingFailed(KdumpError):
    """A use case failed and has already said why through Messages.

    The reason and the kdumpctl status line (``Starting kdump: [FAILED]``) were
    sent to Messages in kdump-utils' order, so the CLI must not print them again
    (``reported`` is True); ``str()`` is the reason alone, for D-Bus replies.
    The original error is ``reason`` (and ``__cause__``), with its exit code and
    D-Bus name, so a ConfigError's problems stay reachable.
    """

    reported = True

    def __init__(self, reason: KdumpError, status_line: str) -> None:
        self.reason = reason
        self.status_line = status_line
        self.exit_code: ExitCode = reason.exit_code
        self.dbus_name: str = reason.dbus_name
        super().__init__(user_message(reason))


@dataclass(frozen=True)
class Arming:
    """Everything one ``kexec -p`` load needs, computed before anything is unloaded."""

    kernel_release: str
    kernel: Path
    initrd: Path
    cmdline: str
    kexec_args: str
    secure_boot: bool

    def to_record(self) -> dict[str, Any]:
        return {
            "kernel_release": self.kernel_release,
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "cmdline": self.cmdline,
            "kexec_args": self.kexec_args,
            "secure_boot": self.secure_boot,
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Arming:
        return cls(
            kernel_release=str(data["kernel_release"]),
            kernel=Path(data["kernel"]),
            initrd=Path(data["initrd"]),
            cmdline=str(data["cmdline"]),
            kexec_args=str(data["kexec_args"]),
            secure_boot=bool(data["secure_boot"]),
        )


class ForeignRoot(KdumpError):
    """A command that loads, unloads or builds for the running kernel, on another tree."""

    exit_code = ExitCode.USAGE
    dbus_name = "org.kdumpd.Error.ForeignRoot"


def require_running_system(paths: Paths, command: str, loader: object = None) -> None:
    """Refuse ``command`` unless ``paths`` is the running system (or a stand-in kernel).

    A loader that is not the kernel's (the daemon's TreeLoader for a tree) is such
    a stand-in; ``loader=None`` (rebuild) means dracut on the running system.

    kexec loads into and unloads from the running kernel, and dracut packs the
    running system's programs, whatever ``--root`` names; the lock that keeps
    arming one at a time is the running system's. So with another tree these
    commands would arm the host with the tree's files, or disarm the host.
    """
    if loader is not None and not isinstance(loader, KexecLoader):
        return
    if not paths.acts_on_running_kernel:
        raise ForeignRoot(
            f"kdumpctl {command} with --root {paths.root}: refused, because it would act on "
            "the running kernel, not on that tree (kexec and dracut work on this machine). "
            "Run it without --root on the system itself; check-config, status, showmem "
            "and estimate work on a tree."
        )


class Loader(Protocol):
    """Puts a capture kernel into the kernel and takes it out again."""

    def load(self, paths: Paths, messages: Messages, arming: Arming) -> None: ...
    def unload(
        self, paths: Paths, messages: Messages, *, kexec_args: str, secure_boot: bool
    ) -> None: ...


class KexecLoader:
    """The running kernel's kexec state, through ``kexec -p`` (kdumpd.kexec)."""

    def load(self, paths: Paths, messages: Messages, arming: Arming) -> None:
        kexec.load(
            kernel=arming.kernel,
            initrd=arming.initrd,
            cmdline=arming.cmdline,
            kexec_args=arming.kexec_args,
            secure_boot=arming.secure_boot,
            messages=messages,
            lockdown=kexec.lockdown_mode(paths),
        )

    def unload(
        self, paths: Paths, messages: Messages, *, kexec_args: str, secure_boot: bool
    ) -> None:
        kexec.unload(
            kexec_args=kexec_args,
            secure_boot=secure_boot,
            messages=messages,
            lockdown=kexec.lockdown_mode(paths),
        )


class TreeLoader:
    """A rehearsal loader for ``kdumpd --root DIR``: the tree's sysfs file moves, not the kernel.

    The daemon run against a tree (tests, dry runs) must never touch the running
    kernel's kexec state, so "loading" writes 1 to the tree's
    ``/sys/kernel/kexec_crash_loaded`` (as the kernel would) after checking
    that the kernel and initrd exist, and says that it rehearsed.
    """

    def load(self, paths: Paths, messages: Messages, arming: Arming) -> None:
        for part in (arming.kernel, arming.initrd):
            if not part.is_file():
                raise kexec.KexecError(f"{kexec.LOAD_FAILED}\ncannot read {part}")
        paths.kexec_crash_loaded.parent.mkdir(parents=True, exist_ok=True)
        paths.kexec_crash_loaded.write_text("1\n")
        messages.info(f"{kexec.LOADED} (in the tree {paths.root}; the running kernel is untouched)")

    def unload(
        self, paths: Paths, messages: Messages, *, kexec_args: str, secure_boot: bool
    ) -> None:
        del kexec_args, secure_boot
        if paths.kexec_crash_loaded.exists():
            paths.kexec_crash_loaded.write_text("0\n")
        messages.info(f"{kexec.UNLOADED} (in the tree {paths.root})")


KEXEC = KexecLoader()


# -- single instance --------------------------------------------------------


@contextlib.contextmanager
def instance_lock(
    paths: Paths,
    messages: Messages,
    *,
    poll_seconds: float = LOCK_POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold the kdumpctl lock (flock on ``paths.kdumpctl_lock``) for the duration.

    A second instance waits, saying so every ``poll_seconds`` like kdumpctl
    does, instead of failing: boot-time start and a hotplug reload may overlap.
    The kernel drops the lock when the holder dies, so a crash leaves no stale lock.
    """
    lock_path = paths.kdumpctl_lock
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                messages.info(LOCK_WAIT)
                sleep(poll_seconds)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


# -- steps ----------------------------------------------------------------


def check_feasible(paths: Paths) -> None:
    """Raise NotFeasible unless this kernel can hold a crash kernel (§3.2)."""
    if not host.kexec_supported(paths):
        raise NotFeasible(
            "Kdump is not supported on this kernel "
            f"({paths.shown(paths.kexec_crash_loaded)} is missing: the kernel lacks "
            "CONFIG_KEXEC/CONFIG_CRASH_DUMP)"
        )
    if host.crash_size_bytes(paths) <= 0:
        raise NotFeasible(
            "No memory reserved for crash kernel "
            "(add crashkernel= to the kernel command line, for example with "
            "kdumpctl reset-crashkernel, then reboot)"
        )


def prepare(
    paths: Paths,
    messages: Messages,
    *,
    image: str,
    kernel_release: str | None = None,
    cmdline_append: str = "",
) -> Arming:
    """Validate the configuration and compute everything a load needs; disarm nothing.

    ``image`` says what to do with the capture initramfs:
    ``"auto"`` rebuilds it when the rebuild decision asks for it (start, restart),
    ``"keep"`` only builds a missing image and otherwise warns that it is stale
    (reload: §3.7 reloads without rebuilding), ``"force"`` always rebuilds.
    ``kernel_release`` builds for another installed kernel than the one the
    variables file and the running system name (kernel install hooks);
    ``cmdline_append`` is added to the capture command line (kdumpctl test's id).
    Raises ConfigError (every problem with file:line) or another KdumpError.
    """
    parsed = load_kdump_conf(paths)
    for warning in parsed.warnings:
        messages.warn(str(warning))
    # The same host checks as check-config, so that start never accepts less.
    host_errors = check_host(parsed.config, paths, "/etc/kdump.conf")
    if host_errors:
        raise ConfigError(host_errors)
    sysconfig, sysconfig_problems = load_sysconfig(paths, host.machine_arch())
    for problem in sysconfig_problems:
        messages.warn(str(problem))

    kver = kernel_release or _kernel_release(paths, messages, sysconfig)
    kernel = host.find_kernel(paths, sysconfig, kver)
    cmdline = capture_cmdline.build_capture_cmdline(
        sysconfig.commandline or _read_proc_cmdline(paths),
        remove=sysconfig.commandline_remove,
        append=sysconfig.commandline_append,
        apicid=capture_cmdline.cpu0_apicid(paths),
        watchdog_drivers=capture_cmdline.active_watchdog_drivers(paths, kernel_release=kver),
        graviton=capture_cmdline.is_aws_graviton(paths),
    )
    if cmdline_append:
        cmdline = f"{cmdline} {cmdline_append}"
    compiled = compile_full(parsed.config, paths, kernel_release=kver)
    for warning in compiled.warnings:
        messages.warn(str(warning))
    plan = compiled.plan
    if image != "keep":
        targets.for_plan(plan.target.kind).preflight(paths, messages, plan)
    initrd = manifest.image_path(paths, kver)
    inputs = manifest.compute_manifest(paths, parsed.config, plan, kernel_image=kernel)

    reason = (
        "rebuild requested (kdumpctl rebuild)"
        if image == "force"
        else manifest.rebuild_reason(paths, parsed.config, inputs)
    )
    if reason is not None:
        if image == "keep" and initrd.is_file():
            messages.warn(
                f"{paths.shown(initrd)} is out of date ({reason}); reload keeps it. "
                "Run kdumpctl restart to rebuild it and load the new one."
            )
        else:
            messages.info(reason)
            messages.info(f"Rebuilding {paths.shown(initrd)}")
            # dracut writes a new file and renames it over the old image only on
            # success, so a failed build leaves the loaded kernel's image intact.
            result = build.build(
                paths,
                parsed.config,
                plan,
                kernel_release=kver,
                manifest=inputs,
                extra_dracut_modules=compiled.dracut_modules,
                # dracut takes minutes: show its lines as they come (progress), and
                # the reason right where it fails.
                on_line=lambda line: messages.info(
                    line if line.startswith("dracut") else f"dracut: {line}"
                ),
            )
            messages.info(result.init_line())
            for warning in result.warnings:
                messages.warn(str(warning))

    return Arming(
        kernel_release=kver,
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        kexec_args=sysconfig.kexec_args,
        secure_boot=host.secure_boot_enforced(paths),
    )


def plan_problems(paths: Paths, config: KdumpConfig, sysconfig: SysConfig) -> list[Problem]:
    """What compiling the plan for a valid configuration finds wrong (check-config's last step).

    The same compilation start runs, so a target start would refuse (a device
    that does not exist, a dump path on tmpfs) is refused by check-config first.
    """
    try:
        kver = host.kernel_release(paths, sysconfig)
        compile_full(config, paths, kernel_release=kver)
    except ConfigError as exc:
        return list(exc.problems)
    except KdumpError as exc:
        return [Problem("/etc/kdump.conf", config.lines.get("target", 0), user_message(exc))]
    return []


def import_pending_raw_dump(paths: Paths, messages: Messages) -> raw_import.RawImport | None:
    """Bring a dump home from a raw target before anything may overwrite it (§5.6).

    Raises (and so fails the start) when a pending dump cannot be saved: the
    device holds its only copy, and arming would let the next crash destroy it.
    A stream that cannot be reassembled (cut off, corrupt) holds no dump to
    protect: it is recorded, reported and set aside, and arming goes on.
    Returns what was imported, or None.
    """
    config = load_kdump_conf(paths).config
    if config.target is None or config.target.kind != "raw":
        return None
    # Only from the device the target names, once it passed the target's checks (a
    # block device, not mounted, not in use): never from a file or a busy disk.
    problems = raw_target.check_raw_device(
        paths, config.target.value, line=config.lines.get("target", 0)
    )
    if problems:
        raise ConfigError(problems)
    try:
        return raw_import.import_raw_dump(
            paths,
            config.target.value,
            messages=messages,
            now=datetime.now(),
            crash_dir=paths.under_root(config.path),
        )
    except raw_import.UnusableStream as exc:
        # No complete dump to protect: report it once, and arm anyway.
        messages.warn(
            f"{exc} It was set aside; kdump is armed, and the next capture overwrites it."
        )
        return None


def _read_proc_cmdline(paths: Paths) -> str:
    try:
        return paths.proc_cmdline.read_text().strip()
    except OSError as exc:
        raise KdumpError(
            f"cannot read {paths.shown(paths.proc_cmdline)} ({exc.strerror}) for the "
            "capture command line; set KDUMP_COMMANDLINE in /etc/default/kdump"
        ) from exc


def _record_path(paths: Paths) -> Path:
    return paths.run_dir / "loaded.json"


def _write_record(paths: Paths, arming: Arming) -> None:
    """Remember what is loaded: restart/reload put it back if a new load fails."""
    text = json.dumps(arming.to_record(), indent=2, sort_keys=True) + "\n"
    write_atomic(_record_path(paths), text.encode())


def _read_record(paths: Paths) -> Arming | None:
    try:
        return Arming.from_record(json.loads(_record_path(paths).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load(paths: Paths, messages: Messages, arming: Arming, loader: Loader) -> None:
    loader.load(paths, messages, arming)
    _write_record(paths, arming)


def _unload(
    paths: Paths, messages: Messages, loader: Loader, *, kexec_args: str, secure_boot: bool
) -> None:
    loader.unload(paths, messages, kexec_args=kexec_args, secure_boot=secure_boot)
    with contextlib.suppress(FileNotFoundError):
        _record_path(paths).unlink()


def _unload_settings(paths: Paths) -> tuple[str, bool]:
    """KEXEC_ARGS and Secure Boot for an unload, without reading the configuration.

    Unloading must work whatever the files say now: it uses the arguments of
    the load it undoes (the record), else none. ``kexec -p -u`` needs no
    configuration; ``-s`` follows Secure Boot, read from the firmware.
    """
    record = _read_record(paths)
    return (record.kexec_args if record else ""), host.secure_boot_enforced(paths)


def _fail(messages: Messages, error: KdumpError, status_line: str) -> ArmingFailed:
    """Say why, then the status line (kdumpctl's order), and return the error to raise."""
    messages.error(user_message(error))
    messages.error(status_line)
    return ArmingFailed(error, status_line)


def _keep_old_note(paths: Paths, messages: Messages) -> None:
    if host.crash_loaded(paths):
        messages.warn(
            "the capture kernel loaded before is still armed; fix the error above "
            "and run the command again to load the new configuration"
        )


# -- use cases ------------------------------------------------------------


def start(paths: Paths, messages: Messages, *, loader: Loader = KEXEC) -> None:
    """Arm kdump (§3.3): check, validate, rebuild the image if needed, load."""
    require_running_system(paths, "start", loader)
    with instance_lock(paths, messages):
        _start(paths, messages, loader)


def _start(paths: Paths, messages: Messages, loader: Loader) -> None:
    try:
        check_feasible(paths)
        import_pending_raw_dump(paths, messages)
        # The config is validated even when a kernel is loaded (kdumpctl does the
        # same): a broken file is reported at every start, but nothing is unloaded.
        if host.crash_loaded(paths):
            load_kdump_conf(paths)
            messages.warn(ALREADY_RUNNING)
            return
        arming = prepare(paths, messages, image="auto")
        _load(paths, messages, arming, loader)
    except KdumpError as exc:
        raise _fail(messages, exc, STARTING_FAILED) from exc
    messages.info(STARTING_OK)


def stop(paths: Paths, messages: Messages, *, loader: Loader = KEXEC) -> None:
    """Disarm kdump (§3.4): ``kexec [-s] -p -u``."""
    require_running_system(paths, "stop", loader)
    with instance_lock(paths, messages):
        _stop(paths, messages, loader)


def _stop(paths: Paths, messages: Messages, loader: Loader) -> None:
    kexec_args, secure_boot = _unload_settings(paths)
    try:
        _unload(paths, messages, loader, kexec_args=kexec_args, secure_boot=secure_boot)
    except KdumpError as exc:
        raise _fail(messages, exc, STOPPING_FAILED) from exc
    _unpin(paths)
    messages.info(STOPPING_OK)


def restart(paths: Paths, messages: Messages, *, loader: Loader = KEXEC) -> None:
    """Re-arm with the current configuration, rebuilding the image when needed (§3.6).

    Unlike kdumpctl (stop, then start), everything that can fail on a bad
    configuration runs before the old kernel is unloaded.
    """
    require_running_system(paths, "restart", loader)
    with instance_lock(paths, messages):
        _replace(paths, messages, loader, image="auto")


def reload(paths: Paths, messages: Messages, *, loader: Loader = KEXEC) -> None:
    """Re-load kernel and image without rebuilding (§3.7), after validating the configuration."""
    require_running_system(paths, "reload", loader)
    with instance_lock(paths, messages):
        if not host.crash_loaded(paths):
            messages.warn(NOT_RUNNING)
        _replace(paths, messages, loader, image="keep")


def _pinned_dir(paths: Paths) -> Path:
    return paths.state_dir / "loaded"


def _pin_loaded(paths: Paths, record: Arming | None) -> Arming | None:
    """Keep the files of the loaded kernel where no rebuild writes, and record them there.

    A rebuild renames a new image over ``initramfs-<kver>kdump.img``; without
    this, putting back "the previous kernel" after a failed load would load
    the new image again. Hard links cost nothing on the same filesystem; the
    kernel (in /boot, maybe another filesystem) is copied if it must be.
    """
    if record is None:
        return None
    pin = _pinned_dir(paths)
    if record.initrd.parent == pin and record.kernel.parent == pin:
        return record
    if not (record.kernel.is_file() and record.initrd.is_file()):
        return record
    staging = paths.state_dir / "loaded.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = {"kernel": record.kernel, "initrd": record.initrd}
    manifest = record.initrd.with_name(record.initrd.name.removesuffix(".img") + ".manifest.json")
    if manifest.is_file():
        files["manifest.json"] = manifest
    for name, source in files.items():
        try:
            os.link(source, staging / name)
        except OSError:
            shutil.copy2(source, staging / name)
    shutil.rmtree(pin, ignore_errors=True)
    staging.rename(pin)
    pinned = dataclasses.replace(record, kernel=pin / "kernel", initrd=pin / "initrd")
    _write_record(paths, pinned)
    return pinned


def _unpin(paths: Paths) -> None:
    """The new kernel is loaded from its own files: the pinned copies are no longer needed."""
    shutil.rmtree(_pinned_dir(paths), ignore_errors=True)


def reload_with_append(
    paths: Paths, messages: Messages, cmdline_append: str, *, loader: Loader = KEXEC
) -> None:
    """reload, with ``cmdline_append`` on the capture command line of this load only
    (kdumpctl test's ``kdump_test_id=``)."""
    with instance_lock(paths, messages):
        _replace(paths, messages, loader, image="keep", cmdline_append=cmdline_append)


def reload_loaded(paths: Paths, messages: Messages, *, loader: Loader = KEXEC) -> None:
    """Load again exactly the capture kernel that is loaded (after CPU/memory hotplug).

    The kernel computes the crash headers (the memory map the capture kernel
    dumps) when the image is loaded, so a hot-added block is only covered after
    a new load. Nothing of the configuration changed: the record of the last
    load is reused, so a kdump.conf broken meanwhile does not stand in the way.
    """
    with instance_lock(paths, messages):
        previous = _read_record(paths)
        if previous is None or not (previous.kernel.exists() and previous.initrd.exists()):
            raise _fail(
                messages,
                KdumpError("no record of the loaded capture kernel; run kdumpctl restart"),
                STARTING_FAILED,
            )
        try:
            _unload(
                paths,
                messages,
                loader,
                kexec_args=previous.kexec_args,
                secure_boot=previous.secure_boot,
            )
        except KdumpError as exc:
            raise _fail(messages, exc, STOPPING_FAILED) from exc
        messages.info(STOPPING_OK)
        try:
            _load(paths, messages, previous, loader)
        except KdumpError as exc:
            raise _fail(messages, exc, STARTING_FAILED) from exc
        messages.info(STARTING_OK)


def _replace(
    paths: Paths, messages: Messages, loader: Loader, *, image: str, cmdline_append: str = ""
) -> None:
    # Before anything may rebuild the image: what is loaded now stays on disk as it is.
    previous = _pin_loaded(paths, _read_record(paths))
    try:
        check_feasible(paths)
        import_pending_raw_dump(paths, messages)
        arming = prepare(paths, messages, image=image, cmdline_append=cmdline_append)
    except KdumpError as exc:
        failed = _fail(messages, exc, STARTING_FAILED)
        _keep_old_note(paths, messages)
        raise failed from exc

    try:
        _unload(
            paths, messages, loader, kexec_args=arming.kexec_args, secure_boot=arming.secure_boot
        )
    except KdumpError as exc:
        raise _fail(messages, exc, STOPPING_FAILED) from exc
    messages.info(STOPPING_OK)

    try:
        _load(paths, messages, arming, loader)
    except KdumpError as exc:
        failed = _fail(messages, exc, STARTING_FAILED)
        _restore(paths, messages, previous, loader)
        raise failed from exc
    _unpin(paths)
    messages.info(STARTING_OK)


def _restore(paths: Paths, messages: Messages, previous: Arming | None, loader: Loader) -> None:
    """After a failed load, put back what was loaded before, if we know and still have it."""
    if previous is None or not (previous.kernel.exists() and previous.initrd.exists()):
        messages.error("kdump is not operational: no previous capture kernel to put back")
        return
    try:
        _load(paths, messages, previous, loader)
    except KdumpError as exc:
        messages.error(f"putting back the previous capture kernel failed too:\n{exc}")
        return
    messages.warn(
        f"put back the previous capture kernel ({paths.shown(previous.kernel)}); "
        "kdump stays operational with the configuration it was loaded with"
    )


def rebuild(paths: Paths, messages: Messages) -> None:
    """Rebuild the capture image unconditionally (§3.8); load nothing."""
    require_running_system(paths, "rebuild")
    with instance_lock(paths, messages):
        try:
            prepare(paths, messages, image="force")
        except KdumpError as exc:
            raise _fail(messages, exc, "Rebuilding kdump initramfs: [FAILED]") from exc
        messages.info("Rebuilding kdump initramfs: [OK]")


# -- read-only use cases ----------------------------------------------------


def _kernel_release(
    paths: Paths, messages: Messages, sysconfig: SysConfig, running: str | None = None
) -> str:
    """The capture kernel's release; the note about a debug kernel goes to messages."""
    notes: list[str] = []
    release = host.kernel_release(paths, sysconfig, running=running, notes=notes)
    for note in notes:
        messages.info(note)
    return release


def default_crashkernel(
    paths: Paths,
    messages: Messages,
    sysconfig: SysConfig,
    *,
    machine: os.uname_result,
    mode: str,
) -> str:
    """The default crashkernel= value for this machine (§4.1).

    Gathers only the inputs its architecture uses.
    """
    arch = canonical_arch(machine.machine)
    kwargs: dict[str, Any] = {"mode": mode}
    if arch in ("x86_64", "s390x"):
        kwargs["sme_sev_active"] = crashkernel.sme_sev_active(host.read_kernel_log(paths))
    elif arch == "aarch64":
        kwargs["kernel_release"] = _kernel_release(paths, messages, sysconfig, machine.release)
        kwargs["arm_smmu_present"] = crashkernel.arm_smmu_present(paths)
        kwargs["mlx5_bound"] = crashkernel.mlx5_bound(paths)
    elif arch == "ppc64le":
        append = (
            sysconfig.fadump_commandline_append
            if mode == "fadump"
            else sysconfig.commandline_append
        )
        kwargs["nr_cpus"] = crashkernel.nr_cpus_from_cmdline_append(append)
    return crashkernel.default_crashkernel(machine.machine, **kwargs)


@dataclass(frozen=True)
class EstimateReport:
    """``kdumpctl estimate``: the estimate, for which dump mode and capture kernel."""

    mode: str
    kernel_release: str
    estimate: Estimate


def estimate(
    paths: Paths,
    messages: Messages,
    sysconfig: SysConfig,
    *,
    machine: os.uname_result,
    initrd: Path | None = None,
    modules_list: Path | None = None,
) -> EstimateReport:
    """Reserved vs. recommended crash kernel memory, with the parts of the estimate (§4.3).

    ``initrd`` defaults to the capture image kdumpd built for the capture kernel.
    """
    kver = _kernel_release(paths, messages, sysconfig, machine.release)
    mode = host.dump_mode(paths)
    try:
        default = default_crashkernel(paths, messages, sysconfig, machine=machine, mode=mode)
    except crashkernel.CrashkernelError as exc:
        # No default table for this machine: the estimate alone still helps.
        messages.info(f"Note: no baseline: {exc}")
        baseline_text = "0M"
    else:
        mem_gib = crashkernel.read_iomem_memory_gib(paths)
        baseline_text = crashkernel.recommend_size(default, mem_gib)
    try:
        kernel_image: Path | None = host.find_kernel(paths, sysconfig, kver)
    except host.KernelNotFound:
        kernel_image = None
    result = estimate_capture_memory(
        reserved=host.crash_size_bytes(paths, mode),
        baseline=crashkernel.parse_size(baseline_text),
        kernel=kernel_image_size(paths, kernel_image),
        loaded=host.loaded_modules(paths),
        image_modules=read_module_list(modules_list),
        initramfs=initrd if initrd is not None else manifest.image_path(paths, kver),
    )
    return EstimateReport(mode=mode, kernel_release=kver, estimate=result)


def check_config(
    paths: Paths, arch: str, override: Path | None = None
) -> tuple[list[Problem], list[Problem]]:
    """Every error and warning of kdump.conf, the host checks and the variables file.

    When the files are valid, the plan is compiled as start compiles it (which
    may ask blkid about a target device); nothing is built, loaded or
    contacted. Returns ``(errors, warnings)``.
    """
    errors: list[Problem] = []
    warnings: list[Problem] = []
    try:
        parsed = load_kdump_conf(paths, override)
    except ConfigError as exc:
        errors.extend(exc.problems)
    else:
        warnings.extend(parsed.warnings)
        source = paths.shown(override if override is not None else paths.kdump_conf)
        errors.extend(check_host(parsed.config, paths, source))
        warnings.extend(check_host_warnings(parsed.config, paths, source))
    try:
        sysconfig, problems = load_sysconfig(paths, arch)
    except ConfigError as exc:
        errors.extend(exc.problems)
    else:
        warnings.extend(problems)
        if not errors:
            errors.extend(plan_problems(paths, parsed.config, sysconfig))
    return errors, warnings


def propagate(paths: Paths, messages: Messages) -> Path:
    """``kdumpctl propagate``: create the ssh key if missing, install it on the server (§3.9).

    ssh-copy-id runs on the terminal: it may ask for the server's password and
    for accepting its host key (which the capture kernel then checks strictly).
    """
    config = load_kdump_conf(paths).config
    return ssh.propagate(config, paths, messages)


@dataclass(frozen=True)
class Overview:
    """What the daemon publishes besides its state: target, memory, image."""

    target: str
    reserved_bytes: int
    image: Path | None
    image_mtime: float


def overview(paths: Paths) -> Overview:
    """Read target, reservation and the capture image loaded last; never raises on a broken file."""
    target = ""
    try:
        config = load_kdump_conf(paths).config
    except KdumpError:
        config = None
    if config is not None:
        where = config.target.value if config.target is not None else "root filesystem"
        target = f"{config.path} on {where}"
    image: Path | None = None
    mtime = 0.0
    with contextlib.suppress(OSError):
        images = sorted(
            paths.state_dir.glob("initramfs-*kdump.img"), key=lambda p: p.stat().st_mtime
        )
        if images:
            image = images[-1]
            mtime = image.stat().st_mtime
    record = _read_record(paths)
    if record is not None and record.initrd.is_file():
        image = record.initrd
        mtime = record.initrd.stat().st_mtime
    return Overview(
        target=target,
        reserved_bytes=host.crash_size_bytes(paths),
        image=image,
        image_mtime=mtime,
    )


__all__ = [
    "ArmingFailed",
    "EstimateReport",
    "ForeignRoot",
    "KexecLoader",
    "Loader",
    "NotFeasible",
    "Overview",
    "TreeLoader",
    "check_config",
    "default_crashkernel",
    "estimate",
    "instance_lock",
    "overview",
    "prepare",
    "propagate",
    "rebuild",
    "reload",
    "reload_loaded",
    "restart",
    "start",
    "stop",
]


def dump_locations(paths: Paths, messages: Messages) -> list[Path]:
    """Where the configured target's dumps are on this machine (notes on targets
    elsewhere go to messages)."""
    roots, notes = dumps.dump_roots(paths, load_kdump_conf(paths).config)
    for note in notes:
        messages.info(note)
    return roots


def saved_dumps(paths: Paths, messages: Messages) -> tuple[list[DumpInfo], list[Path]]:
    """kdumpctl dumps: the dumps this machine sees, newest first, and where it looked."""
    roots = dump_locations(paths, messages)
    return dumps.read_dump_dirs(roots), roots

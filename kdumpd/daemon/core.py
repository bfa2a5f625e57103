"""The daemon's state and decisions: arm at start, re-arm on edits and hotplug, next boot.

No D-Bus and no GLib here: ``bus`` calls these methods for D-Bus calls,
``watch`` and ``hotplug`` call them once their events settled, and the daemon
reports through a :class:`~kdumpd.daemon.journal.Journal`, a
:class:`~kdumpd.daemon.notify.Notifier` and the ``on_change`` callback (which
the bus turns into PropertiesChanged).

The rule kept here, on top of the manager's: a problem that arises while
running (a broken edit, a failed reload) never disarms a working capture
kernel; it degrades ``LastError`` and leaves ``State`` armed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdumpd import host, manager
from kdumpd.config import DEFAULT_SSHKEY, load_kdump_conf, load_sysconfig
from kdumpd.daemon.journal import ERR, INFO, WARNING, Journal, JournalMessages
from kdumpd.daemon.notify import Notifier
from kdumpd.errors import ConfigError, ExitCode, KdumpError, Problem, user_message
from kdumpd.paths import Paths
from kdumpd.postcrash import newdumps as postcrash
from kdumpd.postcrash import retention

ARMED = "armed"
NOT_ARMED = "not-armed"
BUILDING = "building"
FAILED = "failed"
UNSUPPORTED = "unsupported"

HOOK_DIRS = ("pre.d", "post.d", "emergency.d")


class CallFailed(KdumpError):
    """A use case called over D-Bus failed; ``lines`` is what kdumpctl would have printed."""

    def __init__(self, reason: KdumpError, lines: list[str]) -> None:
        self.reason = reason
        self.lines = list(lines)
        self.exit_code: ExitCode = reason.exit_code
        self.dbus_name: str = reason.dbus_name
        super().__init__("\n".join(lines) if lines else user_message(reason))


@dataclass
class Counters:
    """How often the daemon did what (tests and the status text read them)."""

    rearms: int = 0
    hotplug_reloads: int = 0
    rejected_edits: int = 0


def watched_files(paths: Paths) -> list[Path]:
    """Every input a live reload follows: kdump.conf, variables files, hooks, the ssh key.

    Both the configured key and the default one: the default is used while the
    configured key does not exist (kdump-utils), so either file appearing or
    changing changes what the image carries.
    """
    files = [paths.kdump_conf, paths.sysconfig_kdump, paths.default_kdump]
    keys = [DEFAULT_SSHKEY]
    try:
        configured = load_kdump_conf(paths).config.sshkey
    except KdumpError:
        configured = DEFAULT_SSHKEY  # a broken file is reported by the re-arm, not here
    if configured != DEFAULT_SSHKEY:
        keys.append(configured)
    files.extend(paths.under_root(key) for key in keys)
    return files


def watched_dirs(paths: Paths) -> list[Path]:
    """Directories whose entries are inputs as a whole (hook directories)."""
    return [paths.hooks_dir / name for name in HOOK_DIRS]


def fingerprint(paths: Paths) -> str:
    """A hash of the content of every watched input: edits are told by content (R7),

    so a rename-over with identical bytes, or a touch, changes nothing.
    """
    digest = hashlib.sha256()
    for path in watched_files(paths):
        digest.update(str(path).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"\0missing")
    for directory in watched_dirs(paths):
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            continue
        for entry in entries:
            digest.update(str(entry).encode())
            try:
                digest.update(entry.read_bytes())
                digest.update(oct(entry.stat().st_mode).encode())
            except OSError:
                digest.update(b"\0unreadable")
    return digest.hexdigest()


def crash_hotplug_handled(paths: Paths) -> bool:
    """True when the kernel updates the crash elfcorehdr on hotplug by itself.

    Linux 6.5 (commit 247262756121, "crash: add generic infrastructure for crash
    hotplug support") exposes ``crash_hotplug`` under /sys/devices/system/{cpu,memory};
    it reads 1 when the loaded image can be updated in place. Detected, never
    inferred from a version number.
    """
    for base in (paths.sys_memory, paths.sys_cpu):
        try:
            if (base / "crash_hotplug").read_text().strip() == "1":
                return True
        except OSError:
            continue
    return False


class Core:
    """The daemon's state machine over kdumpd.manager's use cases."""

    def __init__(
        self,
        paths: Paths,
        *,
        journal: Journal,
        notifier: Notifier,
        loader: manager.Loader,
        arch: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paths = paths
        self.journal = journal
        self.notifier = notifier
        self.loader = loader
        self.arch = arch
        self.clock = clock
        self.state = NOT_ARMED
        self.reason = ""
        self.last_error = ""
        self.last_dump = ""
        self.counters = Counters()
        self.armed_fingerprint = ""
        self.on_change: Callable[[], None] = lambda: None
        self.on_dump_found: Callable[[str, str], None] = lambda path, cause: None

    # -- reading ----------------------------------------------------------------

    def overview(self) -> manager.Overview:
        return manager.overview(self.paths)

    def status_text(self) -> str:
        """The STATUS= line: ``armed: /var/crash on root filesystem, 256M reserved, ...``."""
        view = self.overview()
        parts = [view.target or "no valid configuration"]
        if view.reserved_bytes:
            parts.append(f"{view.reserved_bytes >> 20}M reserved")
        if view.image is not None:
            # an absolute time: a relative age would need a timer to stay true
            built = time.strftime("%Y-%m-%d %H:%M", time.localtime(view.image_mtime))
            parts.append(f"image built {built}")
        text = f"{self.state}: " + ", ".join(parts)
        if self.last_error:
            text += f"; last edit rejected: {self.last_error.splitlines()[0]}"
        elif self.reason and self.state != ARMED:
            text += f"; {self.reason}"
        return text

    def check_config(self) -> tuple[list[Problem], list[Problem]]:
        return manager.check_config(self.paths, self.arch)

    def crash_dir(self) -> Path:
        try:
            return self.paths.under_root(load_kdump_conf(self.paths).config.path)
        except KdumpError:
            return self.paths.var_crash

    def list_dumps(self) -> list[postcrash.Dump]:
        return postcrash.list_dumps(self.crash_dir())

    # -- arming -----------------------------------------------------------------

    def _set(self, state: str, reason: str = "") -> None:
        self.state = state
        self.reason = reason
        self.on_change()

    def _refresh_loaded(self) -> None:
        loaded = host.crash_loaded(self.paths)
        self._set(ARMED if loaded else NOT_ARMED, "" if loaded else "capture kernel not loaded")

    def startup(self) -> bool:
        """Arm at service start; False (the unit fails) when arming failed."""
        messages = JournalMessages(self.journal)
        self._set(BUILDING)
        self._import_raw(messages)
        # Dumps first: a configuration broken since the crash must not hide them.
        self.scan_dumps()
        try:
            manager.start(self.paths, messages, loader=self.loader)
        except manager.ArmingFailed as exc:
            unsupported = isinstance(exc.reason, manager.NotFeasible)
            self._set(UNSUPPORTED if unsupported else FAILED, user_message(exc.reason))
            if isinstance(exc.reason, ConfigError):
                self.last_error = str(exc.reason)
            self.journal.event(
                "arming-failed",
                f"kdump could not be armed: {user_message(exc.reason)}",
                priority=ERR,
            )
            return False
        self.armed_fingerprint = fingerprint(self.paths)
        self.last_error = ""
        self._refresh_loaded()
        self._remember_crash_dir()
        self.journal.event("armed", f"kdump {self.status_text()}", priority=INFO)
        return True

    def _remember_crash_dir(self) -> None:
        if host.crash_loaded(self.paths):
            postcrash.remember_dir(self.paths, self.crash_dir())

    def _import_raw(self, messages: JournalMessages) -> None:
        """Bring a raw-device dump home first, and say so with its own journal entry.

        A failure is left to the start that follows: it imports again, reports
        why and fails (the device holds the only copy of that dump).
        """
        try:
            with manager.instance_lock(self.paths, messages):
                imported = manager.import_pending_raw_dump(self.paths, messages)
        except KdumpError:
            return
        if imported is not None:
            shown = self.paths.shown(imported.directory)
            self.journal.event(
                "raw-imported",
                f"dump imported from the raw dump device into {shown}",
                priority=INFO,
                kdumpd_dump=shown,
            )

    def call(self, command: str) -> list[str]:
        """Run a use case for a D-Bus caller; return its lines, or raise CallFailed with them."""
        messages = JournalMessages(self.journal)
        function = {
            "start": manager.start,
            "stop": manager.stop,
            "restart": manager.restart,
            "reload": manager.reload,
        }.get(command)
        if command != "rebuild" and command != "stop":
            self._set(BUILDING)
        try:
            if command == "rebuild":
                manager.rebuild(self.paths, messages)
            elif function is not None:
                function(self.paths, messages, loader=self.loader)
            else:
                raise KdumpError(f"unknown use case {command!r}")
        except KdumpError as exc:
            self._refresh_loaded()
            reason = exc.reason if isinstance(exc, manager.ArmingFailed) else exc
            if isinstance(reason, ConfigError):
                self.last_error = str(reason)
            raise CallFailed(reason, messages.lines) from exc
        if command in ("start", "restart", "reload"):
            self.armed_fingerprint = fingerprint(self.paths)
            self.last_error = ""
        self._refresh_loaded()
        self._remember_crash_dir()
        self.notifier.status(self.status_text())
        return messages.lines

    def inputs_changed(self) -> bool:
        """A watched input settled after an edit: re-arm when its content changed.

        Returns True when a re-arm was attempted. A valid change re-arms through
        the restart use case, which rebuilds only when an input of the image
        changed; a broken one keeps the loaded kernel and sets LastError.
        """
        current = fingerprint(self.paths)
        if current == self.armed_fingerprint:
            return False
        self.armed_fingerprint = current
        if self.state not in (ARMED, FAILED):
            # Not armed on purpose (stopped) or unsupported: nothing to follow.
            return False
        self.notifier.reloading()
        self._set(BUILDING)
        messages = JournalMessages(self.journal)
        try:
            manager.restart(self.paths, messages, loader=self.loader)
        except manager.ArmingFailed as exc:
            self.counters.rejected_edits += 1
            self.last_error = user_message(exc.reason)
            self._refresh_loaded()
            self.journal.event(
                "config-rejected",
                f"configuration change rejected, {self.state_sentence()}: " f"{self.last_error}",
                priority=WARNING,
                kdumpd_error=self.last_error,
            )
        else:
            self.counters.rearms += 1
            self.last_error = ""
            self._refresh_loaded()
            self._remember_crash_dir()
            self.journal.event("armed", f"kdump re-armed after an edit ({self.status_text()})")
        self.notifier.reloaded(self.status_text())
        self.on_change()
        return True

    def state_sentence(self) -> str:
        return (
            "the capture kernel loaded before stays armed"
            if self.state == ARMED
            else "kdump is not armed"
        )

    def hotplug_settled(self, events: int) -> bool:
        """CPU or memory changed: reload so the crash kernel sees the new layout.

        Returns True when a reload ran. Nothing to do when the kernel updates
        the elfcorehdr itself, or when kdump is not armed.
        """
        if crash_hotplug_handled(self.paths) or self.state != ARMED:
            return False
        self.notifier.reloading()
        self._set(BUILDING)
        messages = JournalMessages(self.journal)
        try:
            manager.reload_loaded(self.paths, messages, loader=self.loader)
        except manager.ArmingFailed as exc:
            self.last_error = user_message(exc.reason)
            self._refresh_loaded()
            self.journal.event(
                "arming-failed",
                f"reload after hotplug failed, {self.state_sentence()}: {self.last_error}",
                priority=ERR,
            )
        else:
            self.counters.hotplug_reloads += 1
            self._refresh_loaded()
            self.journal.event(
                "hotplug-reloaded",
                f"kdump reloaded after CPU/memory hotplug ({events} events)",
                priority=INFO,
                kdumpd_hotplug_events=str(events),
            )
        self.notifier.reloaded(self.status_text())
        self.on_change()
        return True

    def shutdown(self) -> None:
        """Service stop: unload the capture kernel (as ``systemctl stop kdump`` always did)."""
        self.notifier.stopping()
        if self.state in (ARMED, BUILDING):
            try:
                manager.stop(self.paths, JournalMessages(self.journal), loader=self.loader)
            except KdumpError as exc:
                self.journal.line(user_message(exc), priority=ERR)

    # -- the next boot ----------------------------------------------------------

    def scan_dumps(self) -> list[postcrash.Dump]:
        """Announce dumps saved since the last run: report, journal, DumpFound; then retention."""
        found = postcrash.new_dumps(self.paths, self.crash_dir(), *postcrash.known_dirs(self.paths))
        for dump in found:
            report = postcrash.write_report(dump)
            shown = self.paths.shown(dump.directory)
            cause = report.cause or "unknown cause (no panic line in the saved kernel log)"
            self.journal.event(
                "dump-found",
                f"kernel crash dump saved in {shown}: {cause}",
                priority=WARNING,
                kdumpd_dump=shown,
                kdumpd_panic=report.cause or "",
                kdumpd_kernel=report.kernel_release or "",
            )
            self.last_dump = shown
            self.on_dump_found(shown, report.cause or "")
        if found:
            postcrash.mark_seen(self.paths, found)
            self.apply_retention()
            self.on_change()
        return found

    def apply_retention(self) -> None:
        try:
            sysconfig, _ = load_sysconfig(self.paths, self.arch)
        except KdumpError as exc:
            self.journal.line(f"retention skipped: {user_message(exc)}", priority=WARNING)
            return
        limits = retention.Limits(keep_dumps=sysconfig.keep_dumps, keep_bytes=sysconfig.keep_bytes)
        doomed = retention.to_delete(self.list_dumps(), limits)
        failed = dict((d.directory, err) for d, err in retention.delete(doomed))
        for dump in doomed:
            shown = self.paths.shown(dump.directory)
            if dump.directory in failed:
                self.journal.line(
                    f"could not delete old dump {shown}: {failed[dump.directory]}", priority=ERR
                )
                continue
            self.journal.event(
                "dump-deleted",
                f"deleted old dump {shown} ({dump.size_bytes >> 20} MiB) to keep "
                f"{limits.keep_dumps or 'any number of'} dumps"
                + (f" within {limits.keep_bytes >> 20} MiB" if limits.keep_bytes else ""),
                priority=INFO,
                kdumpd_dump=shown,
            )

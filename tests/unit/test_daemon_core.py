"""The daemon's decisions (kdumpd.daemon.core) over a fake tree, with the tree loader.

The image build is the recorder of test_manager (dracut is tested on its own);
journal and notify sinks are lists.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from kdumpd import manager
from kdumpd.daemon import core as daemon_core
from kdumpd.daemon import journal
from kdumpd.daemon.notify import Notifier
from kdumpd.paths import Paths
from tests.conftest import write
from tests.unit.test_daemon_parts import PANIC_LOG
from tests.unit.test_manager import (  # noqa: F401 (fixtures)
    BROKEN_CONF,
    GOOD_CONF,
    FakeDracut,
    dracut,
    system,
)


class Sinks:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.found: list[tuple[str, str]] = []

    def note(self, text: str) -> bool:
        self.notes.append(text)
        return True

    def ids(self) -> list[str]:
        return [e["MESSAGE_ID"] for e in self.entries if "MESSAGE_ID" in e]


@pytest.fixture
def sinks() -> Sinks:
    return Sinks()


def make_core(paths: Paths, sinks: Sinks) -> daemon_core.Core:
    core = daemon_core.Core(
        paths,
        journal=journal.Journal(sender=lambda **fields: sinks.entries.append(fields)),
        notifier=Notifier(sender=sinks.note),
        loader=manager.TreeLoader(),
        arch="x86_64",
    )
    core.on_dump_found = lambda path, cause: sinks.found.append((path, cause))
    return core


def test_startup_arms_in_the_tree(system: Paths, dracut: FakeDracut, sinks: Sinks) -> None:  # noqa: F811
    core = make_core(system, sinks)
    assert core.startup() is True
    assert core.state == daemon_core.ARMED
    assert system.kexec_crash_loaded.read_text() == "1\n"
    assert journal.ARMED in sinks.ids()
    assert core.status_text().startswith("armed: /var/crash on root filesystem, 256M reserved")
    assert dracut.builds == ["6.1.0-test-amd64"]


def test_startup_without_reservation_is_unsupported(
    system: Paths,  # noqa: F811
    dracut: FakeDracut,  # noqa: F811
    sinks: Sinks,
) -> None:
    system.kexec_crash_size.write_text("0\n")
    core = make_core(system, sinks)
    assert core.startup() is False
    assert core.state == daemon_core.UNSUPPORTED
    assert "No memory reserved" in core.reason
    assert journal.ARMING_FAILED in sinks.ids()


def test_startup_with_a_broken_file_fails_and_names_the_line(
    system: Paths,  # noqa: F811
    dracut: FakeDracut,  # noqa: F811
    sinks: Sinks,
) -> None:
    system.kdump_conf.write_text(BROKEN_CONF)
    core = make_core(system, sinks)
    assert core.startup() is False
    assert core.state == daemon_core.FAILED
    assert core.last_error.startswith("/etc/kdump.conf:3: ")


def test_edits_rearm_and_broken_edits_keep_the_kernel(
    system: Paths,  # noqa: F811
    dracut: FakeDracut,  # noqa: F811
    sinks: Sinks,
) -> None:
    core = make_core(system, sinks)
    assert core.startup()
    assert core.inputs_changed() is False  # nothing changed
    system.kdump_conf.write_text(GOOD_CONF.replace("-d 31", "-d 17"))
    assert core.inputs_changed() is True
    assert (core.counters.rearms, len(dracut.builds)) == (1, 2)
    system.kdump_conf.write_text(BROKEN_CONF)
    assert core.inputs_changed() is True
    assert core.state == daemon_core.ARMED
    assert core.last_error.startswith("/etc/kdump.conf:3: ")
    assert journal.CONFIG_REJECTED in sinks.ids()
    assert system.kexec_crash_loaded.read_text() == "1\n"
    system.kdump_conf.write_text(GOOD_CONF)
    assert core.inputs_changed() is True
    assert core.last_error == ""
    assert any(n.startswith("RELOADING=1") for n in sinks.notes)


def test_a_stopped_daemon_does_not_rearm_on_edits(
    system: Paths,  # noqa: F811
    dracut: FakeDracut,  # noqa: F811
    sinks: Sinks,
) -> None:
    core = make_core(system, sinks)
    assert core.startup()
    lines = core.call("stop")
    assert lines[-1] == manager.STOPPING_OK
    assert core.state == daemon_core.NOT_ARMED
    system.kdump_conf.write_text(GOOD_CONF.replace("-d 31", "-d 1"))
    assert core.inputs_changed() is False
    assert system.kexec_crash_loaded.read_text() == "0\n"


def test_a_failing_call_carries_kdumpctl_lines(
    system: Paths,  # noqa: F811
    dracut: FakeDracut,  # noqa: F811
    sinks: Sinks,
) -> None:
    core = make_core(system, sinks)
    assert core.startup()
    system.kdump_conf.write_text(BROKEN_CONF)
    with pytest.raises(daemon_core.CallFailed) as caught:
        core.call("restart")
    assert caught.value.lines[-2:] == [
        manager.STARTING_FAILED,
        "WARNING: the capture kernel loaded before is still armed; fix the error above "
        "and run the command again to load the new configuration",
    ]
    assert caught.value.dbus_name == "org.kdumpd.Error.InvalidConfig"
    assert core.state == daemon_core.ARMED


def test_new_dumps_are_announced_once_and_old_ones_retired(
    system: Paths,  # noqa: F811
    dracut: FakeDracut,  # noqa: F811
    sinks: Sinks,
) -> None:
    write(system.default_kdump, system.default_kdump.read_text() + "KDUMP_NUM_DUMPS=1\n")
    old = write(system.var_crash / "127.0.0.1-2026-11-01-10:00:00" / "vmcore", "old")
    os.utime(old, (1000, 1000))
    new = system.var_crash / "127.0.0.1-2026-11-30-10:00:00"
    write(new / "vmcore", "new")
    write(new / "vmcore-dmesg.txt", PANIC_LOG)
    core = make_core(system, sinks)
    assert core.startup()  # the dumps are announced at start, before arming
    assert len(sinks.found) == 2
    assert sinks.found[-1] == (
        "/var/crash/127.0.0.1-2026-11-30-10:00:00",
        "Kernel panic - not syncing: sysrq triggered crash",
    )
    entry = [e for e in sinks.entries if e.get("MESSAGE_ID") == journal.DUMP_FOUND][-1]
    assert entry["KDUMPD_PANIC"] == "Kernel panic - not syncing: sysrq triggered crash"
    assert (new / "crash-report.txt").is_file()
    assert not old.exists() and new.is_dir()  # KDUMP_NUM_DUMPS=1: the newest stays
    assert journal.DUMP_DELETED in sinks.ids()
    assert core.last_dump == "/var/crash/127.0.0.1-2026-11-30-10:00:00"
    assert core.scan_dumps() == []


def test_crash_hotplug_is_detected_not_versioned(system: Paths) -> None:  # noqa: F811
    assert daemon_core.crash_hotplug_handled(system) is False
    write(system.sys_cpu / "crash_hotplug", "1\n")
    assert daemon_core.crash_hotplug_handled(system) is True


def test_dumps_in_a_formerly_armed_dir_are_found_under_a_broken_config(
    system: Paths,  # noqa: F811
    dracut: FakeDracut,  # noqa: F811
    sinks: Sinks,
) -> None:
    """path was edited to /var/crash2 and armed, the file then broken, and the kernel crashed."""
    (system.root / "var/crash2").mkdir()
    core = make_core(system, sinks)
    assert core.startup()
    system.kdump_conf.write_text(GOOD_CONF.replace("/var/crash", "/var/crash2"))
    assert core.inputs_changed()
    system.kdump_conf.write_text(BROKEN_CONF)
    assert core.inputs_changed()
    dump = system.root / "var/crash2/127.0.0.1-2026-11-30-12:00:00"
    write(dump / "vmcore", "core")
    write(dump / "vmcore-dmesg.txt", PANIC_LOG)
    after_reboot = make_core(system, sinks)
    assert after_reboot.startup() is False  # the broken file fails arming ...
    assert sinks.found[-1][0] == "/var/crash2/127.0.0.1-2026-11-30-12:00:00"  # ... not the dump
    assert (dump / "crash-report.txt").is_file()


def test_hotplug_reloads_the_loaded_kernel_even_under_a_broken_file(
    system: Paths,  # noqa: F811
    dracut: FakeDracut,  # noqa: F811
    sinks: Sinks,
) -> None:
    core = make_core(system, sinks)
    assert core.startup()
    system.kdump_conf.write_text(BROKEN_CONF)
    assert core.inputs_changed()  # rejected, still armed
    assert core.hotplug_settled(8) is True
    assert core.counters.hotplug_reloads == 1
    assert journal.HOTPLUG_RELOADED in sinks.ids()
    assert system.kexec_crash_loaded.read_text() == "1\n"
    assert len(dracut.builds) == 1  # the same image, loaded again

"""kdumpd on a private system bus with the shipped policy, against a fake tree (issue 11 proof).

One daemon serves the module's tests in order: introspection, access control,
sd_notify, a config edit (one re-arm), a broken edit (LastError, still armed),
the fix, and kdumpctl going through the daemon.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dasbus.connection import AddressedMessageBus

from tests.support.daemon_env import (
    GOOD_CONF,
    REPO,
    WAIT_S,
    DaemonEnv,
    cleanup,
    start_bus,
)

pytestmark = pytest.mark.integration

XML = REPO / "dbus" / "org.kdumpd1.Manager.xml"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="module")
def env() -> Iterator[DaemonEnv]:
    running = start_bus()
    try:
        running.start_daemon()
        running.wait_for("READY=1")
        yield running
    finally:
        cleanup(running)


def proxy(env: DaemonEnv, interface: str = "org.kdumpd1.Manager") -> Any:
    bus = AddressedMessageBus(env.address)
    return bus.get_proxy("org.kdumpd1", "/org/kdumpd1", interface)


def prop(env: DaemonEnv, name: str) -> Any:
    return proxy(env, "org.freedesktop.DBus.Properties").Get("org.kdumpd1.Manager", name).unpack()


def members(xml_text: str) -> set[tuple[str, ...]]:
    """Methods, signals and properties of org.kdumpd1.Manager with their signatures."""
    root = ET.fromstring(xml_text)
    found: set[tuple[str, ...]] = set()
    for interface in root.iter("interface"):
        if interface.get("name") != "org.kdumpd1.Manager":
            continue
        for member in interface:
            args = tuple(
                f"{a.get('direction', 'in' if member.tag == 'method' else 'out')}:{a.get('type')}"
                for a in member.iter("arg")
            )
            found.add(
                (
                    member.tag,
                    member.get("name", ""),
                    member.get("type", ""),
                    member.get("access", ""),
                    *args,
                )
            )
    return found


def edit_and_settle(env: DaemonEnv, path: Path, text: str) -> str:
    """Write the way Cockpit does (new file renamed over the old), wait for the re-arm."""
    before = len(env.notes)
    temp = path.with_name(path.name + ".new")
    temp.write_text(text)
    os.replace(temp, path)
    note = env.wait_for("READY=1")
    reloading = [n for n in env.notes[before:] if "RELOADING=1" in n.splitlines()]
    assert len(reloading) == 1, env.notes[before:]
    return note


def test_ready_and_status_arrive_on_the_notify_socket(env: DaemonEnv) -> None:
    ready = next(n for n in env.notes if "READY=1" in n.splitlines())
    status = [line for line in ready.splitlines() if line.startswith("STATUS=")]
    assert status == [status[0]] and status[0].startswith(
        "STATUS=armed: /var/crash on root filesystem, 256M reserved"
    )
    assert (env.root / "sys/kernel/kexec_crash_loaded").read_text() == "1\n"
    assert env.builds == 1


def test_introspection_equals_the_checked_in_xml(env: DaemonEnv) -> None:
    exported = proxy(env, "org.freedesktop.DBus.Introspectable").Introspect()
    assert members(exported) == members(XML.read_text())
    assert members(XML.read_text())  # the file is not empty of members


def test_anyone_reads_state_but_only_root_stops(env: DaemonEnv) -> None:
    environ = env.env()
    read = subprocess.run(
        [
            *NOBODY,
            "dbus-send",
            "--system",
            "--print-reply",
            "--dest=org.kdumpd1",
            "/org/kdumpd1",
            "org.freedesktop.DBus.Properties.Get",
            "string:org.kdumpd1.Manager",
            "string:State",
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert read.returncode == 0, read.stderr
    assert '"armed"' in read.stdout
    stop = subprocess.run(
        [
            *NOBODY,
            "dbus-send",
            "--system",
            "--print-reply",
            "--dest=org.kdumpd1",
            "/org/kdumpd1",
            "org.kdumpd1.Manager.Stop",
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert stop.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in stop.stderr
    assert prop(env, "State") == "armed"
    assert (env.root / "sys/kernel/kexec_crash_loaded").read_text() == "1\n"


def test_a_config_edit_rearms_once(env: DaemonEnv) -> None:
    conf = env.root / "etc/kdump.conf"
    builds = env.builds
    # an editor's several writes, then the rename: one burst, one re-arm
    conf.write_text(GOOD_CONF)
    conf.write_text(GOOD_CONF + "# comment\n")
    edit_and_settle(env, conf, GOOD_CONF.replace("-d 31", "-d 17"))
    assert env.builds == builds + 1
    assert prop(env, "State") == "armed"
    assert prop(env, "LastError") == ""


def test_status_answers_while_an_image_builds(env: DaemonEnv) -> None:
    """dracut runs on the worker thread: properties and read-only calls still answer."""
    conf = env.root / "etc/kdump.conf"
    env.hold.touch()
    try:
        before = len(env.notes)
        temp = conf.with_name("kdump.conf.new")
        temp.write_text(GOOD_CONF.replace("-d 31", "-d 7"))
        os.replace(temp, conf)
        env.wait_for("RELOADING=1")
        # the build is held: the daemon is in the middle of re-arming
        assert prop(env, "State") == "building"
        assert proxy(env).CheckConfig() == []
    finally:
        env.hold.unlink()
    env.wait_for("READY=1")
    assert sum("RELOADING=1" in n.splitlines() for n in env.notes[before:]) == 1
    assert prop(env, "State") == "armed"


def test_same_content_written_again_changes_nothing(env: DaemonEnv) -> None:
    conf = env.root / "etc/kdump.conf"
    before = len(env.notes)
    temp = conf.with_name("kdump.conf.new")
    temp.write_text(conf.read_text())
    os.replace(temp, conf)
    # A later real edit proves the daemon saw the first one and did nothing for it.
    edit_and_settle(env, conf, GOOD_CONF.replace("-d 31", "-d 1"))
    assert sum("RELOADING=1" in n.splitlines() for n in env.notes[before:]) == 1


def test_a_broken_edit_keeps_kdump_armed_and_names_the_line(env: DaemonEnv) -> None:
    conf = env.root / "etc/kdump.conf"
    builds = env.builds
    note = edit_and_settle(env, conf, GOOD_CONF + "bogus_option 1\n")
    assert prop(env, "State") == "armed"
    assert prop(env, "LastError").startswith("/etc/kdump.conf:3: ")
    assert "last edit rejected: /etc/kdump.conf:3:" in note
    assert env.builds == builds
    assert (env.root / "sys/kernel/kexec_crash_loaded").read_text() == "1\n"
    status = subprocess.run(
        [sys.executable, "-m", "kdumpd.cli", "status"],
        env=env.env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert "kdump: WARNING: /etc/kdump.conf:3: " in status.stderr
    rows = proxy(env).CheckConfig()
    assert ("error", "/etc/kdump.conf", 3) in [tuple(r[:3]) for r in rows]

    # Fixing the file clears the error. (Here, not in a test of its own: the daemon is
    # shared by the module's tests, and whichever test runs next needs a valid file.)
    edit_and_settle(env, env.root / "etc/kdump.conf", GOOD_CONF)
    assert prop(env, "LastError") == ""
    assert prop(env, "State") == "armed"
    assert proxy(env).CheckConfig() == []


def test_kdumpctl_goes_through_the_daemon(env: DaemonEnv) -> None:
    """No --root: kdumpctl finds org.kdumpd1 on the bus and the daemon does the work."""
    builds = env.builds
    result = subprocess.run(
        [sys.executable, "-m", "kdumpd.cli", "restart"],
        env=env.env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == "kdump: Starting kdump: [OK]"
    assert "kdump: Stopping kdump: [OK]" in lines
    # the tree loader ran in the daemon: the host's kexec was never called
    assert any("in the tree" in line for line in lines)
    assert env.builds == builds
    status = subprocess.run(
        [sys.executable, "-m", "kdumpd.cli", "stop"],
        env=env.env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert prop(env, "State") == "not-armed"
    assert (env.root / "sys/kernel/kexec_crash_loaded").read_text() == "0\n"


def test_a_restart_right_after_an_edit_builds_once_and_arms_the_newest_file(
    env: DaemonEnv,
) -> None:
    """Cockpit and Ansible write kdump.conf, then restart the unit at once (clients.md R7/R8)."""
    assert env.daemon is not None
    subprocess.run(
        [sys.executable, "-m", "kdumpd.cli", "start"],
        env=env.env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    )
    builds = env.builds
    conf = env.root / "etc/kdump.conf"
    newest = GOOD_CONF.replace("-d 31", "-d 23")
    temp = conf.with_name("kdump.conf.new")
    temp.write_text(newest)
    os.replace(temp, conf)
    env.daemon.send_signal(signal.SIGTERM)  # systemctl restart: stop ...
    assert env.daemon.wait(timeout=WAIT_S) == 0
    env.start_daemon()  # ... and start
    env.wait_for("READY=1")
    assert env.builds == builds + 1
    manifest = json.loads(
        (env.root / "var/lib/kdumpd/initramfs-6.1.0-test-amd64kdump.manifest.json").read_text()
    )
    assert manifest["inputs"]["kdump.conf"] == hashlib.sha256(newest.encode()).hexdigest()
    assert prop(env, "State") == "armed"

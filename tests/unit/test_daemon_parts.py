"""The daemon's small parts: notify never raises, journal fields, dumps, reports, retention."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from kdumpd.config.sysconfig import load_sysconfig
from kdumpd.daemon import journal
from kdumpd.daemon.notify import Notifier
from kdumpd.paths import Paths
from kdumpd.postcrash import newdumps as dumps
from kdumpd.postcrash import retention
from tests.conftest import write

PANIC_LOG = """[   10.000000] Linux version 6.1.0-test-amd64
[   42.123456] sysrq: Trigger a crash
[   42.123500] Kernel panic - not syncing: sysrq triggered crash
[   42.123600] CPU: 1 PID: 812 Comm: bash Not tainted 6.1.0-test-amd64 #1
[   42.123700] Call Trace:
[   42.123701]  <TASK>
[   42.123702]  dump_stack_lvl+0x44/0x5c
[   42.123703]  panic+0x118/0x2f0
[   42.123704]  </TASK>
"""


def test_notify_reaches_a_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    assert Notifier().ready("armed: test") is True
    assert server.recv(4096).decode() == "READY=1\nSTATUS=armed: test"
    server.close()


def test_notify_never_raises_on_a_bad_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert Notifier().status("x") is False

    def broken(text: str) -> bool:
        raise OSError(111, "Connection refused")

    assert Notifier(sender=broken).ready("x") is False


def test_journal_events_carry_ids_and_the_unit() -> None:
    sent: list[dict[str, Any]] = []
    log = journal.Journal(sender=lambda **fields: sent.append(fields))
    log.event("dump-found", "dump in /var/crash/x", kdumpd_dump="/var/crash/x")
    messages = journal.JournalMessages(log)
    messages.warn("two\nlines")
    assert sent[0]["MESSAGE_ID"] == journal.DUMP_FOUND
    assert sent[0]["KDUMPD_DUMP"] == "/var/crash/x"
    assert {e["OBJECT_SYSTEMD_UNIT"] for e in sent} == {"kdump.service"}
    assert [e["MESSAGE"] for e in sent[1:]] == ["WARNING: two", "lines"]
    assert {e["SYSLOG_IDENTIFIER"] for e in sent[1:]} == {"kdumpctl"}
    assert messages.lines == ["WARNING: two", "lines"]


def test_every_message_id_is_in_the_catalog() -> None:
    catalog = (Path(__file__).resolve().parents[2] / "units" / "kdumpd.catalog").read_text()
    for message_id in journal.MESSAGE_IDS.values():
        assert f"-- {message_id}\n" in catalog


def _dump(crash: Path, name: str, size: int, mtime: int, log: str = "") -> Path:
    directory = crash / name
    write(directory / "vmcore", "x" * size)
    if log:
        write(directory / "vmcore-dmesg.txt", log)
    os.utime(directory / "vmcore", (mtime, mtime))
    return directory


def test_new_dumps_get_a_report_once(fake_root: Paths) -> None:
    crash = fake_root.var_crash
    _dump(crash, "127.0.0.1-2026-11-30-10:00:00", 10, 1000, PANIC_LOG)
    found = dumps.new_dumps(fake_root, crash)
    assert [d.directory.name for d in found] == ["127.0.0.1-2026-11-30-10:00:00"]
    report = dumps.write_report(found[0])
    assert report.cause == "Kernel panic - not syncing: sysrq triggered crash"
    text = (found[0].directory / dumps.REPORT_TEXT).read_text()
    assert "bash (pid 812, cpu 1)" in text and "panic+0x118/0x2f0" in text
    assert (
        '"kernel_release": "6.1.0-test-amd64"'
        in (found[0].directory / dumps.REPORT_JSON).read_text()
    )
    dumps.mark_seen(fake_root, found)
    assert dumps.new_dumps(fake_root, crash) == []


def test_retention_keeps_the_newest_within_count_and_bytes(fake_root: Paths) -> None:
    crash = fake_root.var_crash
    for index in range(5):
        _dump(crash, f"127.0.0.1-2026-11-3{index}", 8192, 1000 + index)
    listed = dumps.list_dumps(crash)
    doomed = retention.to_delete(listed, retention.Limits(keep_dumps=2))
    assert [d.directory.name for d in doomed] == [f"127.0.0.1-2026-11-3{i}" for i in range(3)]
    by_bytes = retention.to_delete(listed, retention.Limits(keep_bytes=1))
    assert listed[-1] not in by_bytes and len(by_bytes) == 4  # never the newest
    assert retention.delete(doomed) == []
    assert len(dumps.list_dumps(crash)) == 2


def test_retention_settings_from_the_variables_file(fake_root: Paths) -> None:
    write(fake_root.default_kdump, 'KDUMP_NUM_DUMPS="3"\nKDUMPD_KEEP_BYTES=2G\n')
    config, warnings = load_sysconfig(fake_root, "x86_64")
    assert (config.keep_dumps, config.keep_bytes, warnings) == (3, 2 << 30, ())
    write(fake_root.default_kdump, "KDUMPD_KEEP_BYTES=lots\n")
    with pytest.raises(Exception, match="/etc/default/kdump:1: KDUMPD_KEEP_BYTES must be"):
        load_sysconfig(fake_root, "x86_64")

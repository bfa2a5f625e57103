"""Listing saved dumps, their crash reports, and kdumpctl dmesg/dumps on a fake root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdumpd import cli
from kdumpd.config.kdumpconf import DumpTarget, KdumpConfig
from kdumpd.paths import Paths
from kdumpd.postcrash.dumps import crash_report, dump_roots, list_dumps
from tests.conftest import write
from tests.support.dumpbuilders import (
    LAYOUT_5_11,
    new_image,
    put_lockless_ring,
    sample_lines,
    write_elf,
    write_kdump,
)

X86 = os.uname_result(("Linux", "host", "6.1.0-28-amd64", "#1 SMP", "x86_64"))
PANIC = "Kernel panic - not syncing: sysrq triggered crash"
WARNING = "The kernel version is not supported."


def _metadata(**extra: object) -> str:
    body = {
        "format": "kdumpd-capture-metadata",
        "result": "success",
        "crash_time": "2026-11-30T10:00:00+00:00",
        "kernel_release": {"plan": "6.1.0-test-amd64", "vmcoreinfo": "6.1.0-test-amd64"},
        "collector": {
            "argv": ["makedumpfile", "-l", "-d", "31", "/proc/vmcore", "/x/vmcore-incomplete"],
            "warnings": [WARNING],
        },
        "fallback": {"used": False},
        **extra,
    }
    return json.dumps(body)


@pytest.fixture
def crash_tree(fake_root: Paths) -> Paths:
    image = new_image()
    put_lockless_ring(image, LAYOUT_5_11, sample_lines(20), reserved_tail_record=False)
    write(fake_root.kdump_conf, "")
    base = fake_root.var_crash
    # 1. saved by the capture agent, with metadata and vmcore-dmesg.txt
    one = base / "127.0.0.1-2026-11-30-10:00:05"
    one.mkdir(parents=True)
    write_kdump(image, one / "vmcore", "lzo")
    write(one / "kdumpd-metadata.json", _metadata())
    write(one / "vmcore-dmesg.txt", f"[    1.000000] {PANIC}\n")
    # 2. an older dump with no metadata and no log file: everything from the vmcore
    image.crash_time = 1_600_000_000
    two = base / "127.0.0.1-2020-09-13-12:26:40"
    two.mkdir()
    write_elf(image, two / "vmcore")
    # 3. the newest, cut off: vmcore-incomplete and a failed capture
    three = base / "127.0.0.1-2026-12-01-08:00:00"
    three.mkdir()
    write(three / "vmcore-incomplete", "KDUMP   ")
    write(
        three / "kdumpd-metadata.json",
        _metadata(
            result="failure",
            failure_reason="No space left on device",
            crash_time="2026-12-01T08:00:00+00:00",
        ),
    )
    # not a dump directory
    (base / "lost+found").mkdir()
    return fake_root


def test_list_dumps_newest_first_with_cause_and_state(crash_tree: Paths) -> None:
    found = list_dumps(crash_tree, KdumpConfig())
    assert [d.directory.name for d in found] == [
        "127.0.0.1-2026-12-01-08:00:00",
        "127.0.0.1-2026-11-30-10:00:05",
        "127.0.0.1-2020-09-13-12:26:40",
    ]
    newest, saved, old = found
    assert not newest.complete
    assert any("No space left" in p for p in newest.problems)
    assert any(
        "not a kdump-compressed file" in p or "not a crash dump" in p or "bitmaps" in p
        for p in newest.problems
    )
    assert saved.complete and saved.cause == PANIC
    assert saved.kernel_release == "6.1.0-test-amd64"
    assert saved.saved_by == "makedumpfile -l -d 31"
    assert saved.collector_warnings == (WARNING,)
    # No metadata, no log file: release, time and cause come from the vmcore itself.
    assert old.complete and old.cause == PANIC and old.kernel_release == "6.1.0-test-amd64"
    assert old.crash_time is not None and old.crash_time.year == 2020
    assert old.saved_by == "ELF"


def test_crash_report_names_collector_warnings(crash_tree: Paths) -> None:
    saved = list_dumps(crash_tree, KdumpConfig())[1]
    text = crash_report(saved)
    assert "state:     complete" in text
    assert f"cause:   {PANIC}" in text
    assert "the collector warned" in text and WARNING in text


def test_dump_roots_for_targets_elsewhere(fake_root: Paths) -> None:
    roots, notes = dump_roots(fake_root, KdumpConfig(target=DumpTarget("ssh", "u@server")))
    assert roots == [fake_root.var_crash]
    assert "ssh target (u@server)" in notes[0]
    write(fake_root.proc_mounts, "")
    roots, notes = dump_roots(fake_root, KdumpConfig(target=DumpTarget("ext4", "UUID=abc")))
    assert roots == [fake_root.var_crash] and "not mounted" in notes[0]
    roots, _ = dump_roots(fake_root, KdumpConfig(path="/srv/dumps"))
    assert roots == [fake_root.under_root("/srv/dumps"), fake_root.var_crash]


def run(capsys: pytest.CaptureFixture[str], root: Paths, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["--root", str(root.root), *argv], uname=X86)
    out, err = capsys.readouterr()
    return code, out, err


def test_kdumpctl_dumps_json_and_text(
    crash_tree: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, crash_tree, "dumps", "--json")
    assert code == 0
    dumps = json.loads(out)["dumps"]
    assert [d["state"] for d in dumps] == ["incomplete", "complete", "complete"]
    assert dumps[1]["cause"] == PANIC and dumps[1]["kernel_release"] == "6.1.0-test-amd64"
    code, out, _ = run(capsys, crash_tree, "dumps")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("CRASH TIME") and len(lines) == 4
    assert "incomplete" in lines[1] and PANIC in lines[2]


def test_kdumpctl_dumps_show(crash_tree: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, crash_tree, "dumps", "show", "127.0.0.1-2026-11-30-10:00:05")
    assert code == 0 and WARNING in out and PANIC in out
    code, _, err = run(capsys, crash_tree, "dumps", "show", "nonesuch")
    assert code == 1 and "nonesuch: no such dump directory" in err
    code, _, err = run(capsys, crash_tree, "dumps", "nonesuch")
    assert code == 2 and "'show'" in err


def test_kdumpctl_dmesg_file_and_directory(
    crash_tree: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = crash_tree.var_crash / "127.0.0.1-2026-11-30-10:00:05"
    code, from_file, _ = run(capsys, crash_tree, "dmesg", str(directory / "vmcore"))
    assert code == 0 and from_file.endswith(f"] {PANIC}\n")
    code, from_dir, _ = run(capsys, crash_tree, "dmesg", str(directory))
    assert code == 0 and from_dir == from_file
    code, out, _ = run(capsys, crash_tree, "dmesg", str(directory), "--json")
    body = json.loads(out)
    assert body["text"] == from_file and body["format"] == "kdump-compressed"


def test_kdumpctl_dmesg_refuses_what_is_not_a_dump(
    fake_root: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = write(tmp_path / "notes.txt", "hello\n" * 100)
    code, out, err = run(capsys, fake_root, "dmesg", str(bogus))
    assert code == 1 and out == "" and "not a crash dump" in err
    code, _, err = run(capsys, fake_root, "dmesg", str(tmp_path / "missing"))
    assert code == 1 and "no such dump file or directory" in err
    code, _, err = run(capsys, fake_root, "dmesg", str(tmp_path))
    assert code == 1 and "no dump file in this directory" in err

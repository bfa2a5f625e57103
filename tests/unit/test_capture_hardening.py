"""The capture side under hostile and broken input (issue 8, findings 2, 3 and 8)."""

from __future__ import annotations

import errno
import io
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest

from kdumpd import proc
from kdumpd.capture.agent import CaptureContext, run_capture
from kdumpd.capture.log import CaptureLog
from kdumpd.capture.ssh import fresh_directory_command
from kdumpd.contract.plan import PLAN_VERSION, CapturePlan, FsTarget, MountSpec
from kdumpd.paths import Paths
from tests.conftest import ProgramStub, write
from tests.support.synth import CoreSpec, generate_core

WHEN = datetime(2024, 6, 23, 21, 27, 26)
NAME = "127.0.0.1-2024-06-23-21:27:26"
COLLECTOR = ("makedumpfile", "-l", "--message-level", "7", "-d", "31")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def vmcore(tmp_path: Path) -> Path:
    return generate_core(tmp_path / "vmcore", CoreSpec(data_pages=4, zero_pages=4)).path


def capture(paths: Paths, vmcore: Path, plan: CapturePlan) -> tuple[int, list[str], str]:
    actions: list[str] = []
    console = io.StringIO()
    ctx = CaptureContext(
        paths=paths,
        plan=plan,
        vmcore=vmcore,
        execute=actions.append,
        log=CaptureLog(console=console),
        now=lambda: WHEN,
        kernel_log=lambda: "",
    )
    return run_capture(ctx), actions, console.getvalue()


def collector_writes(argv: Sequence[str]) -> proc.Completed:
    Path(argv[-1]).write_bytes(b"KDUMP   data")
    return proc.Completed(tuple(argv), 0, "", "")


def plan(**changes: object) -> CapturePlan:
    fields: dict[str, object] = {
        "kernel_release": "6.1.0-synthetic-amd64",
        "target": FsTarget(path="/var/crash"),
        "core_collector": COLLECTOR,
        "failure_action": "reboot",
        "final_action": "poweroff",
    }
    fields.update(changes)
    return CapturePlan(**fields)  # type: ignore[arg-type]


# -- 3: the dump directory trusted what was there -----------------------------------


def test_planted_directory_with_symlinks_is_never_written_through(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    shadow = write(fake_root.under_root("/etc/shadow"), "root:secret\n")
    planted = fake_root.var_crash / NAME
    planted.mkdir(parents=True)
    for name in ("kdumpd-metadata.json", "kexec-dmesg.log", "vmcore-incomplete", "vmcore"):
        (planted / name).symlink_to(shadow)
    programs.expect("vmcore-dmesg", stdout="[0.0] log\n")
    programs.expect_call("makedumpfile", collector_writes)

    code, _, _ = capture(fake_root, vmcore, plan())

    assert code == 0
    assert shadow.read_text() == "root:secret\n"
    fresh = fake_root.var_crash / f"{NAME}-1"
    assert sorted(p.name for p in fresh.iterdir()) == [
        "kdumpd-metadata.json",
        "kexec-dmesg.log",
        "vmcore",
        "vmcore-dmesg.txt",
    ]
    assert json.loads((fresh / "kdumpd-metadata.json").read_text())["result"] == "success"
    assert all(p.is_symlink() for p in planted.iterdir())  # left alone, not "cleaned"


def test_two_captures_in_the_same_second_keep_both(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    fake_root.var_crash.mkdir(parents=True)
    for _ in range(2):
        programs.expect("vmcore-dmesg", stdout="[0.0] log\n")
        programs.expect_call("makedumpfile", collector_writes)
        assert capture(fake_root, vmcore, plan())[0] == 0
    assert sorted(p.name for p in fake_root.var_crash.iterdir()) == [NAME, f"{NAME}-1"]


def test_planted_symlink_as_the_dump_directory_itself(
    fake_root: Paths, programs: ProgramStub, vmcore: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fake_root.var_crash.mkdir(parents=True)
    (fake_root.var_crash / NAME).symlink_to(elsewhere)
    programs.expect("vmcore-dmesg")
    programs.expect_call("makedumpfile", collector_writes)
    assert capture(fake_root, vmcore, plan())[0] == 0
    assert list(elsewhere.iterdir()) == []
    assert (fake_root.var_crash / f"{NAME}-1" / "vmcore").is_file()


# -- 8: dump_to_rootfs on the filesystem that just filled up ---------------------------


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_full_target_on_the_root_filesystem_keeps_the_first_attempt(
    number: int, fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    write(fake_root.proc_mounts, "36 1 8:1 / /sysroot rw,relatime - ext4 /dev/sda1 rw\n")
    root_fs = MountSpec(device="/dev/sda1", mountpoint="/sysroot", fstype="ext4")
    fake_root.under_root("/sysroot/var/crash").mkdir(parents=True)

    def collector_fills_the_disk(argv: Sequence[str]) -> proc.Completed:
        Path(argv[-1]).write_bytes(b"KDUMP   partial")
        return proc.Completed(tuple(argv), 1, "", f"write error: {os.strerror(number)}\n")

    programs.expect("vmcore-dmesg")
    programs.expect_call("makedumpfile", collector_fills_the_disk)
    the_plan = plan(
        target=FsTarget(path="/var/crash", mount=root_fs),
        failure_action="dump_to_rootfs",
        rootfs=root_fs,
        rootfs_path="/var/crash",
    )

    code, actions, console = capture(fake_root, vmcore, the_plan)

    assert code == 1
    assert actions == ["poweroff"]  # final_action after dump_to_rootfs
    dumps = list(fake_root.under_root("/sysroot/var/crash").iterdir())
    assert [d.name for d in dumps] == [NAME]  # no second directory, no second copy
    assert (dumps[0] / "vmcore-incomplete").read_bytes() == b"KDUMP   partial"
    meta = json.loads((dumps[0] / "kdumpd-metadata.json").read_text())
    assert meta["fallback"]["used"] is False
    assert meta["failure_reason"].startswith(f"{errno.errorcode[number]}: the dump target is full")
    assert "dump_to_rootfs skipped" in console
    assert [Path(c[0]).name for c in programs.calls].count("makedumpfile") == 1


def test_dump_to_rootfs_still_runs_when_another_filesystem_filled_up(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    write(
        fake_root.proc_mounts,
        "36 1 8:1 / /sysroot rw - ext4 /dev/sda1 rw\n37 1 8:2 / /d rw - xfs /dev/vdb rw\n",
    )
    fake_root.under_root("/sysroot/var/crash").mkdir(parents=True)
    fake_root.under_root("/d/crash").mkdir(parents=True)

    def full(argv: Sequence[str]) -> proc.Completed:
        return proc.Completed(tuple(argv), 1, "", "No space left on device\n")

    programs.expect("vmcore-dmesg")
    programs.expect_call("makedumpfile", full)
    programs.expect("vmcore-dmesg")
    programs.expect_call("makedumpfile", collector_writes)
    the_plan = plan(
        target=FsTarget(path="/crash", mount=MountSpec("/dev/vdb", "/d", "xfs")),
        failure_action="dump_to_rootfs",
        rootfs=MountSpec(device="/dev/sda1", mountpoint="/sysroot", fstype="ext4"),
        rootfs_path="/var/crash",
    )
    assert capture(fake_root, vmcore, the_plan)[0] == 1
    saved = fake_root.under_root(f"/sysroot/var/crash/{NAME}")
    assert (saved / "vmcore").read_bytes() == b"KDUMP   data"


# -- 2: a hook's output that is not UTF-8 ----------------------------------------------


def run_agent_with_hooks(tmp_path: Path) -> tuple[subprocess.CompletedProcess[bytes], Path, bytes]:
    """The agent's CLI with real hooks: one prints bytes that are not UTF-8, one has no #!."""
    root = tmp_path / "root"
    (root / "var" / "crash").mkdir(parents=True)
    hooks = root / "etc" / "kdump" / "pre.d"
    hooks.mkdir(parents=True)
    (hooks / "10-bytes").write_bytes(b"#!/bin/sh\nprintf 'caf\\351 \\377\\376 done\\n'\nexit 0\n")
    (hooks / "20-no-interpreter").write_text("echo this file has no interpreter line\n")
    for hook in hooks.iterdir():
        hook.chmod(0o755)
    core = generate_core(tmp_path / "vmcore", CoreSpec(data_pages=8, zero_pages=8))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        json.dumps(
            {
                "version": PLAN_VERSION,
                "kernel_release": "6.1.0-synthetic-amd64",
                "target": {"kind": "fs", "path": "/var/crash", "mount": None},
                # a collector that fails: the stdlib fallback copy saves the core
                "core_collector": ["false"],
                "failure_action": "reboot",
                "final_action": "poweroff",
                "pre_d": ["/etc/kdump/pre.d/10-bytes", "/etc/kdump/pre.d/20-no-interpreter"],
            }
        )
    )
    argv = [sys.executable, "-m", "kdumpd.capture", "--root", str(root)]
    argv += ["--plan", str(plan_file), "--vmcore", str(core.path), "--dry-run-actions"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=120, check=False)
    (directory,) = (root / "var" / "crash").iterdir()
    return done, directory, core.path.read_bytes()


def hook_results(directory: Path) -> dict[str, dict[str, object]]:
    meta = json.loads((directory / "kdumpd-metadata.json").read_text())
    return {hook["path"]: hook for hook in meta["hooks"]}


@pytest.mark.integration
def test_hooks_printing_bytes_or_without_interpreter_do_not_lose_the_dump(tmp_path: Path) -> None:
    done, directory, core = run_agent_with_hooks(tmp_path)
    assert b"Traceback" not in done.stderr
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout.decode().strip().splitlines()[-1] == "ACTION: poweroff"
    assert (directory / "vmcore").read_bytes() == core
    results = hook_results(directory)
    assert sorted(results) == ["/etc/kdump/pre.d/10-bytes", "/etc/kdump/pre.d/20-no-interpreter"]
    failed = results["/etc/kdump/pre.d/20-no-interpreter"]
    assert failed["returncode"] != 0
    assert failed["error"]


@pytest.mark.integration
def test_hook_printing_bytes_runs_to_its_exit_status(tmp_path: Path) -> None:
    done, directory, _ = run_agent_with_hooks(tmp_path)
    assert hook_results(directory)["/etc/kdump/pre.d/10-bytes"]["returncode"] == 0
    assert b"done" in (directory / "kexec-dmesg.log").read_bytes()


# -- 3, ssh side: the server's shell creates a fresh directory, never writes through links --


@pytest.mark.integration
def test_server_side_directory_and_writes_never_follow_planted_links(tmp_path: Path) -> None:
    base = tmp_path / "it's crash"
    wanted = str(base / "10.0.2.15-2024-06-23-21:27:26")
    secret = write(tmp_path / "shadow", "root:secret\n")
    base.mkdir()
    Path(wanted).symlink_to(secret.parent)  # a planted link where the directory would go
    first = proc.run(["sh", "-c", fresh_directory_command(wanted)]).stdout.strip()
    second = proc.run(["sh", "-c", fresh_directory_command(wanted)]).stdout.strip()
    assert (first, second) == (f"{wanted}-1", f"{wanted}-2")
    (Path(first) / "vmcore-incomplete").symlink_to(secret)
    command = "umask 0077 && set -C && dd bs=512 >" + shlex.quote(f"{first}/{{}}")
    linked = proc.run(
        ["sh", "-c", command.format("vmcore-incomplete")], input="data", ok_codes=range(256)
    )
    assert linked.returncode != 0
    assert secret.read_text() == "root:secret\n"
    proc.run(["sh", "-c", command.format("fresh")], input="data")
    assert (Path(first) / "fresh").read_text() == "data"

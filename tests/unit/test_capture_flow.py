"""The capture flow with stubbed programs: hooks, actions, naming, permissions, mounts."""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from kdumpd import proc
from kdumpd.capture.agent import CaptureContext, run_capture, run_error_handler
from kdumpd.capture.base import wait_for_device
from kdumpd.capture.log import CaptureLog
from kdumpd.contract.layout import dump_dir_name
from kdumpd.contract.plan import CapturePlan, FsTarget, MountSpec
from kdumpd.errors import TargetError
from kdumpd.paths import Paths
from tests.conftest import ProgramStub, write
from tests.support.synth import CoreSpec, generate_core

WHEN = datetime(2024, 6, 23, 21, 27, 26)
COLLECTOR = ("makedumpfile", "-l", "--message-level", "7", "-d", "31")


def make_plan(**changes: Any) -> CapturePlan:
    base: dict[str, Any] = {
        "kernel_release": "6.1.0-synthetic-amd64",
        "target": FsTarget(path="/var/crash"),
        "core_collector": COLLECTOR,
        "failure_action": "reboot",
        "final_action": "poweroff",
    }
    base.update(changes)
    return CapturePlan(**base)


def collector_writes(content: bytes = b"KDUMP   data") -> Any:
    """A stub makedumpfile that writes its output file like the real one."""

    def answer(argv: Sequence[str]) -> proc.Completed:
        Path(argv[-1]).write_bytes(content)
        return proc.Completed(tuple(argv), 0, "makedumpfile Completed.\n", "")

    return answer


class Agent:
    def __init__(self, root: Paths, vmcore: Path, plan: CapturePlan) -> None:
        self.actions: list[str] = []
        self.console = io.StringIO()
        self.ctx = CaptureContext(
            paths=root,
            plan=plan,
            vmcore=vmcore,
            execute=self.actions.append,
            log=CaptureLog(console=self.console),
            now=lambda: WHEN,
            kernel_log=lambda: "crash kernel dmesg\n",
        )

    def run(self) -> int:
        return run_capture(self.ctx)


@pytest.fixture
def vmcore(tmp_path: Path) -> Path:
    return generate_core(tmp_path / "vmcore", CoreSpec(data_pages=4, zero_pages=4)).path


def dump_dir(root: Paths) -> Path:
    return root.var_crash / "127.0.0.1-2024-06-23-21:27:26"


def test_success_names_dir_saves_files_and_runs_final_action(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    programs.expect("vmcore-dmesg", stdout="[0.0] hello\n")
    programs.expect_call("makedumpfile", collector_writes())
    agent = Agent(fake_root, vmcore, make_plan())
    assert agent.run() == 0
    d = dump_dir(fake_root)
    assert sorted(p.name for p in d.iterdir()) == [
        "kdumpd-metadata.json",
        "kexec-dmesg.log",
        "vmcore",
        "vmcore-dmesg.txt",
    ]
    assert (d / "vmcore").read_bytes() == b"KDUMP   data"
    assert agent.actions == ["poweroff"]
    assert programs.calls[1][-2:] == (str(vmcore), str(d / "vmcore-incomplete"))
    meta = json.loads((d / "kdumpd-metadata.json").read_text())
    assert meta["result"] == "success"
    assert meta["kernel_release"] == {
        "plan": "6.1.0-synthetic-amd64",
        "vmcoreinfo": "6.1.0-synthetic-amd64",
    }
    assert meta["fallback"]["used"] is False
    assert meta["vmcore"]["size"] == len(b"KDUMP   data")
    assert [s["name"] for s in meta["steps"]] == ["prepare", "dmesg", "collector", "sync"]
    assert "crash kernel dmesg" in (d / "kexec-dmesg.log").read_text()


def test_files_are_0600_and_dump_dir_0700(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    programs.expect("vmcore-dmesg")
    programs.expect_call("makedumpfile", collector_writes())
    Agent(fake_root, vmcore, make_plan()).run()
    d = dump_dir(fake_root)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name


def test_hooks_run_in_order_with_dump_status(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    for name in ("pre", "10-a", "20-b", "10-post", "post"):
        programs.expect(name)
    programs.expect("vmcore-dmesg")
    programs.expect_call("makedumpfile", collector_writes())
    plan = make_plan(
        kdump_pre="/bin/pre",
        pre_d=("/etc/kdump/pre.d/10-a", "/etc/kdump/pre.d/20-b"),
        post_d=("/etc/kdump/post.d/10-post",),
        kdump_post="/bin/post",
    )
    Agent(fake_root, vmcore, plan).run()
    names = [(Path(c[0]).name, c[1:]) for c in programs.calls]
    assert names[:3] == [("pre", ()), ("10-a", ()), ("20-b", ())]
    assert names[-2:] == [("10-post", ("0",)), ("post", ("0",))]


def test_failed_dump_passes_status_1_runs_emergency_then_failure_action(
    fake_root: Paths, programs: ProgramStub, vmcore: Path, tmp_path: Path
) -> None:
    # The target path is a file: the dump directory cannot be made.
    write(fake_root.under_root("/var/crash"), "not a directory")
    for name in ("10-post", "post", "10-emerg", "emerg"):
        programs.expect(name)
    plan = make_plan(
        post_d=("/etc/kdump/post.d/10-post",),
        kdump_post="/bin/post",
        emergency_d=("/etc/kdump/emergency.d/10-emerg",),
        kdump_emergency="/bin/emerg",
        failure_action="halt",
    )
    agent = Agent(fake_root, vmcore, plan)
    assert agent.run() == 1
    names = [(Path(c[0]).name, c[1:]) for c in programs.calls]
    assert names == [("10-post", ("1",)), ("post", ("1",)), ("10-emerg", ()), ("emerg", ())]
    assert agent.actions == ["halt"]
    assert "cannot create dump directory" in agent.console.getvalue()


def test_error_handler_runs_emergency_hooks_then_failure_action(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    # The emergency unit's entry: no dump is attempted, only hooks and the action.
    programs.expect("10-emerg")
    programs.expect("emerg")
    plan = make_plan(
        emergency_d=("/etc/kdump/emergency.d/10-emerg",),
        kdump_emergency="/bin/emerg",
        failure_action="shell",
    )
    agent = Agent(fake_root, vmcore, plan)
    assert run_error_handler(agent.ctx) == 1
    assert [Path(c[0]).name for c in programs.calls] == ["10-emerg", "emerg"]
    assert agent.actions == ["shell", "poweroff"]
    assert not fake_root.var_crash.exists()


def test_internal_error_still_runs_failure_action(
    fake_root: Paths, programs: ProgramStub, vmcore: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> bool:
        raise LookupError("unknown encoding: unicode_escape")

    monkeypatch.setattr("kdumpd.capture.agent._dump", broken)
    agent = Agent(fake_root, vmcore, make_plan(failure_action="halt"))
    assert agent.run() == 1
    assert agent.actions == ["halt"]
    assert "internal error in the capture agent" in agent.console.getvalue()
    assert "unicode_escape" in agent.console.getvalue()


def test_failing_kdump_pre_skips_dump_and_runs_final_action(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    programs.expect("pre", returncode=3)
    agent = Agent(fake_root, vmcore, make_plan(kdump_pre="/bin/pre", pre_d=("/x/10-a",)))
    assert agent.run() == 1
    assert [Path(c[0]).name for c in programs.calls] == ["pre"]
    assert agent.actions == ["poweroff"]
    assert not fake_root.var_crash.exists()
    assert "/bin/pre exited with 3 status" in agent.console.getvalue()


def test_shell_failure_action_then_final_action(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    write(fake_root.under_root("/var/crash"), "x")
    agent = Agent(fake_root, vmcore, make_plan(failure_action="shell"))
    agent.run()
    assert agent.actions == ["shell", "poweroff"]


def test_dump_to_rootfs_saves_below_rootfs_then_final_action(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    write(fake_root.under_root("/var/crash"), "x")
    write(fake_root.proc_mounts, "36 1 8:1 / /sysroot rw,relatime - ext4 /dev/sda1 rw\n")
    programs.expect("vmcore-dmesg")
    programs.expect_call("makedumpfile", collector_writes())
    plan = make_plan(
        failure_action="dump_to_rootfs",
        rootfs=MountSpec(device="/dev/sda1", mountpoint="/sysroot", fstype="ext4"),
        rootfs_path="/var/crash",
    )
    agent = Agent(fake_root, vmcore, plan)
    assert agent.run() == 1
    saved = fake_root.under_root("/sysroot/var/crash/127.0.0.1-2024-06-23-21:27:26")
    assert (saved / "vmcore").exists()
    assert agent.actions == ["poweroff"]
    assert "mount" not in [Path(c[0]).name for c in programs.calls]  # already mounted


def test_target_is_mounted_when_not_yet(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    write(fake_root.proc_mounts, "1 0 8:2 / / rw - ext4 /dev/sda2 rw\n")
    write(fake_root.under_root("/dev/vdb1"), "")
    programs.expect("mount")
    programs.expect("vmcore-dmesg")
    programs.expect_call("makedumpfile", collector_writes())
    mount = MountSpec(device="/dev/vdb1", mountpoint="/kdumproot", fstype="xfs")
    plan = make_plan(target=FsTarget(path="/crash", mount=mount))
    assert Agent(fake_root, vmcore, plan).run() == 0
    mp = fake_root.under_root("/kdumproot")
    assert programs.calls[0] == ("mount", "-t", "xfs", "-o", "defaults", "/dev/vdb1", str(mp))
    assert (mp / "crash" / "127.0.0.1-2024-06-23-21:27:26" / "vmcore").exists()


def test_missing_device_times_out_with_advice(fake_root: Paths) -> None:
    clock = iter([0.0, 1.0, 2.0, 3.0])
    with pytest.raises(TargetError, match=r"/dev/vdb1 did not appear within 2 s"):
        wait_for_device(
            fake_root, "/dev/vdb1", timeout=2, sleep=lambda _: None, clock=lambda: next(clock)
        )


def test_vmcore_dmesg_failure_falls_back_to_makedumpfile_dump_dmesg(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    programs.expect("vmcore-dmesg", returncode=1, stderr="no log")

    def dump_dmesg(argv: Sequence[str]) -> proc.Completed:
        assert argv[1] == "--dump-dmesg"
        Path(argv[-1]).write_text("[0.0] from makedumpfile\n")
        return proc.Completed(tuple(argv), 0, "", "")

    programs.expect_call("makedumpfile", dump_dmesg)
    programs.expect_call("makedumpfile", collector_writes())
    Agent(fake_root, vmcore, make_plan()).run()
    d = dump_dir(fake_root)
    assert (d / "vmcore-dmesg.txt").read_text() == "[0.0] from makedumpfile\n"
    meta = json.loads((d / "kdumpd-metadata.json").read_text())
    assert meta["dmesg"]["tool"] == "makedumpfile --dump-dmesg"


def test_collector_failure_uses_fallback_copy(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    programs.expect("vmcore-dmesg")
    programs.expect("makedumpfile", returncode=1, stderr="kernel version is not supported")
    assert Agent(fake_root, vmcore, make_plan()).run() == 0
    d = dump_dir(fake_root)
    assert (d / "vmcore").read_bytes() == vmcore.read_bytes()
    meta = json.loads((d / "kdumpd-metadata.json").read_text())
    assert meta["fallback"]["used"] is True
    assert "makedumpfile failed" in meta["fallback"]["reason"]
    assert "not supported" in meta["fallback"]["reason"]


def test_dump_dir_name_matches_kdump_utils() -> None:
    assert (
        dump_dir_name("10.0.0.5", datetime(2024, 1, 2, 3, 4, 5)) == "10.0.0.5-2024-01-02-03:04:05"
    )


def test_both_dmesg_tools_failing_falls_back_to_kdumpd_reader(
    fake_root: Paths, programs: ProgramStub, vmcore: Path
) -> None:
    programs.expect("vmcore-dmesg", returncode=1, stderr="unknown kernel")
    programs.expect("makedumpfile", returncode=1, stderr="The kernel version is not supported.")

    def collector(argv: Sequence[str]) -> proc.Completed:
        Path(argv[-1]).write_bytes(b"KDUMP   data")
        out = (
            "The kernel version is not supported.\n"
            "The makedumpfile operation may be incomplete.\n"
        )
        return proc.Completed(tuple(argv), 0, out, "")

    programs.answers["makedumpfile"].append(collector)
    assert Agent(fake_root, vmcore, make_plan()).run() == 0
    d = dump_dir(fake_root)
    text = (d / "vmcore-dmesg.txt").read_text()
    assert text.endswith("] Kernel panic - not syncing: sysrq triggered crash\n")
    meta = json.loads((d / "kdumpd-metadata.json").read_text())
    assert meta["dmesg"]["tool"] == "kdumpd"
    assert meta["collector"]["warnings"] == [
        "The kernel version is not supported.",
        "The makedumpfile operation may be incomplete.",
    ]


def test_collector_warnings_skip_progress_and_repeat() -> None:
    from kdumpd.capture.collector import collector_warnings

    out = "Copying data : [ 10.0 %]\rCopying data : [100.0 %]\nWARNING: x\nWARNING: x\nok\n"
    assert collector_warnings(out) == ["WARNING: x"]

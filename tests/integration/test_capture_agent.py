"""The capture agent with the real makedumpfile and vmcore-dmesg on generated cores."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from kdumpd.capture.agent import CaptureContext, run_capture
from kdumpd.capture.log import CaptureLog
from kdumpd.contract.plan import PLAN_VERSION, CapturePlan
from kdumpd.paths import Paths
from kdumpd.vmcore.elf import read_core
from tests.support.synth import CoreSpec, generate_core

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("makedumpfile"),
]

COLLECTOR = ["makedumpfile", "-l", "--message-level", "7", "-d", "31"]
REPO = Path(__file__).resolve().parents[2]


def plan_json(path: str, **changes: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "version": PLAN_VERSION,
        "kernel_release": "6.1.0-synthetic-amd64",
        "target": {"kind": "fs", "path": path, "mount": None},
        "core_collector": COLLECTOR,
        "failure_action": "reboot",
        "final_action": "poweroff",
    }
    plan.update(changes)
    return plan


def only_dump_dir(base: Path) -> Path:
    dirs = list(base.iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_cli_saves_a_dump_with_real_makedumpfile(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var" / "crash").mkdir(parents=True)
    core = generate_core(tmp_path / "vmcore", CoreSpec(data_pages=64, zero_pages=64))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(plan_json("/var/crash")))
    argv = [sys.executable, "-m", "kdumpd.capture", "--root", str(root)]
    argv += ["--plan", str(plan), "--vmcore", str(core.path), "--dry-run-actions"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "ACTION: poweroff"
    d = only_dump_dir(root / "var" / "crash")
    assert d.name.startswith("127.0.0.1-")
    assert not (d / "vmcore-incomplete").exists()
    # makedumpfile -l writes the kdump-compressed format.
    assert (d / "vmcore").read_bytes()[:8] == b"KDUMP   "
    assert "Kernel panic - not syncing" in (d / "vmcore-dmesg.txt").read_text()
    meta = json.loads((d / "kdumpd-metadata.json").read_text())
    assert meta["result"] == "success"
    assert meta["fallback"]["used"] is False
    assert meta["collector"]["returncode"] == 0
    assert "The kernel version is not supported." in meta["collector"]["warnings"]
    assert meta["crash_time"].startswith("2023-11-14")
    assert "Copying data" in done.stderr  # makedumpfile's own progress reached the console


def run_agent(tmp_path: Path, vmcore: Path, target_path: str, **plan: Any) -> tuple[int, list[str]]:
    actions: list[str] = []
    ctx = CaptureContext(
        paths=Paths(root=tmp_path / "root"),
        plan=CapturePlan.from_dict(plan_json(target_path, **plan)),
        vmcore=vmcore,
        execute=actions.append,
        log=CaptureLog(console=io.StringIO()),
        now=lambda: datetime(2024, 6, 23, 21, 27, 26),
        progress_every=0,
    )
    return run_capture(ctx), actions


def test_fallback_copy_when_makedumpfile_rejects_the_core(tmp_path: Path) -> None:
    (tmp_path / "root" / "var" / "crash").mkdir(parents=True)
    # No page tables: makedumpfile cannot read init_uts_ns, as with a kernel it does not know.
    spec = CoreSpec(data_pages=32, zero_pages=1024, page_tables=False)
    core = generate_core(tmp_path / "vmcore", spec)
    code, actions = run_agent(tmp_path, core.path, "/var/crash")
    assert code == 0 and actions == ["poweroff"]
    d = only_dump_dir(tmp_path / "root" / "var" / "crash")
    saved = d / "vmcore"
    assert saved.read_bytes() == core.path.read_bytes()
    assert saved.stat().st_blocks * 512 < core.size // 4
    copy = read_core(saved)
    assert copy.osrelease == "6.1.0-synthetic-amd64" and copy.cpu_count == 2
    meta = json.loads((d / "kdumpd-metadata.json").read_text())
    assert meta["fallback"]["used"] is True
    assert "makedumpfile failed" in meta["fallback"]["reason"]
    assert meta["result"] == "success"
    # vmcore-dmesg needs no page tables: the log is still saved.
    assert "sysrq" in (d / "vmcore-dmesg.txt").read_text()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    assert os.geteuid() == 0, "mounting tmpfs needs root (the test command runs as root)"
    mountpoint = tmp_path / "root" / "kdumproot"
    mountpoint.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "kdumptest", str(mountpoint)], check=True
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


@pytest.mark.parametrize("makedumpfile_accepts", [True, False], ids=["makedumpfile", "fallback"])
def test_full_target_keeps_incomplete_and_runs_failure_action(
    tmp_path: Path, small_tmpfs: Path, makedumpfile_accepts: bool
) -> None:
    # 4 MiB of random data cannot fit 1 MiB, compressed or copied.
    spec = CoreSpec(data_pages=1024, zero_pages=64, page_tables=makedumpfile_accepts)
    core = generate_core(tmp_path / "vmcore", spec)
    code, actions = run_agent(tmp_path, core.path, "/kdumproot/var/crash", failure_action="halt")
    assert code == 1
    assert actions == ["halt"]
    d = only_dump_dir(small_tmpfs / "var" / "crash")
    assert (d / "vmcore-incomplete").exists()
    assert not (d / "vmcore").exists()
    meta = json.loads((d / "kdumpd-metadata.json").read_text())
    assert meta["result"] == "failure"
    assert meta["failure_reason"].startswith("ENOSPC")
    assert meta["fallback"]["used"] is not makedumpfile_accepts
    assert "ENOSPC" in (d / "kexec-dmesg.log").read_text()

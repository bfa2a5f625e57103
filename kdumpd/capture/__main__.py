"""``python3 -m kdumpd.capture``: the entry point the capture unit starts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kdumpd.capture.actions import (
    ActionExecutor,
    KernelExecutor,
    PrintingExecutor,
    systemctl_executor,
)
from kdumpd.capture.agent import CaptureContext, run_capture, run_error_handler
from kdumpd.capture.log import CaptureLog
from kdumpd.contract.actions import DEFAULT_ACTION
from kdumpd.contract.plan import PLAN_PATH_IN_IMAGE, CapturePlan
from kdumpd.paths import Paths


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdumpd-capture", description=__doc__)
    p.add_argument("--root", type=Path, default=Path("/"), help="system root (tests)")
    p.add_argument("--plan", help=f"capture plan (default {PLAN_PATH_IN_IMAGE} under root)")
    p.add_argument("--vmcore", help="core to save (default /proc/vmcore under root)")
    p.add_argument(
        "--dry-run-actions",
        action="store_true",
        help="print 'ACTION: <name>' instead of rebooting, halting or starting a shell",
    )
    p.add_argument(
        "--actions-by",
        choices=("systemd", "kernel"),
        default="systemd",
        help="who reboots, halts or powers off: systemctl (dracut's systemd initrd) "
        "or the kernel (kdumpd's small init)",
    )
    p.add_argument(
        "--error-handler",
        action="store_true",
        help="run the emergency hooks and failure_action (the emergency unit's entry)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    paths = Paths(root=args.root)
    log = CaptureLog()
    execute: ActionExecutor
    if args.dry_run_actions:
        execute = PrintingExecutor()
    elif args.actions_by == "kernel":
        execute = KernelExecutor()
    else:
        execute = systemctl_executor
    plan_path = Path(args.plan) if args.plan else paths.under_root(PLAN_PATH_IN_IMAGE)
    try:
        plan = CapturePlan.from_dict(json.loads(plan_path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Without a plan there is no target: say why and take the default failure action.
        log.info(f"{plan_path}: cannot read the capture plan: {exc}; rebuild with kdumpctl rebuild")
        execute(DEFAULT_ACTION)
        return 1
    vmcore = Path(args.vmcore) if args.vmcore else paths.proc_vmcore
    ctx = CaptureContext(paths, plan, vmcore, execute, log, nproc=len(os.sched_getaffinity(0)))
    return run_error_handler(ctx) if args.error_handler else run_capture(ctx)


if __name__ == "__main__":
    sys.exit(main())

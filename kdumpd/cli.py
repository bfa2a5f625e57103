"""kdumpctl: the administrator's command line, compatible with kdump-utils' kdumpctl.

Owns argument parsing, the choice between kdump-utils style console lines and
``--json`` output, exit codes, and the read-only commands (status, showmem,
get-default-crashkernel, estimate, check-config). The arming commands (start,
stop, restart, reload, rebuild) are use cases of :mod:`kdumpd.manager`;
reset-crashkernel, test and the hidden commands the package scripts and kernel
hooks call (``_reset-crashkernel-after-update``,
``_reset-crashkernel-for-installed_kernel KVER``, ``_kernel-installed KVER``,
``_kernel-removed KVER``, ``_tools-upgraded``) are use cases of
:mod:`kdumpd.lifecycle`; this module only dispatches to them.

Output conventions (compatible with kdump-utils, §3): messages go to stderr as
``kdump: <text>``; data a script consumes (get-default-crashkernel, estimate)
goes to stdout. With ``--json`` one JSON object goes to stdout, always with
``"schema_version": 1``, and nothing is printed on stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from kdumpd import host, lifecycle, manager, proc
from kdumpd.config import load_kdump_conf, load_sysconfig
from kdumpd.config.sysconfig import SysConfig
from kdumpd.errors import (
    ConfigError,
    ExitCode,
    KdumpError,
    Problem,
    user_message,
)
from kdumpd.estimate import format_estimate
from kdumpd.messages import ConsoleMessages, Messages, RecordedMessages
from kdumpd.paths import Paths

SCHEMA_VERSION = 1

#: The commands of kdump-utils' usage line (§3.1), plus kdumpd's check-config.
USAGE_COMMANDS = (
    "estimate",
    "start",
    "stop",
    "status",
    "restart",
    "reload",
    "rebuild",
    "reset-crashkernel",
    "propagate",
    "showmem",
    "test",
    "get-default-crashkernel",
    "check-config",
)
USAGE = "Usage: kdumpctl {" + "|".join(USAGE_COMMANDS) + "}"

#: Commands that are arming use cases of kdumpd.manager.
MANAGER_COMMANDS: dict[str, Callable[[Paths, Messages], None]] = {
    "start": manager.start,
    "stop": manager.stop,
    "restart": manager.restart,
    "reload": manager.reload,
    "rebuild": manager.rebuild,
}


class UsageError(KdumpError):
    """The command line cannot be understood."""


@dataclass
class Context:
    """What every command needs: the tree, the output mode and the machine."""

    paths: Paths
    json: bool
    messages: Messages
    stdout: TextIO
    machine: os.uname_result

    @property
    def arch(self) -> str:
        return self.machine.machine

    def sysconfig(self) -> SysConfig:
        """The kdump variables, warnings about them sent to messages."""
        config, problems = load_sysconfig(self.paths, self.arch)
        for problem in problems:
            self.messages.warn(str(problem))
        return config

    def emit(self, document: dict[str, Any]) -> None:
        """Write one JSON document to stdout, schema_version and messages included."""
        payload: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **document}
        if isinstance(self.messages, RecordedMessages):
            payload["messages"] = self.messages.as_json()
        self.stdout.write(json.dumps(payload, indent=2) + "\n")
        self.stdout.flush()


# ---------------------------------------------------------------------------
# argument parsing


class _ParseError(Exception):
    def __init__(self, message: str, parser: argparse.ArgumentParser, top: bool) -> None:
        super().__init__(message)
        self.parser = parser
        self.top = top


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so main() picks the exit code."""

    top_level = False

    def error(self, message: str) -> NoReturn:
        raise _ParseError(message, self, self.top_level)


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On subcommands the defaults are suppressed, so that an option given before
    # the subcommand is not overwritten by the subparser's default.
    parser.add_argument(
        "--root",
        metavar="DIR",
        default=argparse.SUPPRESS if suppress else "/",
        help="act on the system tree at DIR instead of / (for tests and images)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print one JSON object on stdout instead of kdump: lines",
    )


def build_parser() -> argparse.ArgumentParser:
    """The kdumpctl argument parser."""
    parser = _Parser(prog="kdumpctl", description="Arm kdump and inspect its state.")
    parser.top_level = True
    _add_global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_global_options(sub, suppress=True)
        return sub

    add("status", "say whether kdump is operational (exit 0) or not (exit 3)")
    add("showmem", "show the memory reserved for the crash kernel")
    sub = add("get-default-crashkernel", "print the default crashkernel= value of this machine")
    sub.add_argument("mode", nargs="?", default="kdump", help="kdump (default) or fadump")
    sub = add("estimate", "estimate the memory the capture kernel needs")
    sub.add_argument(
        "--initrd", metavar="FILE", type=Path, help="capture initramfs to measure (default: built)"
    )
    sub.add_argument(
        "--modules-list",
        metavar="FILE",
        type=Path,
        help="modules of the capture initramfs, one per line (hostonly-kernel-modules.txt)",
    )
    sub = add("check-config", "validate kdump.conf and the kdump variables file")
    sub.add_argument("--config", metavar="FILE", type=Path, help="check FILE, not kdump.conf")
    add("start", "build the capture initramfs if needed and load the capture kernel")
    add("stop", "unload the capture kernel")
    add("restart", "stop, then start")
    add("reload", "reload the capture kernel with the current configuration")
    add("rebuild", "rebuild the capture initramfs")
    add("propagate", "install the ssh key on the dump server")
    sub = add("test", "crash the system on purpose to test the dump")
    sub.add_argument("--force", action="store_true", help="do not ask for confirmation")
    sub = add("reset-crashkernel", "set crashkernel= of the boot configuration to the default")
    sub.add_argument(
        "--kernel",
        metavar="PATH|ALL|DEFAULT",
        help="the kernel whose boot entries change (default: DEFAULT, the kernel kdump uses)",
    )
    sub.add_argument("--fadump", choices=lifecycle.FADUMP_MODES, help="POWER only: fadump= mode")
    sub.add_argument(
        "--reboot", action="store_true", help="deprecated: reboot when something changed"
    )
    # Hidden: the package scripts and kernel hooks call these (no help= keeps them
    # out of the command list).
    hidden = commands.add_parser("_reset-crashkernel-after-update")
    _add_global_options(hidden, suppress=True)
    for name in ("_reset-crashkernel-for-installed_kernel", "_kernel-installed", "_kernel-removed"):
        hidden = commands.add_parser(name)
        _add_global_options(hidden, suppress=True)
        hidden.add_argument("kernel_release")
    hidden = commands.add_parser("_tools-upgraded")
    _add_global_options(hidden, suppress=True)
    sub = add("dmesg", "print the kernel log of a saved dump (read by kdumpd itself)")
    sub.add_argument("dump", metavar="DUMP", type=Path, help="a dump file or dump directory")
    sub = add("dumps", "list the saved dumps, newest first; 'dumps show DUMP' reports one")
    sub.add_argument("action", nargs="?", choices=("show",), help="show the crash report of DUMP")
    sub.add_argument("dump", nargs="?", metavar="DUMP", help="dump directory, file or name")
    sub = add("analyze", "open a dump in crash with its debug kernel, or print a report")
    sub.add_argument("dump", metavar="DUMP", type=Path, help="a dump file or dump directory")
    sub.add_argument(
        "--report",
        action="store_true",
        help="print tasks, backtraces and memory (drgn) instead of starting crash",
    )
    sub.add_argument(
        "--vmlinux", metavar="FILE", type=Path, help="the debug kernel (default: searched)"
    )
    return parser


# ---------------------------------------------------------------------------
# commands


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl status (§3.5): operational => 0, not operational => 3."""
    status = host.read_status(ctx.paths)
    if not status.operational and status.reason:
        ctx.messages.error(status.reason)
    client = _daemon(ctx)
    if client is not None:
        # a rejected edit leaves kdump armed with the older configuration: say why
        for line in client.last_error().splitlines():
            ctx.messages.warn(line)
    verdict = "Kdump is operational" if status.operational else "Kdump is not operational"
    ctx.messages.info(verdict)
    test = _last_test(ctx, status.mode)
    if ctx.json:
        ctx.emit(
            {
                "command": "status",
                "operational": status.operational,
                "reason": status.reason,
                "mode": status.mode,
                "supported": status.supported,
                "reserved_bytes": status.reserved_bytes,
                "loaded": status.loaded,
                "last_test": None
                if test is None
                else {
                    "state": test.state,
                    "kdump_test_id": test.test_id or None,
                    "dump": test.dump,
                    "message": test.message,
                },
            }
        )
    return ExitCode.OK if status.operational else ExitCode.NOT_OPERATIONAL


def _last_test(ctx: Context, mode: str) -> lifecycle.TestResult | None:
    """The vmcore creation test's result (§3.10), when VMCORE_CREATION_NOTIFICATION is on."""
    if mode != "kdump":
        return None
    try:
        sysconfig, _ = load_sysconfig(ctx.paths, ctx.arch)
    except ConfigError:
        return None
    if not sysconfig.vmcore_creation_notification:
        return None
    try:
        config = load_kdump_conf(ctx.paths).config
    except ConfigError:
        config = None
    result = lifecycle.last_test(ctx.paths, config)
    if result.message:
        {"info": ctx.messages.info, "warning": ctx.messages.warn, "error": ctx.messages.error}[
            result.level
        ](result.message)
    return result


def cmd_showmem(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl showmem (§3.12)."""
    mode = host.dump_mode(ctx.paths)
    reserved = host.crash_size_bytes(ctx.paths, mode)
    ctx.messages.info(f"Reserved {reserved // host.MIB}MB memory for crash kernel")
    if ctx.json:
        ctx.emit(
            {
                "command": "showmem",
                "mode": mode,
                "reserved_bytes": reserved,
                "reserved_mib": reserved // host.MIB,
            }
        )
    return ExitCode.OK


def cmd_get_default_crashkernel(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl get-default-crashkernel [kdump|fadump] (§4.1): the value, no newline."""
    mode = args.mode
    if mode not in ("kdump", "fadump"):
        raise UsageError(
            f"kdumpctl get-default-crashkernel: unknown dump mode {mode!r}; use kdump or fadump"
        )
    value = manager.default_crashkernel(
        ctx.paths, ctx.messages, ctx.sysconfig(), machine=ctx.machine, mode=mode
    )
    if ctx.json:
        ctx.emit(
            {
                "command": "get-default-crashkernel",
                "arch": ctx.arch,
                "mode": mode,
                "crashkernel": value,
            }
        )
    else:
        ctx.stdout.write(value)
        ctx.stdout.flush()
    return ExitCode.OK


def cmd_estimate(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl estimate (§4.3): reserved vs. recommended, with the parts of the estimate."""
    report = manager.estimate(
        ctx.paths,
        ctx.messages,
        ctx.sysconfig(),
        machine=ctx.machine,
        initrd=args.initrd,
        modules_list=args.modules_list,
    )
    estimate, mode, kver = report.estimate, report.mode, report.kernel_release
    for note in estimate.notes:
        ctx.messages.info(f"Note: {note}")
    if ctx.json:
        ctx.emit(
            {
                "command": "estimate",
                "mode": mode,
                "kernel_release": kver,
                "reserved_bytes": estimate.reserved,
                "recommended_bytes": estimate.recommended,
                "baseline_bytes": estimate.baseline,
                "estimated_bytes": estimate.estimated,
                "kernel_image_bytes": estimate.kernel.bytes,
                "kernel_image_source": estimate.kernel.source,
                "kernel_modules_bytes": estimate.modules_total,
                "initramfs_bytes": estimate.initramfs,
                "runtime_bytes": estimate.runtime,
                "large_modules": estimate.large_modules,
                "image_built": estimate.image_built,
                "too_small": estimate.too_small,
                "notes": list(estimate.notes),
            }
        )
    else:
        ctx.stdout.write("".join(line + "\n" for line in format_estimate(estimate)))
        ctx.stdout.flush()
    return ExitCode.OK


def _problem_json(problem: Problem) -> dict[str, Any]:
    return {"file": problem.file, "line": problem.line, "message": problem.message}


def cmd_check_config(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl check-config [--config FILE]: validate without touching the system."""
    override = args.config.absolute() if args.config is not None else None
    errors, warnings = manager.check_config(ctx.paths, ctx.arch, override)
    for warning in warnings:
        ctx.messages.warn(str(warning))
    for error in errors:
        ctx.messages.error(str(error))
    if ctx.json:
        ctx.emit(
            {
                "command": "check-config",
                "valid": not errors,
                "errors": [_problem_json(p) for p in errors],
                "warnings": [_problem_json(p) for p in warnings],
            }
        )
    return ExitCode.OK if not errors else ExitCode.FAILURE


def _daemon(ctx: Context) -> Any:
    """A client of the running kdumpd (kdumpd.daemon.bus.Client), or None to act directly.

    The daemon owns the kexec state while it runs; without it (package scripts,
    rescue shells) or with ``--root`` kdumpctl does the work itself.
    """
    if ctx.paths.root != Path("/"):
        return None
    try:
        from kdumpd.daemon.bus import Client
    except ImportError:  # no dasbus/gi: there can be no daemon either
        return None
    return Client() if Client.daemon_running() else None


class DaemonCallFailed(KdumpError):
    """The daemon ran the use case and it failed; its lines were printed already."""

    reported = True


def cmd_manager(ctx: Context, args: argparse.Namespace) -> int:
    """start, stop, restart, reload, rebuild: the use cases of kdumpd.manager."""
    client = _daemon(ctx)
    if client is not None:
        lines, error = client.call(args.command)
        for line in lines:
            ctx.messages.info(line)
        if error is not None:
            raise DaemonCallFailed(lines[-1] if lines else error)
        if ctx.json:
            ctx.emit({"command": args.command, "ok": True})
        return ExitCode.OK
    MANAGER_COMMANDS[args.command](ctx.paths, ctx.messages)
    if ctx.json:
        ctx.emit({"command": args.command, "ok": True})
    return ExitCode.OK


def cmd_propagate(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl propagate: create the ssh key if missing, install it on the server (§3.9).

    ssh-copy-id runs on the terminal: it may ask for the server's password and
    for accepting its host key (which the capture kernel then checks strictly).
    """
    key = manager.propagate(ctx.paths, ctx.messages)
    if ctx.json:
        ctx.emit({"command": args.command, "ok": True, "key": ctx.paths.shown(key)})
    return ExitCode.OK


def _change_json(ctx: Context, change: Any) -> dict[str, Any]:
    location = change.location
    return {
        "kind": location.kind,
        "file": ctx.paths.shown(location.file),
        "kernel": location.kernel,
        "parameter": change.name,
        "old": change.old,
        "new": change.new,
    }


def cmd_reset_crashkernel(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl reset-crashkernel [--kernel=PATH|ALL|DEFAULT] [--fadump=MODE] [--reboot] (§4.5)."""
    if args.reboot:
        ctx.messages.warn("--reboot is deprecated; reboot yourself when something changed")
    result = lifecycle.reset_crashkernel(
        ctx.paths,
        ctx.messages,
        machine=ctx.machine,
        kernel=args.kernel,
        fadump=args.fadump,
    )
    if ctx.json:
        ctx.emit(
            {
                "command": "reset-crashkernel",
                "changed": result.changed,
                "reboot_needed": result.changed,
                "changes": [_change_json(ctx, c) for c in result.changes],
                "unchanged": [ctx.paths.shown(loc.file) for loc in result.unchanged],
            }
        )
    if args.reboot and result.changed:
        lifecycle.reboot()
    return ExitCode.OK


def cmd_auto_reset(ctx: Context, args: argparse.Namespace) -> int:
    """Package scripts: the automatic reset (auto_reset_crashkernel)."""
    done = lifecycle.auto_reset(
        ctx.paths,
        ctx.messages,
        machine=ctx.machine,
        kernel_release=getattr(args, "kernel_release", None),
    )
    if ctx.json:
        ctx.emit({"command": args.command, "changes": [_change_json(ctx, c) for c in done]})
    return ExitCode.OK


def cmd_kernel_installed(ctx: Context, args: argparse.Namespace) -> int:
    """Kernel hooks: a kernel was installed."""
    lifecycle.kernel_added(
        ctx.paths,
        ctx.messages,
        args.kernel_release,
        machine=ctx.machine,
    )
    if ctx.json:
        ctx.emit({"command": args.command, "ok": True})
    return ExitCode.OK


def cmd_kernel_removed(ctx: Context, args: argparse.Namespace) -> int:
    """Kernel hooks: a kernel was removed."""
    removed = lifecycle.kernel_removed(ctx.paths, ctx.messages, args.kernel_release)
    if ctx.json:
        ctx.emit({"command": args.command, "removed": [ctx.paths.shown(p) for p in removed]})
    return ExitCode.OK


def cmd_tools_upgraded(ctx: Context, args: argparse.Namespace) -> int:
    """dpkg trigger: dracut, makedumpfile, kexec-tools or kdumpd changed."""
    lifecycle.tools_upgraded(ctx.paths, ctx.messages)
    if ctx.json:
        ctx.emit({"command": args.command, "ok": True})
    return ExitCode.OK


def _ask(prompt: str) -> str:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    try:
        return input()
    except EOFError:
        return ""


def cmd_test(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl test [--force] (§3.10): crash the system; the next status says what came of it."""
    if ctx.json and not args.force:
        raise UsageError(
            "kdumpctl test --json needs --force: JSON output cannot ask for confirmation"
        )
    test_id = lifecycle.run_test(ctx.paths, ctx.messages, force=args.force, confirm=_ask)
    if ctx.json:
        ctx.emit({"command": "test", "kdump_test_id": test_id, "cancelled": test_id is None})
    return ExitCode.OK


def cmd_dmesg(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl dmesg DUMP: the crashed kernel's log, from kdumpd's own reader."""
    from kdumpd.postcrash.dumps import find_dump
    from kdumpd.vmcore.dump import open_dump
    from kdumpd.vmcore.printk import read_kernel_log

    path = find_dump(args.dump)
    with open_dump(path) as dump:
        log = read_kernel_log(dump)
        text = log.text()
        if ctx.json:
            ctx.emit(
                {
                    "command": "dmesg",
                    "dump": str(path),
                    "format": dump.format,
                    "layout": log.layout,
                    "records": len(log.records),
                    "text": text,
                }
            )
            return ExitCode.OK
    if not dump.complete:
        ctx.messages.warn(f"{path} is incomplete; the log may be cut short")
    ctx.stdout.write(text)
    ctx.stdout.flush()
    return ExitCode.OK


def cmd_dumps(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl dumps [show DUMP]: the saved dumps of this machine, or one crash report."""
    from kdumpd.postcrash import dumps

    if args.action is None:
        if args.dump is not None:
            raise UsageError(
                f"kdumpctl dumps: unexpected {args.dump!r}; did you mean 'dumps show'?"
            )
        found, roots = manager.saved_dumps(ctx.paths, ctx.messages)
        if ctx.json:
            ctx.emit({"command": "dumps", "dumps": [d.to_json() for d in found]})
        else:
            _render_dump_list(ctx, found, roots)
        return ExitCode.OK
    if args.dump is None:
        raise UsageError("kdumpctl dumps show: name the dump (a directory, file or name)")
    roots = manager.dump_locations(ctx.paths, ctx.messages)
    info = dumps.read_dump_dir(_dump_directory(args.dump, roots))
    if ctx.json:
        body = info.to_json()
        body["report"] = info.report.to_json() if info.report else None
        ctx.emit({"command": "dumps show", "dump": body})
    else:
        ctx.stdout.write(dumps.crash_report(info) + "\n")
    return ExitCode.OK


def _dump_directory(name: str, roots: Sequence[Path]) -> Path:
    from kdumpd.postcrash.dumps import DumpNotFound

    given = Path(name)
    if given.is_file():
        return given.parent
    if given.is_dir():
        return given
    for root in roots:
        if (root / name).is_dir():
            return root / name
    raise DumpNotFound(
        f"{name}: no such dump directory or file (looked in {', '.join(map(str, roots))})"
    )


def _render_dump_list(ctx: Context, found: Sequence[Any], roots: Sequence[Path]) -> None:
    if not found:
        ctx.messages.info(f"no dumps in {', '.join(map(str, roots))}")
        return
    rows = [("CRASH TIME", "KERNEL", "STATE", "SIZE", "CAUSE", "SAVED BY", "DIRECTORY")]
    for d in found:
        rows.append(
            (
                d.crash_time.strftime("%Y-%m-%d %H:%M:%S") if d.crash_time else "-",
                d.kernel_release or "-",
                "complete" if d.complete else "incomplete",
                _human_size(d.size),
                d.cause or "-",
                d.saved_by,
                str(d.directory),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        ctx.stdout.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def cmd_analyze(ctx: Context, args: argparse.Namespace) -> int:
    """kdumpctl analyze DUMP [--report]: crash with the right vmlinux, or a drgn report."""
    from kdumpd.postcrash import analyze
    from kdumpd.postcrash.dumps import find_dump
    from kdumpd.vmcore.dump import open_dump

    path = find_dump(args.dump)
    with open_dump(path) as dump:
        release = dump.osrelease
        build_id = dump.vmcoreinfo.build_id
        flattened = dump.flattened
    if args.report and flattened:
        # libkdumpfile before 0.5.3 (Debian 12 has 0.5.1), under drgn, cannot read streams.
        raise analyze.AnalysisError(
            f"{path} is a flattened stream, which drgn here cannot read: rebuild it with "
            f"'makedumpfile -R {path.parent}/vmcore < {path}' and analyze that file"
        )
    debug = analyze.find_debug_kernel(ctx.paths, release, build_id, explicit=args.vmlinux)
    ctx.messages.info(f"debug kernel: {debug.path} ({debug.how})")
    if args.report:
        result = analyze.report(path, debug.path, release or "unknown")
        if ctx.json:
            ctx.emit({"command": "analyze", "dump": str(path), "report": result.to_json()})
        else:
            ctx.stdout.write(result.to_text())
        return ExitCode.OK
    if ctx.json:
        raise UsageError("kdumpctl analyze: --json needs --report (crash is interactive)")
    proc.run(analyze.crash_argv(debug.path, path), interactive=True, timeout=None)
    return ExitCode.OK


Command = Callable[[Context, argparse.Namespace], int]

COMMANDS: dict[str, Command] = {
    "status": cmd_status,
    "showmem": cmd_showmem,
    "get-default-crashkernel": cmd_get_default_crashkernel,
    "estimate": cmd_estimate,
    "check-config": cmd_check_config,
    **dict.fromkeys(MANAGER_COMMANDS, cmd_manager),
    "propagate": cmd_propagate,
    "reset-crashkernel": cmd_reset_crashkernel,
    "test": cmd_test,
    "_reset-crashkernel-after-update": cmd_auto_reset,
    "_reset-crashkernel-for-installed_kernel": cmd_auto_reset,
    "_kernel-installed": cmd_kernel_installed,
    "_kernel-removed": cmd_kernel_removed,
    "_tools-upgraded": cmd_tools_upgraded,
    "dmesg": cmd_dmesg,
    "dumps": cmd_dumps,
    "analyze": cmd_analyze,
}


# ---------------------------------------------------------------------------
# entry point


def _fail(
    *,
    as_json: bool,
    messages: Messages,
    stdout: TextIO,
    message: str,
    code: int,
    already_reported: bool = False,
) -> int:
    if as_json:
        payload: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "error": {"message": message, "exit_code": code},
        }
        if isinstance(messages, RecordedMessages):
            payload["messages"] = messages.as_json()
        stdout.write(json.dumps(payload, indent=2) + "\n")
        stdout.flush()
    elif not already_reported:
        messages.error(message)
    return code


def main(argv: Sequence[str] | None = None, *, uname: os.uname_result | None = None) -> int:
    """Run kdumpctl with ``argv`` (default: the process arguments); return the exit code.

    ``uname`` is the machine and running kernel release (default: ``os.uname()``);
    tests pass another machine.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    stdout = sys.stdout
    as_json = "--json" in arguments
    messages: Messages = RecordedMessages() if as_json else ConsoleMessages(stream=sys.stderr)
    # Every way out with an error: one message (or one JSON document) and the exit code.
    fail = functools.partial(_fail, as_json=as_json, messages=messages, stdout=stdout)

    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except _ParseError as exc:
        if exc.top and str(exc).startswith("argument COMMAND"):
            # kdump-utils: unknown or missing subcommand => usage line, exit 1 (§3.1).
            return fail(message=USAGE, code=1)
        return fail(
            message=f"{exc.parser.prog}: {exc}\n{exc.parser.format_usage().strip()}",
            code=ExitCode.USAGE,
        )
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    if args.command is None:
        return fail(message=USAGE, code=1)

    root = Path(args.root).absolute()
    if not root.is_dir():
        return fail(
            message=f"--root {args.root}: not a directory; name the system tree to act on",
            code=ExitCode.USAGE,
        )
    ctx = Context(
        paths=Paths(root=root),
        json=as_json,
        messages=messages,
        stdout=stdout,
        machine=uname if uname is not None else os.uname(),
    )
    try:
        return int(COMMANDS[args.command](ctx, args))
    except KdumpError as exc:
        return fail(
            message=user_message(exc),
            code=int(exc.exit_code),
            already_reported=bool(getattr(exc, "reported", False)),
        )
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # A file of the tree that cannot be read or written where no reader expected
        # it: say which and why, never a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        return fail(
            message=f"kdumpctl {args.command}: {exc.strerror or exc}{where}",
            code=ExitCode.FAILURE,
        )
    except Exception as exc:  # the last line between a bug and the user
        return fail(
            message=(
                f"kdumpctl {args.command}: internal error ({type(exc).__name__}: {exc}); "
                "this is a bug in kdumpd, please report it with the command that failed"
            ),
            code=ExitCode.FAILURE,
        )


if __name__ == "__main__":
    sys.exit(main())

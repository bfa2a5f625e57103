"""The capture flow (kdump-utils' kdump.sh, §5.5): hooks, dump, record, action.

1. kdump_pre (non-zero: skip the dump, final_action), then pre.d;
2. the dump through the target: vmcore-dmesg.txt first, then the collector's
   output as vmcore-incomplete, renamed to vmcore when complete; the sparse
   copy fallback when the collector fails. Stream targets (raw, ssh;
   :mod:`kdumpd.capture.stream`) take the programs' output instead: ssh keeps
   vmcore-dmesg.txt and vmcore.flat on the server, raw only the stream;
3. post.d then kdump_post, each with the dump's exit status as $1;
4. on failure emergency.d + kdump_emergency, then failure_action
   (dump_to_rootfs saves to plan.rootfs, with the planned target's failure
   in that dump's metadata, and then runs final_action);
5. kexec-dmesg.log and kdumpd-metadata.json are written just before the
   action, so they describe everything that happened;
6. final_action after success.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kdumpd import proc
from kdumpd.capture import sinks
from kdumpd.capture.actions import ActionExecutor
from kdumpd.capture.base import FileSink, Sink, StreamSink
from kdumpd.capture.collector import (
    CopyError,
    collector_argv,
    collector_warnings,
    is_makedumpfile,
    sparse_copy,
)
from kdumpd.capture.hooks import HookRun, run_hook, run_hooks
from kdumpd.capture.log import CaptureLog
from kdumpd.contract.actions import DEFAULT_ACTION, FAILURE_ACTIONS, FINAL_ACTIONS
from kdumpd.contract.layout import (
    DMESG,
    DMESG_INCOMPLETE,
    LOG,
    METADATA,
    METADATA_FORMAT,
    METADATA_VERSION,
    RESERVED_BYTES,
    VMCORE,
    VMCORE_INCOMPLETE,
)
from kdumpd.contract.plan import CapturePlan, FsTarget, Target
from kdumpd.errors import KdumpError, TargetError
from kdumpd.paths import Paths
from kdumpd.vmcore.dump import open_dump
from kdumpd.vmcore.elf import read_core
from kdumpd.vmcore.printk import read_kernel_log

_ENOSPC_TEXT = "No space left on device"
#: metadata "dmesg.tool" when kdumpd read the kernel log itself (vmcore-dmesg and
#: makedumpfile --dump-dmesg both failed).
OWN_DMESG_TOOL = "kdumpd"
_KEPT_COLLECTOR_OUTPUT = 64 * 1024

SinkFactory = Callable[[Target], Sink]


def _kernel_log() -> str:
    """The crash kernel's own log (dmesg), for kexec-dmesg.log; empty when unavailable."""
    try:
        return proc.run(["dmesg"], timeout=30).stdout
    except proc.ProgramError as exc:
        return f"(dmesg unavailable: {exc})\n"


@dataclass
class CaptureContext:
    """Everything the flow depends on; tests replace the edges."""

    paths: Paths
    plan: CapturePlan
    vmcore: Path
    execute: ActionExecutor
    log: CaptureLog = field(default_factory=CaptureLog)
    nproc: int = 1
    now: Callable[[], datetime] = datetime.now
    kernel_log: Callable[[], str] = _kernel_log
    progress_every: float = 5.0
    make_sink: SinkFactory | None = None

    def sink_for(self, target: Target) -> Sink:
        if self.make_sink is not None:
            return self.make_sink(target)
        return sinks.sink_for(self.paths, target, self.log)


@dataclass
class DumpRecord:
    """What happened to one dump attempt; becomes kdumpd-metadata.json."""

    data: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        entry: dict[str, Any] = {"name": name, "ok": False}
        self.steps.append(entry)
        start = time.monotonic()
        try:
            yield entry
        finally:
            entry["seconds"] = round(time.monotonic() - start, 3)

    def to_json(self) -> bytes:
        body = {**self.data, "steps": self.steps}
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def run_capture(ctx: CaptureContext) -> int:
    """Execute the plan; return 0 when the dump was saved, 1 otherwise."""
    old_umask = os.umask(0o077)
    try:
        return _run(ctx)
    except Exception:
        # A bug here must not cost the dump's failure handling: log the traceback
        # (it reaches the console and kexec-dmesg.log) and carry out failure_action.
        ctx.log.info("internal error in the capture agent:\n" + traceback.format_exc())
        _run_emergency_hooks(ctx)
        _fail(ctx, _failure_action(ctx.plan), ctx.now())
        return 1
    finally:
        os.umask(old_umask)


def _run(ctx: CaptureContext) -> int:
    plan, log = ctx.plan, ctx.log
    started = ctx.now()
    log.info(f"capturing the crash dump of {plan.kernel_release}")
    record = _new_record(ctx, started)
    hooks: list[HookRun] = []
    record.data["hooks"] = hooks_json = []

    if plan.kdump_pre:
        pre = run_hook(ctx.paths, plan.kdump_pre, [], log)
        hooks_json.append(_hook_json(pre))
        if pre.returncode != 0:
            log.info(f"{plan.kdump_pre} exited with {pre.returncode} status; skipping the dump")
            _act(ctx, plan.final_action)
            return 1
    hooks += run_hooks(ctx.paths, plan.pre_d, [], log)

    sink = ctx.sink_for(plan.target)
    ok = _dump(ctx, sink, record, started, plan.target.kind)
    status = "0" if ok else "1"
    hooks += run_hooks(ctx.paths, plan.post_d, [status], log)
    if plan.kdump_post:
        hooks.append(run_hook(ctx.paths, plan.kdump_post, [status], log))

    if ok:
        log.info("saving vmcore complete")
        _finish(ctx, sink, record, hooks, plan.final_action)
        _act(ctx, plan.final_action)
        return 0

    hooks += _run_emergency_hooks(ctx)
    action = _failure_action(plan)
    _finish(ctx, sink, record, hooks, action)
    _fail(ctx, action, started, why=_failure_summary(plan, record))
    return 1


def _failure_summary(plan: CapturePlan, record: DumpRecord) -> dict[str, Any]:
    """Why the planned target failed, for the record dump_to_rootfs writes."""
    return {
        "kind": plan.target.kind,
        "location": record.data.get("target", {}).get("location"),
        "reason": record.data.get("failure_reason"),
    }


def run_error_handler(ctx: CaptureContext) -> int:
    """The emergency unit's entry: something failed before or around the agent.

    Reached when the capture unit failed without the agent reaching its own
    failure path (it could not start, a dracut emergency, a timeout): run the
    emergency hooks, then failure_action, then final_action where it applies.
    """
    old_umask = os.umask(0o077)
    try:
        ctx.log.info("kdumpd error handler: the capture did not complete")
        _run_emergency_hooks(ctx)
        _fail(ctx, _failure_action(ctx.plan), ctx.now())
        return 1
    finally:
        os.umask(old_umask)


def _run_emergency_hooks(ctx: CaptureContext) -> list[HookRun]:
    plan = ctx.plan
    hooks = run_hooks(ctx.paths, plan.emergency_d, [], ctx.log)
    if plan.kdump_emergency:
        hooks.append(run_hook(ctx.paths, plan.kdump_emergency, [], ctx.log))
    return hooks


def _failure_action(plan: CapturePlan) -> str:
    return plan.failure_action if plan.failure_action in FAILURE_ACTIONS else DEFAULT_ACTION


def _fail(
    ctx: CaptureContext, action: str, started: datetime, *, why: dict[str, Any] | None = None
) -> None:
    """Carry out failure_action; shell and dump_to_rootfs are followed by final_action."""
    if action == "dump_to_rootfs":
        _dump_to_rootfs(ctx, started, why)
        _act(ctx, ctx.plan.final_action)
    elif action == "shell":
        _act(ctx, "shell")
        _act(ctx, ctx.plan.final_action)
    else:
        _act(ctx, action)


def _new_record(ctx: CaptureContext, started: datetime) -> DumpRecord:
    record = DumpRecord()
    record.data.update(
        {
            "format": METADATA_FORMAT,
            "version": METADATA_VERSION,
            "capture_started": started.astimezone().isoformat(timespec="seconds"),
            "kernel_release": {"plan": ctx.plan.kernel_release, "vmcoreinfo": None},
            "crash_time": None,
            "vmcore_source": str(ctx.vmcore),
            "result": "failure",
            "failure_reason": None,
        }
    )
    try:
        core = read_core(ctx.vmcore)
    except (OSError, KdumpError) as exc:
        ctx.log.info(f"cannot read the ELF headers of {ctx.vmcore}: {exc}")
        record.data["vmcore_read_error"] = str(exc)
        return record
    record.data["kernel_release"]["vmcoreinfo"] = core.osrelease
    record.data["cpus"] = core.cpu_count
    if core.crash_time is not None:
        record.data["crash_time"] = datetime.fromtimestamp(core.crash_time, UTC).isoformat()
    if core.osrelease and core.osrelease != ctx.plan.kernel_release:
        ctx.log.info(
            f"the crashed kernel is {core.osrelease}, the plan was made for "
            f"{ctx.plan.kernel_release}"
        )
    return record


def _hook_json(run: HookRun) -> dict[str, Any]:
    return {"path": run.path, "args": list(run.args), "returncode": run.returncode}


def _dump(
    ctx: CaptureContext, sink: Sink, record: DumpRecord, started: datetime, kind: str
) -> bool:
    """Prepare the target (of ``kind``), save dmesg and the vmcore; record why on failure."""
    record.data["target"] = {"kind": kind}
    try:
        with record.step("prepare") as step:
            try:
                sink.prepare(started)
            finally:
                record.data["target"]["location"] = sink.location
            step["ok"] = True
        if isinstance(sink, StreamSink):
            _save_streams(ctx, sink, record)
        else:
            _save_dmesg(ctx, sink, record)
            _save_vmcore(ctx, sink, record)
    except (TargetError, CopyError, proc.ProgramError, KdumpError) as exc:
        reason = _reason(exc)
        ctx.log.info(f"saving vmcore failed: {reason}")
        record.data["failure_reason"] = reason
        return False
    record.data["result"] = "success"
    return True


def _reason(exc: Exception) -> str:
    number = getattr(exc, "errno", None)
    text = str(exc)
    if number is not None and os.strerror(number) not in text:
        text += f" ({os.strerror(number)})"
    if number == 28 or _ENOSPC_TEXT in text:  # ENOSPC
        return f"ENOSPC: the dump target is full: {text}"
    return text


def _save_dmesg(ctx: CaptureContext, sink: FileSink, record: DumpRecord) -> None:
    """vmcore-dmesg, else makedumpfile --dump-dmesg; failure is only logged."""
    out = sink.output_path(DMESG_INCOMPLETE)
    vmcore = str(ctx.vmcore)
    attempts: list[tuple[str, list[str]]] = [
        ("vmcore-dmesg", ["vmcore-dmesg", vmcore]),
        ("makedumpfile --dump-dmesg", ["makedumpfile", "--dump-dmesg", vmcore, str(out)]),
    ]
    with record.step("dmesg") as step:
        for name, argv in attempts:
            try:
                if argv[0] == "vmcore-dmesg":
                    with out.open("wb") as f:
                        proc.run(argv, stdout=f, timeout=600, on_output=ctx.log.passthrough)
                else:
                    out.unlink(missing_ok=True)  # makedumpfile refuses to overwrite
                    proc.run(argv, timeout=600)
            except (proc.ProgramError, OSError) as exc:
                ctx.log.info(f"{name} failed: {exc}")
                continue
            sink.finish_file(DMESG_INCOMPLETE, DMESG)
            ctx.log.info(f"saved {DMESG} with {name}")
            step.update(ok=True, tool=name)
            record.data["dmesg"] = {"file": DMESG, "tool": name}
            return
        # Both tools lag new kernels; our own reader of the printk buffer is the last resort.
        try:
            text = _own_dmesg(ctx.vmcore)
            with out.open("w", encoding="utf-8", errors="replace") as f:
                f.write(text)
        except (KdumpError, OSError) as exc:
            ctx.log.info(f"kdumpd's own kernel log reader failed: {exc}")
        else:
            sink.finish_file(DMESG_INCOMPLETE, DMESG)
            ctx.log.info(f"saved {DMESG} with kdumpd's own kernel log reader")
            step.update(ok=True, tool=OWN_DMESG_TOOL)
            record.data["dmesg"] = {"file": DMESG, "tool": OWN_DMESG_TOOL}
            return
        record.data["dmesg"] = {"file": DMESG_INCOMPLETE, "tool": None}


def _stream_own_dmesg(
    ctx: CaptureContext, sink: StreamSink, record: DumpRecord, step: dict[str, Any]
) -> None:
    """vmcore-dmesg failed on a stream target that keeps files: send our reader's log."""
    try:
        sink.write_small_file(DMESG, _own_dmesg(ctx.vmcore).encode())
    except (KdumpError, OSError) as exc:
        ctx.log.info(f"kdumpd's own kernel log reader failed: {exc}")
        return
    ctx.log.info(f"saved {DMESG} with kdumpd's own kernel log reader")
    step.update(ok=True, tool=OWN_DMESG_TOOL)
    record.data["dmesg"] = {"file": DMESG, "tool": OWN_DMESG_TOOL}


def _own_dmesg(vmcore: Path) -> str:
    with open_dump(vmcore) as dump:
        return read_kernel_log(dump).text()


def _save_vmcore(ctx: CaptureContext, sink: FileSink, record: DumpRecord) -> None:
    plan = ctx.plan
    out = sink.output_path(VMCORE_INCOMPLETE)
    # A file target, also when dump_to_rootfs saves an ssh or raw plan's dump: no -F.
    argv = [
        *collector_argv(plan.core_collector, target_kind="fs", nproc=ctx.nproc),
        str(ctx.vmcore),
        str(out),
    ]
    collector: dict[str, Any] = {"argv": argv, "returncode": None, "error": None}
    record.data["collector"] = collector
    record.data["fallback"] = {"used": False, "reason": None}
    ctx.log.info(f"saving vmcore: {' '.join(argv)}")
    with record.step("collector") as step:
        try:
            result = proc.run(argv, timeout=None, on_output=ctx.log.passthrough)
            ctx.log.keep(result.stdout + result.stderr, argv[0])
            collector["returncode"] = result.returncode
            collector["warnings"] = collector_warnings(result.stdout + result.stderr)
            step["ok"] = True
        except proc.ProgramError as exc:
            ctx.log.keep(exc.stdout + exc.stderr, argv[0])
            collector["warnings"] = collector_warnings(exc.stdout + exc.stderr)
            collector.update(returncode=exc.returncode, error=str(exc))
            failure: proc.ProgramError | None = exc
        else:
            failure = None
    if failure is not None:
        ctx.log.info(f"saving vmcore with {argv[0]} failed: {failure}")
        if _ENOSPC_TEXT in failure.stderr + failure.stdout:
            # The fallback would only fill the same disk again; keep what was written.
            raise TargetError(f"{argv[0]} ran out of space writing {out}", 28)
        _fallback_copy(ctx, out, record, failure)
    with record.step("sync") as step:
        sink.finish_file(VMCORE_INCOMPLETE, VMCORE)
        step["ok"] = True
    final = sink.output_path(VMCORE)
    st = final.stat()
    record.data["vmcore"] = {
        "file": VMCORE,
        "size": st.st_size,
        "allocated_bytes": st.st_blocks * 512,
        "bytes_written": record.data.get("vmcore", {}).get("bytes_written", st.st_size),
    }


def _save_streams(ctx: CaptureContext, sink: StreamSink, record: DumpRecord) -> None:
    """Stream targets: vmcore-dmesg's output (where files are kept), then the collector's.

    There is no fallback copy: an unfiltered ELF core through a pipe would be the
    whole of memory, and makedumpfile failing on the crashed kernel fails here.
    """
    vmcore = str(ctx.vmcore)
    if sink.keeps_files:
        with record.step("dmesg") as step:
            try:
                sink.save_stream(["vmcore-dmesg", vmcore], DMESG_INCOMPLETE, DMESG, on_output=None)
            except (proc.ProgramError, TargetError) as exc:
                ctx.log.info(f"vmcore-dmesg failed: {exc}")
                record.data["dmesg"] = {"file": DMESG_INCOMPLETE, "tool": None}
                _stream_own_dmesg(ctx, sink, record, step)
            else:
                ctx.log.info(f"saved {DMESG} with vmcore-dmesg")
                step.update(ok=True, tool="vmcore-dmesg")
                record.data["dmesg"] = {"file": DMESG, "tool": "vmcore-dmesg"}
    plan = ctx.plan
    argv = [
        *collector_argv(plan.core_collector, target_kind=plan.target.kind, nproc=ctx.nproc),
        vmcore,
    ]
    collector: dict[str, Any] = {"argv": argv, "returncode": None, "error": None}
    record.data["collector"] = collector
    record.data["fallback"] = {"used": False, "reason": "no fallback for stream targets"}
    ctx.log.info(f"saving vmcore: {' '.join(argv)} > {sink.location}")
    # The collector's messages only pass through to the console here: keep a bounded
    # copy to find its warnings (the kernel-version line).
    seen = bytearray()

    def output(chunk: bytes) -> None:
        if len(seen) < _KEPT_COLLECTOR_OUTPUT:
            seen.extend(chunk[: _KEPT_COLLECTOR_OUTPUT - len(seen)])
        ctx.log.passthrough(chunk)

    with record.step("collector") as step:
        try:
            sink.save_stream(argv, VMCORE_INCOMPLETE, sink.vmcore_name, on_output=output)
        except proc.ProgramError as exc:
            ctx.log.keep(exc.stdout + exc.stderr, argv[0])
            collector.update(returncode=exc.returncode, error=str(exc))
            collector["warnings"] = collector_warnings(exc.stdout + exc.stderr)
            raise
        except TargetError as exc:
            collector["error"] = str(exc)
            raise
        finally:
            collector.setdefault("warnings", collector_warnings(seen.decode(errors="replace")))
        collector["returncode"] = 0
        step["ok"] = True
    record.data["vmcore"] = {"file": sink.vmcore_name or None, "location": sink.location}


def _fallback_copy(
    ctx: CaptureContext, out: Path, record: DumpRecord, failure: proc.ProgramError
) -> None:
    why = str(failure)
    if is_makedumpfile(ctx.plan.core_collector):
        why = f"makedumpfile failed: {why}"
    record.data["fallback"] = {"used": True, "reason": why}
    ctx.log.info("falling back to a sparse copy of the ELF core (zero pages skipped)")
    out.unlink(missing_ok=True)

    def progress(done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        ctx.log.info(f"copied {percent}% ({done >> 20} MiB of {total >> 20} MiB)")

    with record.step("fallback-copy") as step:
        copied = sparse_copy(ctx.vmcore, out, progress=progress, progress_every=ctx.progress_every)
        step["ok"] = True
    record.data["vmcore"] = {"bytes_written": copied.bytes_written}


def _has_record_files(sink: Sink) -> bool:
    """Whether the target can take kexec-dmesg.log and the metadata now."""
    if isinstance(sink, StreamSink):
        return sink.keeps_files and sink.ready
    try:
        sink.output_path(METADATA)
    except TargetError:
        return False
    return True


def _finish(
    ctx: CaptureContext,
    sink: Sink,
    record: DumpRecord,
    hooks: list[HookRun],
    action: str,
) -> None:
    """Write kexec-dmesg.log and the metadata, if the dump directory exists."""
    record.data["hooks"] = record.data.get("hooks", []) + [_hook_json(h) for h in hooks]
    record.data["action"] = action
    if not _has_record_files(sink):
        ctx.log.info("no dump directory: the log and metadata stay on the console")
        return
    log_text = ctx.log.text() + "\n--- dmesg ---\n" + ctx.kernel_log()
    data = log_text.encode(errors="replace")
    limit = RESERVED_BYTES[LOG]
    if len(data) > limit:
        data = b"(truncated)\n" + data[-limit + 64 :]
    for name, content in ((METADATA, record.to_json()), (LOG, data)):
        try:
            sink.write_small_file(name, content)
        except TargetError as exc:
            ctx.log.info(f"{exc}")


def _dump_to_rootfs(
    ctx: CaptureContext, started: datetime, why: dict[str, Any] | None = None
) -> None:
    plan = ctx.plan
    if plan.rootfs is None:
        ctx.log.info("failure_action dump_to_rootfs, but the plan has no root filesystem")
        return
    ctx.log.info(f"failure_action dump_to_rootfs: saving to {plan.rootfs.device}")
    target = FsTarget(path=plan.rootfs_path, mount=plan.rootfs)
    sink = ctx.sink_for(target)
    record = _new_record(ctx, started)
    record.data["dump_to_rootfs"] = True
    if why is not None:
        # The metadata beside this dump says why it is not where the plan wanted it.
        record.data["planned_target"] = why
    ok = _dump(ctx, sink, record, started, target.kind)
    ctx.log.info("saving vmcore complete" if ok else "dump_to_rootfs failed too")
    _finish(ctx, sink, record, [], plan.final_action)


def _act(ctx: CaptureContext, action: str) -> None:
    if action not in FINAL_ACTIONS and action != "shell":
        ctx.log.info(f"unknown action {action!r}; rebooting")
        action = DEFAULT_ACTION
    ctx.log.info(f"executing {action}")
    try:
        ctx.execute(action)
    except KdumpError as exc:
        ctx.log.info(f"{action} failed: {exc}")

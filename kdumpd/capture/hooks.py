"""kdump_pre, pre.d, post.d, kdump_post, emergency.d and kdump_emergency.

A hook is any executable; it gets the dump's exit status as ``$1`` where
kdump-utils passes it (post.d, kdump_post). Hook failures are logged, never
fatal, except that kdump_pre's non-zero status cancels the dump (the caller
decides that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kdumpd import proc
from kdumpd.capture.log import CaptureLog
from kdumpd.paths import Paths


@dataclass(frozen=True)
class HookRun:
    path: str
    args: tuple[str, ...]
    returncode: int | None  # None: it could not start
    error: str | None = None


def run_hook(paths: Paths, hook: str, args: Sequence[str], log: CaptureLog) -> HookRun:
    """Run one hook with its output on the console and in the log; never raise."""
    argv = [str(paths.under_root(hook)), *args]
    log.info(f"running {hook} {' '.join(args)}".rstrip())
    try:
        result = proc.run(argv, ok_codes=range(256), timeout=None, on_line=log.info)
    except proc.ProgramError as exc:
        log.info(f"{hook} failed: {exc}")
        return HookRun(hook, tuple(args), exc.returncode, str(exc))
    except Exception as exc:  # a hook is the administrator's code: it never costs the dump
        log.info(f"{hook} could not be run to its end: {type(exc).__name__}: {exc}")
        return HookRun(hook, tuple(args), None, f"{type(exc).__name__}: {exc}")
    if result.returncode != 0:
        log.info(f"{hook} exited with {result.returncode} status")
    return HookRun(hook, tuple(args), result.returncode)


def run_hooks(
    paths: Paths, hooks: Sequence[str], args: Sequence[str], log: CaptureLog
) -> list[HookRun]:
    """Run hooks in the plan's order (already lexical); failures are only logged."""
    return [run_hook(paths, hook, args, log) for hook in hooks]

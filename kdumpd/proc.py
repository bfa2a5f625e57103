"""The only place kdumpd starts programs.

Every program start goes through :func:`run`: keyword-only options, a set of
accepted exit codes, a timeout, and a :class:`ProgramError` that carries argv,
exit code, stdout and stderr. Tests replace :data:`runner` (see
``tests/conftest.py``) so that an unexpected program start fails the test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from kdumpd.errors import KdumpError


@dataclass(frozen=True)
class Completed:
    """A finished program."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class ProgramError(KdumpError):
    """A program could not start, timed out, or exited with a code not accepted."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        reason: str,
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.reason = reason
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        message = f"{self.argv[0]}: {reason}"
        if detail:
            message += f": {detail}"
        super().__init__(message)


LineSink = Callable[[str], None]


def _real_run(
    argv: Sequence[str],
    *,
    ok_codes: Iterable[int],
    timeout: float | None,
    env: Mapping[str, str] | None,
    input: str | None,
    cwd: str | None,
    on_line: LineSink | None,
) -> Completed:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        if on_line is None:
            proc = subprocess.run(
                list(argv),
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=full_env,
                cwd=cwd,
                check=False,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
            out, err, code = proc.stdout, proc.stderr, proc.returncode
        else:
            out, err, code = _run_streaming(argv, timeout, full_env, cwd, on_line)
    except FileNotFoundError as exc:
        raise ProgramError(argv, None, "", "", "not found (is it installed?)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProgramError(
            argv, None, _text(exc.stdout), _text(exc.stderr), f"timed out after {timeout} s"
        ) from exc
    if code not in set(ok_codes):
        raise ProgramError(argv, code, out, err, f"exited with status {code}")
    return Completed(tuple(argv), code, out, err)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data


def _run_streaming(
    argv: Sequence[str],
    timeout: float | None,
    env: Mapping[str, str],
    cwd: str | None,
    on_line: LineSink,
) -> tuple[str, str, int]:
    """Run with stderr merged into stdout, handing each line to on_line as it comes.

    Used for slow programs (dracut) whose progress the user should see.
    """
    lines: list[str] = []
    with subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=dict(env),
        cwd=cwd,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            on_line(line.rstrip("\n"))
        code = proc.wait(timeout=timeout)
    text = "".join(lines)
    return text, text, code


Runner = Callable[..., Completed]

# Replaced by tests; production code calls run(), never this directly.
runner: Runner = _real_run


def run(
    argv: Sequence[str],
    *,
    ok_codes: Iterable[int] = (0,),
    timeout: float | None = 120,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    cwd: str | None = None,
    on_line: LineSink | None = None,
) -> Completed:
    """Run ``argv`` and return its result; raise ProgramError unless its code is in ok_codes."""
    if not argv:
        raise ValueError("empty argv")
    return runner(
        argv,
        ok_codes=tuple(ok_codes),
        timeout=timeout,
        env=env,
        input=input,
        cwd=cwd,
        on_line=on_line,
    )

"""The only place kdumpd starts programs.

Every program start goes through :func:`run`: keyword-only options, a set of
accepted exit codes, a timeout, and a :class:`ProgramError` that carries argv,
exit code, stdout and stderr. Tests replace :data:`runner` (see
``tests/conftest.py``) so that an unexpected program start fails the test.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

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
ChunkSink = Callable[[bytes], None]

# How much of a redirected program's output is kept for error messages and
# logs; the rest only passes through on_output (a collector's progress output
# can be long, and the capture kernel's memory is small).
OUTPUT_TAIL_BYTES = 64 * 1024


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


class _Tail:
    """The last OUTPUT_TAIL_BYTES of a stream."""

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > OUTPUT_TAIL_BYTES:
            del self.data[: len(self.data) - OUTPUT_TAIL_BYTES]

    def text(self) -> str:
        return self.data.decode(errors="replace")


def _run_redirected(
    argv: Sequence[str],
    *,
    ok_codes: Iterable[int],
    timeout: float | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
    stdout: IO[bytes] | None,
    pipe_to: Sequence[str] | None,
    on_output: ChunkSink | None,
) -> Completed:
    """Run ``argv`` (optionally piped into ``pipe_to``) with binary output.

    The last program's stdout goes to the ``stdout`` file when given; every
    other output stream is read as bytes, handed to ``on_output`` as it comes
    (progress lines with carriage returns pass through untouched) and its tail
    kept for the result. Exit codes are judged like ``set -o pipefail``: the
    rightmost program that exited with a code not in ok_codes is reported.
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    accepted = set(ok_codes)
    stages = [tuple(argv)] + ([tuple(pipe_to)] if pipe_to else [])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, stage in enumerate(stages):
            last = i == len(stages) - 1
            stdin: int | IO[bytes] = subprocess.DEVNULL
            if i > 0:
                previous = procs[-1].stdout
                assert previous is not None
                stdin = previous
            out: int | IO[bytes] = subprocess.PIPE
            if last and stdout is not None:
                out = stdout
            try:
                proc = subprocess.Popen(
                    list(stage), stdin=stdin, stdout=out, stderr=subprocess.PIPE,
                    env=full_env, cwd=cwd,
                )  # fmt: skip
            except FileNotFoundError as exc:
                raise ProgramError(stage, None, "", "", "not found (is it installed?)") from exc
            if i > 0 and procs[-1].stdout is not None:
                # The reader owns the pipe now: a writer gets SIGPIPE if it goes away.
                procs[-1].stdout.close()
            procs.append(proc)
        tails = _pump(procs, stdout is None, timeout, on_output)
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    err_text = "".join(tails[id(p.stderr)].text() for p in procs)
    last_out = procs[-1].stdout
    out_text = tails[id(last_out)].text() if last_out is not None and stdout is None else ""
    for stage, code in reversed(list(zip(stages, codes, strict=True))):
        if code not in accepted:
            raise ProgramError(stage, code, out_text, err_text, f"exited with status {code}")
    return Completed(tuple(argv), codes[-1], out_text, err_text)


def _pump(
    procs: list[subprocess.Popen[bytes]],
    read_last_stdout: bool,
    timeout: float | None,
    on_output: ChunkSink | None,
) -> dict[int, _Tail]:
    """Read every output pipe until EOF; raise ProgramError on timeout."""
    streams: list[IO[bytes]] = [p.stderr for p in procs if p.stderr is not None]
    if read_last_stdout and procs[-1].stdout is not None:
        streams.append(procs[-1].stdout)
    tails = {id(s): _Tail() for s in streams}
    deadline = None if timeout is None else time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for stream in streams:
            sel.register(stream, selectors.EVENT_READ, tails[id(stream)])
        while sel.get_map():
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                argv = procs[0].args
                assert isinstance(argv, list)
                raise ProgramError(argv, None, "", "", f"timed out after {timeout} s")
            for key, _ in sel.select(wait):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                tail: _Tail = key.data
                tail.add(chunk)
                if on_output is not None:
                    on_output(chunk)
    return tails


def _run_interactive(
    argv: Sequence[str],
    *,
    ok_codes: Iterable[int],
    timeout: float | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
) -> Completed:
    """Run with the caller's stdin, stdout and stderr (a shell on the console)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        code = subprocess.run(list(argv), env=full_env, cwd=cwd, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ProgramError(argv, None, "", "", "not found (is it installed?)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProgramError(argv, None, "", "", f"timed out after {timeout} s") from exc
    if code.returncode not in set(ok_codes):
        raise ProgramError(argv, code.returncode, "", "", f"exited with status {code.returncode}")
    return Completed(tuple(argv), code.returncode, "", "")


def _dispatch(
    argv: Sequence[str],
    *,
    ok_codes: Iterable[int],
    timeout: float | None,
    env: Mapping[str, str] | None,
    input: str | None,
    cwd: str | None,
    on_line: LineSink | None,
    stdout: IO[bytes] | None = None,
    pipe_to: Sequence[str] | None = None,
    on_output: ChunkSink | None = None,
    interactive: bool = False,
) -> Completed:
    if interactive:
        return _run_interactive(argv, ok_codes=ok_codes, timeout=timeout, env=env, cwd=cwd)
    if stdout is None and pipe_to is None and on_output is None:
        return _real_run(
            argv, ok_codes=ok_codes, timeout=timeout, env=env, input=input, cwd=cwd,
            on_line=on_line,
        )  # fmt: skip
    if input is not None or on_line is not None:
        raise ValueError("input and on_line do not combine with stdout, pipe_to or on_output")
    return _run_redirected(
        argv, ok_codes=ok_codes, timeout=timeout, env=env, cwd=cwd, stdout=stdout,
        pipe_to=pipe_to, on_output=on_output,
    )  # fmt: skip


Runner = Callable[..., Completed]

# Replaced by tests; production code calls run(), never this directly.
runner: Runner = _dispatch


def run(
    argv: Sequence[str],
    *,
    ok_codes: Iterable[int] = (0,),
    timeout: float | None = 120,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    cwd: str | None = None,
    on_line: LineSink | None = None,
    stdout: IO[bytes] | None = None,
    pipe_to: Sequence[str] | None = None,
    on_output: ChunkSink | None = None,
    interactive: bool = False,
) -> Completed:
    """Run ``argv`` and return its result; raise ProgramError unless its code is in ok_codes.

    ``interactive`` runs the program on the caller's own stdin, stdout and
    stderr (the capture agent's emergency shell); nothing is captured.

    Binary output (the capture agent's collectors): ``stdout`` sends the
    program's standard output to an open binary file instead of capturing it;
    ``pipe_to`` starts a second program reading the first one's output
    (``collector | writer``; the pair is judged like ``set -o pipefail`` and
    ``stdout`` then applies to the second); ``on_output`` receives every chunk
    of the remaining output (stderr, and stdout when not redirected) as bytes,
    as it arrives. Only the tail of such output is kept in the result.
    """
    if not argv:
        raise ValueError("empty argv")
    if pipe_to is not None and not pipe_to:
        raise ValueError("empty pipe_to")
    extra: dict[str, object] = {}
    # Passed only when used, so runners written for the plain form keep working.
    if stdout is not None:
        extra["stdout"] = stdout
    if pipe_to is not None:
        extra["pipe_to"] = tuple(pipe_to)
    if on_output is not None:
        extra["on_output"] = on_output
    if interactive:
        extra["interactive"] = True
    return runner(
        argv,
        ok_codes=tuple(ok_codes),
        timeout=timeout,
        env=env,
        input=input,
        cwd=cwd,
        on_line=on_line,
        **extra,
    )

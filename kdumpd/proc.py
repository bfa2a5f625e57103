"""The only place kdumpd starts programs.

Every program start goes through :func:`run`: keyword-only options, a set of
accepted exit codes, a timeout, and a :class:`ProgramError` that carries argv,
exit code, stdout and stderr. Tests replace :data:`runner` (see
``tests/conftest.py``) so that an unexpected program start fails the test.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from kdumpd.errors import KdumpError


@dataclass(frozen=True)
class Completed:
    """A finished program."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class ProgramError(KdumpError):
    """A program could not start, timed out, or exited with a code not accepted.

    ``returncode`` is None when it did not start (``errno`` says why) or timed out.
    """

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        reason: str,
        *,
        error_number: int | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.reason = reason
        #: The OS error of starting the program (ENOENT, ENOEXEC, EACCES...), else None.
        self.errno = error_number
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


def _start_error(argv: Sequence[str], exc: OSError) -> ProgramError:
    """Every OSError of starting a program, as a ProgramError carrying its errno."""
    if exc.errno == errno.ENOENT:
        reason = "not found (is it installed?)"
    elif exc.errno == errno.ENOEXEC:
        reason = "cannot be executed: exec format error (a script needs a #! line)"
    elif exc.errno == errno.EACCES:
        reason = "cannot be executed: permission denied (is it executable?)"
    else:
        reason = f"cannot be started: {exc.strerror or exc}"
    return ProgramError(argv, None, "", "", reason, error_number=exc.errno)


def _popen(argv: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a process group of its own (so a timeout can kill all of it)."""
    try:
        return subprocess.Popen(list(argv), start_new_session=True, **options)
    except OSError as exc:
        raise _start_error(argv, exc) from exc


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the program and everything it started (its process group), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def _text(data: bytes | None) -> str:
    """Program output as text: UTF-8, with bytes that are not UTF-8 replaced, never raising."""
    return data.decode("utf-8", errors="replace") if data else ""


def _full_env(env: Mapping[str, str] | None) -> dict[str, str]:
    full = dict(os.environ)
    if env:
        full.update(env)
    return full


def _timed_out(argv: Sequence[str], timeout: float | None, out: str, err: str) -> ProgramError:
    return ProgramError(argv, None, out, err, f"timed out after {timeout} s")


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
    if on_line is not None:
        out, code = _run_streaming(argv, timeout, _full_env(env), cwd, on_line)
        err = out
    else:
        process = _popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_full_env(env),
            cwd=cwd,
        )
        data = input.encode("utf-8", errors="surrogateescape") if input is not None else None
        try:
            raw_out, raw_err = process.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(process)
            raise _timed_out(argv, timeout, _text(exc.output), _text(exc.stderr)) from exc
        except BaseException:
            _kill_group(process)
            raise
        out, err, code = _text(raw_out), _text(raw_err), process.returncode
    if code not in set(ok_codes):
        raise ProgramError(argv, code, out, err, f"exited with status {code}")
    return Completed(tuple(argv), code, out, err)


class _Lines:
    """Splits a byte stream into lines of text for an on_line sink, keeping all of it."""

    def __init__(self, sink: LineSink) -> None:
        self.sink = sink
        self.pending = b""
        self.text: list[str] = []

    def add(self, chunk: bytes) -> None:
        self.pending += chunk
        *complete, self.pending = self.pending.split(b"\n")
        for line in complete:
            self._emit(line + b"\n")

    def close(self) -> None:
        if self.pending:
            self._emit(self.pending)
            self.pending = b""

    def _emit(self, raw: bytes) -> None:
        line = _text(raw)
        self.text.append(line)
        self.sink(line.rstrip("\n"))


def _run_streaming(
    argv: Sequence[str],
    timeout: float | None,
    env: Mapping[str, str],
    cwd: str | None,
    on_line: LineSink,
) -> tuple[str, int]:
    """Run with stderr merged into stdout, handing each line to on_line as it comes.

    Used for slow programs (dracut) whose progress the user should see. The
    timeout holds while the output streams: when it passes, the program and its
    process group are killed.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    lines = _Lines(on_line)
    process = _popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env),
        cwd=cwd,
    )
    try:
        assert process.stdout is not None
        with process.stdout, selectors.DefaultSelector() as sel:
            sel.register(process.stdout, selectors.EVENT_READ)
            while True:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    raise subprocess.TimeoutExpired(list(argv), timeout or 0)
                if not sel.select(wait):
                    continue
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                lines.add(chunk)
        lines.close()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        code = process.wait(timeout=left)
    except subprocess.TimeoutExpired as exc:
        _kill_group(process)
        lines.close()
        text = "".join(lines.text)
        raise _timed_out(argv, timeout, text, text) from exc
    except BaseException:
        _kill_group(process)
        raise
    return "".join(lines.text), code


class _Tail:
    """The last OUTPUT_TAIL_BYTES of a stream."""

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > OUTPUT_TAIL_BYTES:
            del self.data[: len(self.data) - OUTPUT_TAIL_BYTES]

    def text(self) -> str:
        return _text(bytes(self.data))


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
    full_env = _full_env(env)
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
            proc = _popen(
                stage, stdin=stdin, stdout=out, stderr=subprocess.PIPE, env=full_env, cwd=cwd
            )
            if i > 0 and procs[-1].stdout is not None:
                # The reader owns the pipe now: a writer gets SIGPIPE if it goes away.
                procs[-1].stdout.close()
            procs.append(proc)
        tails = _pump(procs, stdout is None, timeout, on_output)
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                _kill_group(p)
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
    """Run with the caller's stdin, stdout and stderr (a shell on the console).

    The program stays in the caller's process group: it owns the terminal.
    """
    try:
        process = subprocess.Popen(list(argv), env=_full_env(env), cwd=cwd)
    except OSError as exc:
        raise _start_error(argv, exc) from exc
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        process.kill()
        process.wait()
        raise _timed_out(argv, timeout, "", "") from exc
    if code not in set(ok_codes):
        raise ProgramError(argv, code, "", "", f"exited with status {code}")
    return Completed(tuple(argv), code, "", "")


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

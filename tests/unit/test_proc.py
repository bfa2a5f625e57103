"""The program runner: the guard fixture and the real runner's error reporting."""

from __future__ import annotations

import errno
import io
import time
from pathlib import Path
from typing import Any

import pytest

from kdumpd import proc
from kdumpd.capture.hooks import run_hook
from kdumpd.capture.log import CaptureLog
from kdumpd.paths import Paths


def test_unplanned_program_start_fails_the_test(programs: object) -> None:
    with pytest.raises(pytest.fail.Exception, match="unexpected program start"):
        proc.run(["kexec", "-p", "-u"])


def test_expected_program_returns_its_answer(programs: object) -> None:
    programs.expect("uname", stdout="6.1.0\n")  # type: ignore[attr-defined]
    assert proc.run(["uname", "-r"]).stdout == "6.1.0\n"


def test_stub_rejects_exit_code_not_accepted(programs: object) -> None:
    programs.expect("kexec", returncode=1, stderr="Cannot load")  # type: ignore[attr-defined]
    with pytest.raises(proc.ProgramError) as info:
        proc.run(["kexec", "-p"])
    assert info.value.returncode == 1


@pytest.mark.integration
def test_real_runner_reports_argv_code_and_stderr() -> None:
    with pytest.raises(proc.ProgramError) as info:
        proc.run(["sh", "-c", "echo oops >&2; exit 4"])
    err = info.value
    assert err.argv == ("sh", "-c", "echo oops >&2; exit 4")
    assert err.returncode == 4
    assert "oops" in err.stderr
    assert "exited with status 4: oops" in str(err)


@pytest.mark.integration
def test_real_runner_accepts_listed_codes_and_streams_lines() -> None:
    seen: list[str] = []
    result = proc.run(["sh", "-c", "echo a; echo b; exit 3"], ok_codes=(0, 3), on_line=seen.append)
    assert result.returncode == 3
    assert seen == ["a", "b"]


@pytest.mark.integration
def test_real_runner_missing_program_and_timeout() -> None:
    with pytest.raises(proc.ProgramError, match="not found"):
        proc.run(["/nonexistent/program"])
    with pytest.raises(proc.ProgramError, match="timed out"):
        proc.run(["sleep", "5"], timeout=0.2)


def test_binary_options_reach_the_runner_only_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []

    def runner(argv: object, **kwargs: object) -> proc.Completed:
        seen.append(kwargs)
        return proc.Completed(("x",), 0, "", "")

    monkeypatch.setattr(proc, "runner", runner)
    proc.run(["x"])
    proc.run(["x"], pipe_to=["dd"], on_output=lambda _: None)
    assert "pipe_to" not in seen[0] and "stdout" not in seen[0]
    assert seen[1]["pipe_to"] == ("dd",)


@pytest.mark.integration
def test_real_runner_writes_stdout_to_a_binary_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    chunks: list[bytes] = []
    with out.open("wb") as f:
        result = proc.run(
            ["sh", "-c", "printf 'a\\000b'; printf 'progress\\r50%%\\r' >&2"],
            stdout=f,
            on_output=chunks.append,
        )
    assert out.read_bytes() == b"a\0b"
    assert b"".join(chunks) == b"progress\r50%\r"
    assert result.stdout == "" and "50%" in result.stderr


@pytest.mark.integration
def test_real_runner_pipes_two_programs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("wb") as f:
        proc.run(["printf", "hello"], pipe_to=["tr", "a-z", "A-Z"], stdout=f)
    assert out.read_bytes() == b"HELLO"
    captured = proc.run(["printf", "x"], pipe_to=["cat"], on_output=lambda _: None)
    assert captured.stdout == "x"


@pytest.mark.integration
def test_real_pipeline_fails_like_pipefail() -> None:
    with pytest.raises(proc.ProgramError) as info:
        proc.run(["sh", "-c", "echo data; exit 3"], pipe_to=["cat"], on_output=lambda _: None)
    assert info.value.returncode == 3 and info.value.argv[0] == "sh"
    with pytest.raises(proc.ProgramError) as info:
        proc.run(["printf", "x"], pipe_to=["sh", "-c", "cat >/dev/null; echo full >&2; exit 1"])
    assert info.value.argv[0] == "sh" and "full" in str(info.value)


@pytest.mark.integration
def test_real_redirected_run_times_out_and_reports_missing_programs() -> None:
    with pytest.raises(proc.ProgramError, match="timed out"):
        proc.run(["sleep", "5"], timeout=0.3, on_output=lambda _: None)
    with pytest.raises(proc.ProgramError, match="not found"):
        proc.run(["printf", "x"], pipe_to=["/nonexistent/writer"])


# -- the contract in every mode: start errors, streaming timeout, bytes ---------------


def _hook(tmp_path: Path, text: str, mode: int) -> Path:
    hook = tmp_path / "hook"
    hook.write_text(text)
    hook.chmod(mode)
    return hook


@pytest.mark.integration
@pytest.mark.parametrize(
    ("text", "mode", "number", "reason"),
    [
        ("echo no interpreter line\n", 0o755, errno.ENOEXEC, "exec format error"),
        ("#!/bin/sh\necho not executable\n", 0o644, errno.EACCES, "permission denied"),
    ],
    ids=["no-shebang", "mode-0644"],
)
@pytest.mark.parametrize("mode_of_run", ["captured", "streaming", "redirected", "interactive"])
def test_every_start_error_is_a_program_error_with_errno(
    tmp_path: Path, text: str, mode: int, number: int, reason: str, mode_of_run: str
) -> None:
    hook = _hook(tmp_path, text, mode)
    every: dict[str, dict[str, Any]] = {
        "captured": {},
        "streaming": {"on_line": lambda line: None},
        "redirected": {"on_output": lambda chunk: None},
        "interactive": {"interactive": True},
    }
    options = every[mode_of_run]
    with pytest.raises(proc.ProgramError) as caught:
        proc.run([str(hook)], **options)
    assert caught.value.errno == number
    assert caught.value.returncode is None
    assert reason in str(caught.value)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("text", "mode"),
    [("echo no interpreter line\n", 0o755), ("#!/bin/sh\necho not executable\n", 0o644)],
    ids=["no-shebang", "mode-0644"],
)
def test_a_hook_that_cannot_start_is_logged_and_the_capture_goes_on(
    tmp_path: Path, text: str, mode: int
) -> None:
    hook = _hook(tmp_path, text, mode)
    log = CaptureLog(console=io.StringIO())
    run = run_hook(Paths(root=Path("/")), str(hook), ["0"], log)
    assert run.returncode is None
    assert run.error is not None and "cannot be executed" in run.error
    assert any("cannot be executed" in line for line in log.lines)


@pytest.mark.integration
def test_streaming_timeout_kills_the_program_and_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pidfile}; echo started; wait"
    seen: list[str] = []
    start = time.monotonic()
    with pytest.raises(proc.ProgramError, match="timed out after 1.0 s") as caught:
        proc.run(["sh", "-c", script], timeout=1.0, on_line=seen.append)
    assert time.monotonic() - start < 10
    assert seen == ["started"]
    assert caught.value.returncode is None
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the program's own child outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.integration
def test_captured_timeout_does_not_wait_for_a_grandchild_holding_the_pipe() -> None:
    start = time.monotonic()
    with pytest.raises(proc.ProgramError, match="timed out"):
        proc.run(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.5)
    assert time.monotonic() - start < 10


INVALID = "printf 'ok \\377\\376 bytes\\n'; printf '\\377 err\\n' >&2; exit 3"


@pytest.mark.integration
@pytest.mark.parametrize("mode_of_run", ["captured", "streaming", "redirected"])
def test_output_that_is_not_utf8_never_raises(mode_of_run: str) -> None:
    seen: list[str] = []
    options: dict[str, Any] = {
        "captured": {},
        "streaming": {"on_line": seen.append},
        "redirected": {"on_output": lambda chunk: None},
    }[mode_of_run]
    with pytest.raises(proc.ProgramError) as caught:
        proc.run(["sh", "-c", INVALID], **options)
    assert caught.value.returncode == 3
    assert "ok \ufffd\ufffd bytes" in caught.value.stdout + caught.value.stderr
    done = proc.run(["sh", "-c", INVALID], ok_codes=(3,), **options)
    assert "\ufffd" in done.stdout + done.stderr
    if mode_of_run == "streaming":
        assert "ok \ufffd\ufffd bytes" in seen

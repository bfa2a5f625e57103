"""The program runner: the guard fixture and the real runner's error reporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpd import proc


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

"""The program runner: the guard fixture and the real runner's error reporting."""

from __future__ import annotations

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

"""Shared fixtures: a fake root tree and a guard against unplanned program starts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from kdumpd import proc
from kdumpd.paths import Paths


class ProgramStub:
    """Answers program starts a test expected; fails the test on any other.

    ``expect(argv0, stdout=..., returncode=...)`` registers an answer for a
    program name; every call is recorded in ``calls``.
    """

    def __init__(self) -> None:
        self.answers: dict[str, list[Callable[[Sequence[str]], proc.Completed]]] = {}
        self.calls: list[tuple[str, ...]] = []

    def expect(
        self, program: str, *, stdout: str = "", stderr: str = "", returncode: int = 0
    ) -> None:
        def answer(argv: Sequence[str]) -> proc.Completed:
            return proc.Completed(tuple(argv), returncode, stdout, stderr)

        self.answers.setdefault(program, []).append(answer)

    def expect_call(self, program: str, func: Callable[[Sequence[str]], proc.Completed]) -> None:
        self.answers.setdefault(program, []).append(func)

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> proc.Completed:
        self.calls.append(tuple(argv))
        name = Path(argv[0]).name
        queue = self.answers.get(name)
        if not queue:
            pytest.fail(f"unexpected program start: {list(argv)!r}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        result = answer(argv)
        if result.returncode not in kwargs.get("ok_codes", (0,)):
            raise proc.ProgramError(
                argv,
                result.returncode,
                result.stdout,
                result.stderr,
                f"exited with status {result.returncode}",
            )
        if kwargs.get("on_line"):
            for line in result.stdout.splitlines():
                kwargs["on_line"](line)
        return result


@pytest.fixture(autouse=True)
def programs(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ProgramStub]:
    """Every test gets a stub runner; tests marked integration or vm run real programs."""
    stub = ProgramStub()
    if not (
        request.node.get_closest_marker("integration") or request.node.get_closest_marker("vm")
    ):
        monkeypatch.setattr(proc, "runner", stub)
    yield stub


@pytest.fixture
def fake_root(tmp_path: Path) -> Paths:
    """An empty system tree; tests write the files they need under it.

    Its kernel is a stand-in: the autouse program fixture fakes every kexec.
    """
    root = tmp_path / "root"
    root.mkdir()
    return Paths(root=root, kernel_standin=True)


def write(path: Path, text: str) -> Path:
    """Create parents and write text: the usual way to populate a fake root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def install_collector(paths: Paths) -> Path:
    """What check-config needs of a host beyond the files it checks.

    An executable /usr/sbin/makedumpfile (the default collector) and a root
    filesystem in mountinfo (check-config compiles the plan, as start does).
    """
    if not paths.proc_mounts.exists():
        write(paths.proc_mounts, "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    location = write(paths.under_root("/usr/sbin/makedumpfile"), "#!/bin/sh\nexit 0\n")
    location.chmod(0o755)
    return location


@pytest.fixture(autouse=True)
def _required_programs(request: pytest.FixtureRequest) -> None:
    """``@pytest.mark.requires("prog", root=True)``: fail, never skip, when one is missing.

    The test command installs every program a test needs (tools/setup-host.sh); a
    missing one is a missing install step, and a skip would hide it.
    """
    for mark in request.node.iter_markers("requires"):
        missing = [name for name in mark.args if shutil.which(name) is None]
        if missing:
            pytest.fail(f"{', '.join(missing)} not installed: tools/setup-host.sh installs it")
        if mark.kwargs.get("root") and os.geteuid() != 0:
            pytest.fail("this test needs root (the test command runs as root)")

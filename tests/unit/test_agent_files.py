"""The capture agent's file list: an allow-list its imports stay within, stdlib outside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdumpd.image.agent import AGENT_FILES, agent_sources, imported_modules, module_names

PACKAGE = Path(__file__).resolve().parents[2] / "kdumpd"


def _module(relative: str) -> str:
    return relative.removesuffix(".py").replace("/", ".").removesuffix(".__init__")


ALLOWED = frozenset(_module(name) for name in AGENT_FILES)


def test_every_listed_file_exists_and_the_whole_capture_package_is_listed() -> None:
    sources = agent_sources()
    assert all(path.is_file() for path in sources.values())
    capture = {f"kdumpd/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.glob("capture/*.py")}
    assert capture <= set(AGENT_FILES)


def test_the_agent_imports_stay_within_the_list_and_the_standard_library() -> None:
    outside: dict[str, set[str]] = {}
    foreign: dict[str, set[str]] = {}
    for relative, path in agent_sources().items():
        for name in imported_modules(path.read_text(encoding="utf-8")):
            top = name.split(".", 1)[0]
            if top == "kdumpd":
                parts = name.split(".")
                # "from kdumpd.a import b" yields kdumpd.a and kdumpd.a.b: b may be a name
                if not any(".".join(parts[:n]) in ALLOWED for n in (len(parts), len(parts) - 1)):
                    outside.setdefault(relative, set()).add(name)
            elif top != "__future__" and top not in sys.stdlib_module_names:
                foreign.setdefault(relative, set()).add(name)
    assert outside == {}, "imports of kdumpd outside AGENT_FILES"
    assert foreign == {}, "imports outside the standard library"


def test_the_self_check_imports_every_listed_module() -> None:
    assert set(module_names(agent_sources())) == ALLOWED - {"kdumpd.capture.__main__"}


@pytest.mark.integration
def test_the_listed_files_alone_run_the_agent(tmp_path: Path) -> None:
    """A copy of exactly the allow-listed files starts (--help) with the bare interpreter."""
    for relative, source in agent_sources().items():
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    done = subprocess.run(
        [sys.executable, "-E", "-s", "-S", "-B", "-m", "kdumpd.capture", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--dry-run-actions" in done.stdout

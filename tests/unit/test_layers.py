"""The import-layer check: kdumpd passes it, and it fails where it must."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write
from tests.support import layers

PACKAGE = Path(__file__).resolve().parents[2] / "kdumpd"


def test_kdumpd_imports_downward_only_and_without_cycles() -> None:
    assert [str(v) for v in layers.check(PACKAGE)] == []


def package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A small package named kdumpd with the ground, the contract and ``files``."""
    base = tmp_path / "kdumpd"
    for name, text in {
        "__init__.py": "",
        "errors.py": "class KdumpError(Exception): ...\n",
        "paths.py": "",
        "contract/__init__.py": "",
        "contract/plan.py": "from kdumpd.errors import KdumpError\n",
        "capture/__init__.py": "",
        "targets/__init__.py": "",
        **files,
    }.items():
        write(base / name, text)
    return base


def test_a_sound_package_passes(tmp_path: Path) -> None:
    base = package(
        tmp_path,
        {
            "capture/agent.py": "from kdumpd.contract import plan\nfrom kdumpd import paths\n",
            "targets/fs.py": "from kdumpd.contract.plan import KdumpError\n",
            "planner.py": "from kdumpd.targets import fs\n",
        },
    )
    assert layers.check(base) == []


def test_a_deliberate_cycle_fails_even_through_a_function_body(tmp_path: Path) -> None:
    base = package(
        tmp_path,
        {
            "targets/fs.py": "from kdumpd.targets import raw\n",
            # the import that used to hide cycles: inside a function
            "targets/raw.py": "def compile():\n    from kdumpd.targets.fs import x\n",
        },
    )
    problems = [str(p) for p in layers.check(base)]
    assert problems == ["kdumpd.targets.fs: import cycle: kdumpd.targets.fs <-> kdumpd.targets.raw"]


def test_a_capture_import_of_first_kernel_code_fails(tmp_path: Path) -> None:
    base = package(
        tmp_path,
        {
            "planner.py": "",
            "capture/agent.py": "import json\n\ndef run():\n    from kdumpd import planner\n",
        },
    )
    problems = [str(p) for p in layers.check(base)]
    assert problems == [
        "kdumpd.capture.agent: the capture side imports first-kernel code kdumpd.planner; "
        "it may import only the contract, the ground and the vmcore readers"
    ]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"targets/fs.py": "from kdumpd.capture import agent\n", "capture/agent.py": ""},
            "kdumpd.targets.fs: first-kernel code imports the capture side kdumpd.capture.agent",
        ),
        (
            {"targets/fs.py": "import kdumpd.planner\n", "planner.py": ""},
            "kdumpd.targets.fs: imports kdumpd.planner, which is in a higher layer (planner)",
        ),
        (
            {"contract/ssh.py": "from kdumpd import paths\n"},
            "kdumpd.contract.ssh: the contract imports kdumpd.paths; only errors is allowed",
        ),
        (
            {"gadgets.py": ""},
            "kdumpd.gadgets: belongs to no layer; add 'gadgets' to LAYERS in "
            "tests/support/layers.py",
        ),
    ],
)
def test_other_violations(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    assert [str(p) for p in layers.check(package(tmp_path, files))] == [expected]


def test_relative_imports_count(tmp_path: Path) -> None:
    base = package(
        tmp_path,
        {"capture/agent.py": "from ..targets import fs\n", "targets/fs.py": ""},
    )
    assert "imports first-kernel code kdumpd.targets.fs" in str(layers.check(base)[0])

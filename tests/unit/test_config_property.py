"""Property: arbitrary kdump.conf and variables-file bytes never end in a traceback.

For any bytes, ``kdumpctl check-config`` exits 0 or 1, ``--json`` prints exactly
one JSON document, and when it says valid, compiling the plan and rendering the
dracut module (dracut itself is not run) succeeds: whatever start would reject,
check-config rejects first.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kdumpd import cli
from kdumpd.config import load_kdump_conf, load_sysconfig
from kdumpd.config.kdumpconf import KNOWN_DIRECTIVES, REMOVED_DIRECTIVES
from kdumpd.config.sysconfig import VARIABLES
from kdumpd.image import build
from kdumpd.image.agent import PythonFiles
from kdumpd.image.needs import image_needs
from kdumpd.paths import Paths
from kdumpd.planner import compile_full
from tests.conftest import ProgramStub, install_collector, write

KVER = "6.1.0-prop-amd64"
X86 = os.uname_result(("Linux", "host", KVER, "#1 SMP", "x86_64"))
TEMPLATES = Path(__file__).resolve().parents[2] / "dracut-module" / "templates"
PYTHON_FILES = PythonFiles(sources=("/usr/lib/python3.11/os.py",), extensions=())

# Lines that look like kdump.conf, so that valid files (not only noise) come out too.
_VALUE_TEXT = st.lists(
    st.sampled_from(
        [*"abc/._-019 \t\"'#$\\`;\n\x00\x7f\x85é", "/var/crash", "makedumpfile", " -F", "/"]
    ),
    max_size=12,
).map("".join)
_DIRECTIVE_LINE = st.builds(
    lambda option, value: f"{option} {value}".encode("utf-8", "surrogatepass"),
    st.sampled_from(sorted({*KNOWN_DIRECTIVES, *REMOVED_DIRECTIVES, "bogus"})),
    _VALUE_TEXT,
)
_ASSIGNMENT_LINE = st.builds(
    lambda name, value: f"{name}={value}".encode(),
    st.sampled_from([*VARIABLES, "OTHER"]),
    _VALUE_TEXT,
)


def _file(line: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    structured = st.lists(st.one_of(line, st.binary(max_size=40)), max_size=6).map(b"\n".join)
    return st.one_of(st.binary(max_size=200), structured)


def host_tree(paths: Paths) -> None:
    """A host a valid configuration compiles on: root fs on ext4, the programs, the kernel."""
    write(paths.proc_mounts, "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    write(paths.under_root("/dev/sda1"), "")
    paths.var_crash.mkdir(parents=True, exist_ok=True)
    install_collector(paths)
    for program in ("/usr/sbin/vmcore-dmesg", "/usr/bin/python3"):
        write(paths.under_root(program), "#!/bin/sh\n").chmod(0o755)
    write(paths.under_root(f"/boot/vmlinuz-{KVER}"), "kernel")


def check_config(paths: Paths, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(["--root", str(paths.root), *argv, "check-config"], uname=X86)
    out, err = capsys.readouterr()
    assert "internal error" not in out + err
    assert "Traceback" not in out + err
    return code, out


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(conf=_file(_DIRECTIVE_LINE), variables=_file(_ASSIGNMENT_LINE))
def test_any_config_bytes(
    conf: bytes,
    variables: bytes,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    programs: ProgramStub,
) -> None:
    root = tmp_path_factory.mktemp("root")
    paths = Paths(root=root, kernel_standin=True)
    host_tree(paths)
    write(paths.kdump_conf, "").write_bytes(conf)
    write(paths.default_kdump, "").write_bytes(variables)

    code, out = check_config(paths, capsys)
    assert code in (0, 1)
    assert out == ""
    json_code, out = check_config(paths, capsys, "--json")
    document = json.loads(out)  # exactly one document: json.loads refuses trailing data
    assert json_code == code
    assert document["valid"] is (code == 0)

    event("valid" if code == 0 else "invalid")
    if code == 0:
        compile_and_render(paths, programs, tmp_path_factory.mktemp("build"))
    shutil.rmtree(root)


def compile_and_render(paths: Paths, programs: ProgramStub, build_dir: Path) -> None:
    """What start does with a valid configuration, up to (not including) running dracut."""
    programs.expect("blkid", stdout="ext4\n")
    parsed = load_kdump_conf(paths)
    load_sysconfig(paths, "x86_64")
    compiled = compile_full(parsed.config, paths, kernel_release=KVER)
    build.stage(
        paths,
        parsed.config,
        compiled.plan,
        needs=image_needs(paths, compiled.plan),
        build_dir=build_dir,
        template_dir=TEMPLATES,
        python_files=PYTHON_FILES,
    )
    rendered: Sequence[Path] = sorted(build_dir.iterdir())
    assert (build_dir / "plan.json").is_file()
    assert any(path.name == "kdumpd-setup.sh" for path in rendered)

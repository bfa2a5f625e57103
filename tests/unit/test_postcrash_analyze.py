"""Finding the debug kernel of a dump, and kdumpctl analyze without a report."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from kdumpd import cli, proc
from kdumpd.paths import Paths
from kdumpd.postcrash.analyze import DebugKernelMissing, elf_build_id, find_debug_kernel
from tests.conftest import ProgramStub, write
from tests.support.dumpbuilders import (
    BUILD_ID,
    LAYOUT_5_11,
    new_image,
    put_lockless_ring,
    sample_lines,
    write_kdump,
)

X86 = os.uname_result(("Linux", "host", "6.1.0-28-amd64", "#1 SMP", "x86_64"))
RELEASE = "6.1.0-test-amd64"


def fake_vmlinux(path: Path, build_id: str) -> Path:
    """An ELF64 executable with one PT_NOTE holding a GNU build-id note."""
    desc = bytes.fromhex(build_id)
    note = struct.pack("<III", 4, len(desc), 3) + b"GNU\0" + desc
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 120, 0, 0, len(note), len(note), 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ehdr + phdr + note)
    return path


def test_elf_build_id(tmp_path: Path) -> None:
    assert elf_build_id(fake_vmlinux(tmp_path / "v", BUILD_ID)) == BUILD_ID
    assert elf_build_id(write(tmp_path / "text", "not elf")) is None


def test_debian_debug_path_with_matching_build_id(fake_root: Paths) -> None:
    path = fake_vmlinux(fake_root.under_root(f"/usr/lib/debug/boot/vmlinux-{RELEASE}"), BUILD_ID)
    found = find_debug_kernel(fake_root, RELEASE, BUILD_ID, environ={})
    assert found.path == path and found.how == "distribution debug path"


def test_build_id_tree(fake_root: Paths) -> None:
    tree = f"/usr/lib/debug/.build-id/{BUILD_ID[:2]}/{BUILD_ID[2:]}.debug"
    path = fake_vmlinux(fake_root.under_root(tree), BUILD_ID)
    assert find_debug_kernel(fake_root, RELEASE, BUILD_ID, environ={}).path == path


def test_wrong_build_id_is_refused_and_package_named(fake_root: Paths) -> None:
    fake_vmlinux(fake_root.under_root(f"/usr/lib/debug/boot/vmlinux-{RELEASE}"), "ab" * 20)
    with pytest.raises(DebugKernelMissing) as exc:
        find_debug_kernel(fake_root, RELEASE, BUILD_ID, environ={})
    text = str(exc.value)
    assert f"has build-id {'ab' * 20}" in text
    assert f"Install linux-image-{RELEASE}-dbg" in text and "DEBUGINFOD_URLS" in text


def test_fedora_names_kernel_debuginfo(fake_root: Paths) -> None:
    write(fake_root.under_root("/etc/os-release"), 'ID=fedora\nID_LIKE=""\n')
    with pytest.raises(DebugKernelMissing, match="kernel-debuginfo-6.8.0-1.fc40.x86_64"):
        find_debug_kernel(fake_root, "6.8.0-1.fc40.x86_64", None, environ={})


def test_debuginfod_when_configured(
    fake_root: Paths, tmp_path: Path, programs: ProgramStub
) -> None:
    fetched = fake_vmlinux(tmp_path / "cache" / "debuginfo", BUILD_ID)

    def find(argv: Sequence[str]) -> proc.Completed:
        assert list(argv) == ["debuginfod-find", "debuginfo", BUILD_ID]
        return proc.Completed(tuple(argv), 0, f"{fetched}\n", "")

    programs.expect_call("debuginfod-find", find)
    found = find_debug_kernel(
        fake_root, RELEASE, BUILD_ID, environ={"DEBUGINFOD_URLS": "https://debuginfod.invalid"}
    )
    assert found.path == fetched and found.how == "debuginfod"


def test_explicit_vmlinux_missing(fake_root: Paths, tmp_path: Path) -> None:
    with pytest.raises(DebugKernelMissing, match="no such file"):
        find_debug_kernel(fake_root, RELEASE, BUILD_ID, explicit=tmp_path / "x", environ={})


@pytest.fixture
def dump_file(tmp_path: Path) -> Path:
    image = new_image()
    put_lockless_ring(image, LAYOUT_5_11, sample_lines(5))
    return write_kdump(image, tmp_path / "vmcore", "zlib")


def test_kdumpctl_analyze_without_debug_kernel_names_package(
    fake_root: Paths,
    dump_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DEBUGINFOD_URLS", raising=False)
    code = cli.main(["--root", str(fake_root.root), "analyze", str(dump_file)], uname=X86)
    _, err = capsys.readouterr()
    assert code == 1
    assert f"linux-image-{RELEASE}-dbg" in err


def test_kdumpctl_analyze_opens_crash(
    fake_root: Paths,
    dump_file: Path,
    programs: ProgramStub,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DEBUGINFOD_URLS", raising=False)
    vmlinux = fake_vmlinux(fake_root.under_root(f"/usr/lib/debug/boot/vmlinux-{RELEASE}"), BUILD_ID)
    programs.expect("crash")
    code = cli.main(["--root", str(fake_root.root), "analyze", str(dump_file)], uname=X86)
    assert code == 0
    assert programs.calls == [("crash", str(vmlinux), str(dump_file))]
    assert "debug kernel: " in capsys.readouterr().err


def test_kdumpctl_analyze_report_refuses_a_flattened_stream(
    fake_root: Paths, dump_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.dumpbuilders import write_flattened

    flat = write_flattened(dump_file, tmp_path / "vmcore.flat")
    code = cli.main(["--root", str(fake_root.root), "analyze", "--report", str(flat)], uname=X86)
    assert code == 1
    assert "makedumpfile -R" in capsys.readouterr().err

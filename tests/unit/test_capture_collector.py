"""core_collector rewriting (kdump-utils rules) and the sparse-copy fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpd.capture.collector import collector_argv, sparse_copy
from tests.support.synth import CoreSpec, generate_core

DEFAULT = ("makedumpfile", "-l", "--message-level", "7", "-d", "31")


def test_fs_target_strips_flattened_option() -> None:
    argv = collector_argv((*DEFAULT, "-F"), target_kind="fs", nproc=1)
    assert argv == DEFAULT


@pytest.mark.parametrize("kind", ["raw", "ssh"])
def test_stream_targets_get_exactly_one_flattened_option(kind: str) -> None:
    argv = collector_argv(("makedumpfile", "-F", "-l", "-F"), target_kind=kind, nproc=8)
    assert argv.count("-F") == 1
    assert not any(a.startswith("--num-threads") for a in argv)


def test_threads_leave_one_cpu_and_need_three() -> None:
    assert collector_argv(DEFAULT, target_kind="fs", nproc=2) == DEFAULT
    assert collector_argv(DEFAULT, target_kind="fs", nproc=4)[-1] == "--num-threads=3"


def test_elf_output_and_user_threads_get_no_added_threads() -> None:
    elf = ("makedumpfile", "-E", "-d", "31")
    assert collector_argv(elf, target_kind="fs", nproc=8) == elf
    own = (*DEFAULT, "--num-threads=2")
    assert collector_argv(own, target_kind="fs", nproc=8) == own


def test_other_collectors_are_left_alone() -> None:
    assert collector_argv(("cp", "-F"), target_kind="ssh", nproc=8) == ("cp", "-F")


def test_sparse_copy_is_equal_and_sparse(tmp_path: Path) -> None:
    source = generate_core(tmp_path / "core", CoreSpec(data_pages=20, zero_pages=300)).path
    seen: list[tuple[int, int]] = []
    result = sparse_copy(
        source, tmp_path / "copy", progress=lambda d, t: seen.append((d, t)), progress_every=0
    )
    copy = tmp_path / "copy"
    assert copy.read_bytes() == source.read_bytes()
    assert result.size == source.stat().st_size
    # Headers, notes, the kernel pages and 20 data pages; far less than the size.
    assert result.bytes_written < result.size // 4
    assert copy.stat().st_blocks * 512 < result.size // 4
    assert copy.stat().st_mode & 0o777 == 0o600
    assert seen[-1] == (result.size, result.size)


def test_sparse_copy_keeps_trailing_zero_pages(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"\x7fELF" + bytes(4092) + bytes(8192))
    sparse_copy(source, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == source.read_bytes()

"""Our kernel log reader against the real tools: vmcore-dmesg and makedumpfile."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpd import proc
from kdumpd.vmcore.dump import open_dump
from kdumpd.vmcore.printk import read_kernel_log
from tests.support.dumpbuilders import (
    LAYOUT_5_11,
    new_image,
    put_lockless_ring,
    sample_lines,
    write_elf,
)
from tests.support.synth import CoreSpec, generate_core

pytestmark = pytest.mark.integration


def test_lockless_ring_matches_vmcore_dmesg(tmp_path: Path) -> None:
    # Only the 5.11+ layout: Debian 12's vmcore-dmesg misreads 5.10's embedded
    # printk_info (the unit tests cover that layout).
    image = new_image()
    expected = put_lockless_ring(image, LAYOUT_5_11, sample_lines(40))
    path = write_elf(image, tmp_path / "vmcore")
    theirs = proc.run(["vmcore-dmesg", str(path)], timeout=60).stdout
    with open_dump(path) as dump:
        ours = read_kernel_log(dump).text()
    assert ours == theirs == "".join(expected)


@pytest.mark.parametrize("compress", ["-l", "-c", "-E"])
def test_makedumpfile_output_reads_like_makedumpfile_dump_dmesg(
    tmp_path: Path, compress: str
) -> None:
    lines = (
        *(f"synthetic line {i} \x7f" for i in range(30)),
        "Kernel panic - not syncing: sysrq triggered crash",
    )
    core = generate_core(tmp_path / "core", CoreSpec(dmesg=lines)).path
    out = tmp_path / "dump"
    proc.run(["makedumpfile", compress, "-d", "31", str(core), str(out)], timeout=120)
    flat = tmp_path / "dump.flat"
    with flat.open("wb") as f:
        proc.run(["makedumpfile", "-F", compress, "-d", "31", str(core)], stdout=f, timeout=120)
    reference = tmp_path / "reference.txt"
    proc.run(["makedumpfile", "--dump-dmesg", str(out), str(reference)], timeout=120)
    for path in (out, flat):
        with open_dump(path) as dump:
            assert read_kernel_log(dump).text() == reference.read_text()
    assert "sysrq triggered crash" in reference.read_text()

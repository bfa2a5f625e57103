"""The ELF core reader against cores from the synthetic generator."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kdumpd.vmcore.elf import (
    NT_PRSTATUS,
    PT_LOAD,
    CoreFormatError,
    read_core,
    read_physical,
)
from kdumpd.vmcore.vmcoreinfo import VmcoreInfo, parse_vmcoreinfo
from tests.support.synth import KERNEL_PADDR, PAGE_SIZE, CoreSpec, generate_core


def test_reader_finds_notes_vmcoreinfo_and_loads(tmp_path: Path) -> None:
    spec = CoreSpec(osrelease="6.9.0-test", cpus=3, crash_time=1234567890)
    generated = generate_core(tmp_path / "core", spec)
    core = read_core(generated.path)
    assert core.elf_class == 2 and core.byte_order == "<" and core.machine == 62
    assert core.cpu_count == 3
    assert [n.type for n in core.notes if n.name == "CORE"] == [NT_PRSTATUS] * 3
    assert core.osrelease == "6.9.0-test"
    assert core.crash_time == 1234567890
    assert core.vmcoreinfo["PAGESIZE"] == "4096"
    # One kernel-image load (above __START_KERNEL_map) and two RAM ranges.
    assert len(core.loads) == 3
    assert core.loads[0].vaddr == generated.kernel_vaddr
    assert all(s.type == PT_LOAD and s.offset % PAGE_SIZE == 0 for s in core.loads)
    assert core.data_end == generated.size == generated.path.stat().st_size


def test_prstatus_carries_the_panic_pid(tmp_path: Path) -> None:
    core = read_core(generate_core(tmp_path / "core", CoreSpec(panic_pid=777)).path)
    first = next(n for n in core.notes if n.name == "CORE")
    assert len(first.desc) == 336
    assert struct.unpack_from("<i", first.desc, 32)[0] == 777


def test_kernel_page_holds_utsname_release(tmp_path: Path) -> None:
    path = generate_core(tmp_path / "core", CoreSpec(osrelease="6.2.0-x")).path
    core = read_core(path)
    with path.open("rb") as f:
        page = read_physical(f, core, KERNEL_PADDR, 6 * 65)
    assert page[2 * 65 : 2 * 65 + 7] == b"6.2.0-x"


def test_generated_core_is_sparse(tmp_path: Path) -> None:
    path = generate_core(tmp_path / "core", CoreSpec(data_pages=8, zero_pages=512)).path
    st = path.stat()
    assert st.st_blocks * 512 < st.st_size // 2


def test_parse_vmcoreinfo_splits_on_first_equals() -> None:
    info = parse_vmcoreinfo("OSRELEASE=6.1\nSYMBOL(prb)=ffffffff9b5c4e18\nNUMBER(x)=0x10\nbad\n")
    assert info == {"OSRELEASE": "6.1", "SYMBOL(prb)": "ffffffff9b5c4e18", "NUMBER(x)": "0x10"}
    typed = VmcoreInfo(info)
    assert typed.symbol("prb") == 0xFFFFFFFF9B5C4E18
    assert typed.number("x") == 16
    assert typed.number("missing") is None


def test_not_an_elf_core_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "flat"
    bogus.write_bytes(b"makedumpfile" + bytes(100))
    with pytest.raises(CoreFormatError, match="not an ELF file"):
        read_core(bogus)

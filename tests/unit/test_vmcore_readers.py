"""The dump readers on synthetic dumps: every format, codec and printk buffer layout."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from kdumpd.vmcore import pagecodecs as codecs
from kdumpd.vmcore.dump import DumpError, open_dump
from kdumpd.vmcore.printk import KernelLogError, read_kernel_log
from kdumpd.vmcore.vmcoreinfo import VmcoreInfo, VmcoreInfoError
from tests.support.dumpbuilders import (
    BUILD_ID,
    CODECS,
    LAYOUT_5_10,
    LAYOUT_5_11,
    LAYOUT_SHIFTED,
    RING_LAYOUTS,
    Image,
    new_image,
    put_char_ring,
    put_lockless_ring,
    put_log_buf,
    sample_lines,
    write_elf,
    write_flattened,
    write_kdump,
)


def _ring_image(layout_name: str) -> tuple[Image, str]:
    image = new_image()
    lines = sample_lines(40)
    if layout_name == "log_buf":
        expected = put_log_buf(image, lines)
    elif layout_name == "log":
        expected = put_log_buf(image, lines, struct_name="log")
    else:
        layout = next(x for x in RING_LAYOUTS if x.name == layout_name)
        expected = put_lockless_ring(image, layout, lines, reserved_tail_record=False)
    return image, "".join(expected)


def _write(image: Image, tmp_path: Path, fmt: str) -> Path:
    if fmt == "elf":
        return write_elf(image, tmp_path / "vmcore.elf")
    if fmt == "flat-elf":
        return write_flattened(write_elf(image, tmp_path / "v.elf"), tmp_path / "vmcore.flat")
    if fmt == "flat-kdump":
        src = write_kdump(image, tmp_path / "v.kdump", "lzo")
        return write_flattened(src, tmp_path / "vmcore.flat")
    return write_kdump(image, tmp_path / f"vmcore.{fmt}", fmt)


@pytest.mark.parametrize("fmt", ["elf", *CODECS, "flat-elf", "flat-kdump"])
def test_every_format_gives_the_same_log(tmp_path: Path, fmt: str) -> None:
    image, expected = _ring_image("5.11+")
    with open_dump(_write(image, tmp_path, fmt)) as dump:
        assert dump.osrelease == "6.1.0-test-amd64"
        assert dump.vmcoreinfo.build_id == BUILD_ID
        assert dump.crash_time == 1_700_000_000
        assert dump.complete
        log = read_kernel_log(dump)
    assert log.text() == expected
    assert expected.endswith("Kernel panic - not syncing: sysrq triggered crash\n")


@pytest.mark.parametrize("layout", ["5.11+", "5.10", "shifted", "log_buf", "log"])
@pytest.mark.parametrize("fmt", ["elf", "lzo"])
def test_every_ring_layout(tmp_path: Path, layout: str, fmt: str) -> None:
    image, expected = _ring_image(layout)
    with open_dump(_write(image, tmp_path, fmt)) as dump:
        log = read_kernel_log(dump)
    assert log.text() == expected
    # The ring was too small for all 40 lines: the oldest are gone.
    assert "line 0:" not in expected and 5 < expected.count("\n") < 40


def test_layouts_are_told_apart_by_vmcoreinfo(tmp_path: Path) -> None:
    names = {}
    for layout in (LAYOUT_5_11, LAYOUT_5_10, LAYOUT_SHIFTED):
        image = new_image()
        put_lockless_ring(image, layout, sample_lines(10))
        with open_dump(write_elf(image, tmp_path / f"{layout.name}.elf")) as dump:
            names[layout.name] = read_kernel_log(dump).layout
    assert "separate printk_info" in names["5.11+"]
    assert "inside prb_desc" in names["5.10"]


def test_reserved_record_at_the_head_is_left_out(tmp_path: Path) -> None:
    image = new_image()
    lines = sample_lines(6)
    expected = put_lockless_ring(image, LAYOUT_5_11, lines, count_bits=5, size_bits=12)
    assert len(expected) == 5  # the sixth was still being written
    with open_dump(write_elf(image, tmp_path / "v")) as dump:
        assert read_kernel_log(dump).text() == "".join(expected)


def test_character_ring_before_3_5(tmp_path: Path) -> None:
    image = new_image()
    text = "".join(f"<6>old kernel line {i}\n" for i in range(40))
    expected = put_char_ring(image, text)
    with open_dump(write_elf(image, tmp_path / "v")) as dump:
        assert read_kernel_log(dump).text() == expected
    assert len(expected) == 512 and expected != text


def test_unprintable_bytes_are_escaped_like_vmcore_dmesg(tmp_path: Path) -> None:
    image = new_image()
    put_lockless_ring(
        image, LAYOUT_5_11, [(5, "a\x01b\tc"), (6, "end")], size_bits=12, reserved_tail_record=False
    )
    with open_dump(write_elf(image, tmp_path / "v")) as dump:
        text = read_kernel_log(dump).text()
    assert text == "[    0.000000] a\\x01b\tc\n[    0.000000] end\n"


def test_incomplete_kdump_is_reported_and_lost_pages_named(tmp_path: Path) -> None:
    image, _ = _ring_image("5.11+")
    path = write_kdump(image, tmp_path / "v", "zlib", lose_last=True)
    with open_dump(path) as dump:
        assert not dump.complete
        last = max(image.pages)
        with pytest.raises(DumpError, match="lost"):
            dump.read_physical(last, 8)


def test_filtered_page_is_named(tmp_path: Path) -> None:
    image, _ = _ring_image("5.11+")
    victim = sorted(image.pages)[0]
    path = write_kdump(image, tmp_path / "v", "raw", filtered=(victim,))
    with open_dump(path) as dump, pytest.raises(DumpError, match="filtered out"):
        dump.read_physical(victim, 8)


def test_cut_off_flattened_stream_is_incomplete(tmp_path: Path) -> None:
    image, _ = _ring_image("5.11+")
    flat = write_flattened(write_kdump(image, tmp_path / "v", "lzo"), tmp_path / "f")
    data = flat.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[: len(data) - 100])
    with open_dump(cut) as dump:
        assert dump.format == "flattened kdump-compressed"
        assert not dump.complete


def test_not_a_dump(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"hello" * 1000)
    with pytest.raises(DumpError, match="not a crash dump"):
        open_dump(path)
    with pytest.raises(DumpError, match="cannot read"):
        open_dump(tmp_path / "missing")


def test_missing_vmcoreinfo_key_names_it(tmp_path: Path) -> None:
    image = new_image()
    put_lockless_ring(image, LAYOUT_5_11, sample_lines(5))
    image.vmcoreinfo = [line for line in image.vmcoreinfo if "prb_desc.state_var" not in line]
    missing = r"OFFSET\(prb_desc.state_var\) is missing"
    with (
        open_dump(write_elf(image, tmp_path / "v")) as dump,
        pytest.raises(KernelLogError, match=missing),
    ):
        read_kernel_log(dump)


def test_no_printk_symbols(tmp_path: Path) -> None:
    path = write_elf(new_image(), tmp_path / "v")
    with open_dump(path) as dump, pytest.raises(KernelLogError, match="no printk buffer"):
        read_kernel_log(dump)


def test_vmcoreinfo_accessors() -> None:
    info = VmcoreInfo.from_text(
        "OSRELEASE=6.1.0\nBUILD-ID=ABCDEF01\nCRASHTIME=17\nPAGESIZE=4096\n"
        "SYMBOL(prb)=ffffffff9b5c4e18\nOFFSET(a.b)=24\nSIZE(c)=88\nLENGTH(d)=11\n"
        "NUMBER(x)=-129\nNUMBER(VMALLOC_START)=0xffffc90000000000\nKERNELOFFSET=1a000000\n"
        "garbage line\nNUMBER(bad)=zz\n"
    )
    assert info.osrelease == "6.1.0" and info.build_id == "abcdef01"
    assert info.crash_time == 17 and info.page_size == 4096
    assert info.symbol("prb") == 0xFFFFFFFF9B5C4E18
    assert (info.offset("a.b"), info.size("c"), info.length("d")) == (24, 88, 11)
    assert info.number("x") == -129
    assert info.number("VMALLOC_START") == 0xFFFFC90000000000
    assert info.kernel_offset == 0x1A000000
    assert info.number("bad") is None and info.symbol("missing") is None
    with pytest.raises(VmcoreInfoError, match=r"SIZE\(nothing\)"):
        info.need("size", "nothing")


def test_codecs_round_trip_and_refuse_garbage() -> None:
    import lzo  # type: ignore[import-not-found]
    import snappy  # type: ignore[import-untyped]

    page = (b"kernel data \x00\x01" * 400)[:4096]
    assert codecs.decompress(0x2, lzo.compress(page, 1, False), 4096) == page
    assert codecs.decompress(0x4, snappy.compress(page), 4096) == page
    with pytest.raises(codecs.CodecError):
        codecs.decompress(0x2, b"\x00\x00\x00", 4096)
    with pytest.raises(codecs.CodecError):
        codecs.decompress(0x4, b"\x80\x20\x01", 4096)
    with pytest.raises(codecs.CodecError):
        codecs.decompress(0x1, b"not zlib", 4096)


def test_missing_zstd_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_zstd(name: str, package: str | None = None) -> object:
        if name == "zstandard":
            raise ImportError(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_zstd)
    assert not codecs.zstd_available()
    with pytest.raises(codecs.CodecMissing, match="python3-zstandard"):
        codecs.decompress(0x20, b"\x28\xb5\x2f\xfd", 4096)


def test_damaged_dumps_end_in_errors_not_tracebacks(tmp_path: Path) -> None:
    """Random byte damage and truncation: every outcome is a log or a KdumpError."""
    import random

    from kdumpd.errors import KdumpError

    image, _ = _ring_image("5.11+")
    sources = [write_kdump(image, tmp_path / c, c) for c in ("lzo", "snappy", "zlib")]
    sources.append(write_flattened(sources[0], tmp_path / "f"))
    rng = random.Random(5)
    outcomes = {"log": 0, "error": 0}
    for n in range(60):
        data = bytearray(sources[n % len(sources)].read_bytes())
        for _ in range(rng.randrange(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if n % 5 == 0:
            data = data[: rng.randrange(len(data))]
        damaged = tmp_path / "damaged"
        damaged.write_bytes(bytes(data))
        try:
            with open_dump(damaged) as dump:
                read_kernel_log(dump).text()
            outcomes["log"] += 1
        except KdumpError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0 and sum(outcomes.values()) == 60

"""crashkernel= syntax, arithmetic, default tables and host readings (spec §4.1, §4.2, §7.1)."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdumpd import crashkernel as ck
from kdumpd.crashkernel import CrashkernelError, CrashkernelSpec, Range
from kdumpd.errors import KdumpError
from kdumpd.paths import Paths
from tests.conftest import write

K, M, G, T = 1024, 1024**2, 1024**3, 1024**4

# sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("100", 100),
        ("1k", K),
        ("1K", K),
        ("256M", 256 * M),
        ("256m", 256 * M),
        ("2G", 2 * G),
        ("1T", T),
        ("1P", 1024 * T),
        ("1e", 1024**2 * T),
        ("-100m", -100 * M),
        ("+16M", 16 * M),
        ("0x1000", 4096),
        (" 64M ", 64 * M),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert ck.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "1.5G", "12Q", "1 G", "bar", "--1", "010M", "1MB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(CrashkernelError, match="invalid size"):
        ck.parse_size(text)


def test_crashkernel_error_is_a_kdump_error() -> None:
    assert issubclass(CrashkernelError, KdumpError)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0"),
        (100, "100"),
        (1023, "1023"),
        (1024, "1K"),
        (1025, "1025"),
        (1040 * M, "1040M"),
        (1099511627776, "1T"),
        (268435556, "268435556"),
        (1025 * K, "1025K"),
        (1024**6, "1E"),
        (1024**7, "1024E"),
        (-100 * M, "-100M"),
    ],
)
def test_format_size(n: int, expected: str) -> None:
    assert ck.format_size(n) == expected


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_format_size_round_trips(n: int) -> None:
    assert ck.parse_size(ck.format_size(n)) == n


# parse / format ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("256M", CrashkernelSpec(size=256 * M)),
        ("256M@16M", CrashkernelSpec(size=256 * M, offset=16 * M)),
        ("0@0", CrashkernelSpec(size=0, offset=0)),
        ("1G,high", CrashkernelSpec(size=G, region="high")),
        ("0,low", CrashkernelSpec(size=0, region="low")),
        (
            "2G-64G:256M,64G-:512M",
            CrashkernelSpec(ranges=(Range(2 * G, 64 * G, 256 * M), Range(64 * G, None, 512 * M))),
        ),
        (
            "1G-4G:256M,4G-64G:320M,64G-:576M@4G",
            CrashkernelSpec(
                ranges=(
                    Range(G, 4 * G, 256 * M),
                    Range(4 * G, 64 * G, 320 * M),
                    Range(64 * G, None, 576 * M),
                ),
                offset=4 * G,
            ),
        ),
        # Unsorted lists stay in the written order.
        (
            "4G-64G:256M,2G-4G:192M",
            CrashkernelSpec(ranges=(Range(4 * G, 64 * G, 256 * M), Range(2 * G, 4 * G, 192 * M))),
        ),
        ("0-:128M", CrashkernelSpec(ranges=(Range(0, None, 128 * M),))),
    ],
)
def test_parse_and_format_every_form(text: str, spec: CrashkernelSpec) -> None:
    assert ck.parse(text) == spec
    assert ck.parse("crashkernel=" + text) == spec
    assert ck.format(spec) == text
    assert str(spec) == text


def test_parse_accepts_any_unit_spelling_and_format_normalises() -> None:
    spec = ck.parse("crashkernel=1024m-4g:262144k@16384K")
    assert spec == CrashkernelSpec(ranges=(Range(G, 4 * G, 256 * M),), offset=16 * M)
    assert ck.format(spec) == "1G-4G:256M@16M"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("crashkernel=", "empty"),
        ("foo", "size 'foo'"),
        ("1G-4G:256M.4G-64G:320M", "is not a size"),
        ("4G-2G:256M", "ends before it starts"),
        ("4G-4G:256M", "ends before it starts"),
        ("2G:256M", "START-\\[END\\]:SIZE"),
        ("2G-4G", "START-\\[END\\]:SIZE"),
        ("2G-4G:", "size ''"),
        ("2G-4G:256M,high", "range 'high'"),
        ("256M,middle", "unknown suffix ,middle"),
        ("256M@1G,high", "offset"),
        ("256M@", "offset ''"),
        ("-256M", "must not carry a sign"),
        ("auto", "crashkernel=auto"),
    ],
)
def test_parse_rejects(text: str, why: str) -> None:
    with pytest.raises(CrashkernelError, match=why):
        ck.parse(text)


def test_parse_error_names_the_value_and_the_accepted_forms() -> None:
    with pytest.raises(CrashkernelError) as info:
        ck.parse("crashkernel=2G-4G")
    message = str(info.value)
    assert "'2G-4G'" in message
    assert "SIZE[@OFFSET]" in message and "SIZE,high" in message


def test_spec_rejects_impossible_shapes() -> None:
    with pytest.raises(CrashkernelError):
        CrashkernelSpec()
    with pytest.raises(CrashkernelError):
        CrashkernelSpec(size=M, ranges=(Range(0, None, M),))
    with pytest.raises(CrashkernelError):
        CrashkernelSpec(ranges=(Range(0, None, M),), region="high")
    with pytest.raises(CrashkernelError):
        CrashkernelSpec(size=M, offset=G, region="low")


# Sizes written as small numbers times a unit, so that canonical forms vary.
_sizes = st.builds(
    lambda n, unit: n * unit,
    st.integers(min_value=0, max_value=5000),
    st.sampled_from([1, K, M, G, T]),
)


@st.composite
def _ranges(draw: st.DrawFn) -> tuple[Range, ...]:
    count = draw(st.integers(min_value=1, max_value=6))
    items = []
    for _ in range(count):
        start: int = draw(_sizes)

        def past(n: int, s: int = start) -> int:
            return s + max(n, 1)

        end = draw(st.none() | _sizes.map(past))
        items.append(Range(start, end, draw(_sizes)))
    return tuple(items)


_specs = st.one_of(
    st.builds(
        lambda size, offset: CrashkernelSpec(size=size, offset=offset),
        _sizes,
        st.none() | _sizes,
    ),
    st.builds(
        lambda size, region: CrashkernelSpec(size=size, region=region),
        _sizes,
        st.sampled_from(["high", "low"]),
    ),
    st.builds(
        lambda ranges, offset: CrashkernelSpec(ranges=ranges, offset=offset),
        _ranges(),
        st.none() | _sizes,
    ),
)


@given(_specs)
def test_spec_round_trips(spec: CrashkernelSpec) -> None:
    text = ck.format(spec)
    assert ck.parse(text) == spec
    assert ck.format(ck.parse(text)) == text
    assert ck.parse("crashkernel=" + text) == spec


@given(_specs, st.booleans())
def test_non_canonical_spelling_parses_to_the_same_spec(spec: CrashkernelSpec, lower: bool) -> None:
    # Write every number in bytes (or lowercase units): the model must not change.
    text = ck.format(spec)
    spelled = text.lower() if lower else _in_bytes(text)
    assert ck.parse(spelled) == spec


def _in_bytes(text: str) -> str:
    return re.sub(r"[0-9]+[KMGTPE]?", lambda m: str(ck.parse_size(m.group())), text)


# add (spec §4.1 and the _crashkernel_add cases of §7.1) ------------------------------


@pytest.mark.parametrize(
    ("value", "delta", "expected"),
    [
        ("1G", "16M", "1040M"),
        ("256M", 100, "268435556"),
        ("1G-4G:256M,4G-64G:320M,64G-:576M", "100M", "1G-4G:356M,4G-64G:420M,64G-:676M"),
        ("1G-4G:256M", "100", "1G-4G:268435556"),
        (
            "1G-4G:256M,4G-64G:320M,64G-:576M@4G",
            "100M",
            "1G-4G:356M,4G-64G:420M,64G-:676M@4G",
        ),
        ("1G-4G:1G,4G-64G:2G,64G-:3G@4G", "100M", "1G-4G:1124M,4G-64G:2148M,64G-:3172M@4G"),
        (
            "1G-4G:10000K,4G-64G:20000K,64G-:40000K@4G",
            "100M",
            "1G-4G:112400K,4G-64G:122400K,64G-:142400K@4G",
        ),
        ("1,high", 1, "2,high"),
        ("1K,low", "1", "1025,low"),
        ("128G-1T:4G", 0, "128G-1T:4G"),
        ("10T-100T:1T", "0", "10T-100T:1T"),
        ("128G-1T:4G", "0M", "128G-1T:4G"),
        ("128G-1P:4G", "0M", "128G-1P:4G"),
        ("128G-1E:4G", "0M", "128G-1E:4G"),
        ("1M@1G", "1k", "1025K@1G"),
        ("500M@1G", "-100m", "400M@1G"),
        ("1099511627776", 0, "1T"),
        ("crashkernel=256M", "256M", "512M"),
        ("512M", "-512M", "0"),
    ],
)
def test_add(value: str, delta: int | str, expected: str) -> None:
    assert ck.add(value, delta) == expected


@pytest.mark.parametrize(
    ("value", "delta"),
    [
        ("1G-4G:256M.4G-64G:320M", "100M"),
        ("foo", 1),
        ("1", "bar"),
        ("256M", "-257M"),
        ("2G-4G:256M,4G-:128M", "-200M"),
    ],
)
def test_add_rejects(value: str, delta: int | str) -> None:
    with pytest.raises(CrashkernelError):
        ck.add(value, delta)


@given(_specs, st.integers(min_value=0, max_value=2**40))
def test_add_changes_only_sizes(spec: CrashkernelSpec, delta: int) -> None:
    result = ck.parse(ck.add(ck.format(spec), delta))
    assert result.offset == spec.offset
    assert result.region == spec.region
    if spec.ranges:
        assert [(r.start, r.end) for r in result.ranges] == [(r.start, r.end) for r in spec.ranges]
        assert [r.size for r in result.ranges] == [r.size + delta for r in spec.ranges]
    else:
        assert spec.size is not None
        assert result.size == spec.size + delta


# size_for_memory (kernel semantics) ----------------------------------------------------

TABLE = "2G-64G:256M,64G-:512M"


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        (G, 0),  # below the first range
        (2 * G, 256 * M),  # start inclusive
        (2 * G - 100 * M, 256 * M),  # rounded up to 128 MiB first, as the kernel does
        (2 * G - 200 * M, 0),  # 1848 MiB rounds to 1920 MiB: still below 2G
        (64 * G - 256 * M, 256 * M),
        (64 * G, 512 * M),  # end exclusive
        (100 * T, 512 * M),  # open end
    ],
)
def test_size_for_memory_ranges(memory: int, expected: int) -> None:
    assert ck.size_for_memory(TABLE, memory) == expected


def test_size_for_memory_unsorted_first_match_wins() -> None:
    value = "4G-64G:256M,2G-4G:192M,64G-1T:512M,1T-:12345M"
    assert ck.size_for_memory(value, 3 * G) == 192 * M
    assert ck.size_for_memory(value, 8 * G) == 256 * M
    assert ck.size_for_memory(value, 2 * T) == 12345 * M
    assert ck.size_for_memory("1G-:512M,1G-:256M", 4 * G) == 512 * M


def test_size_for_memory_refuses_a_size_not_below_ram() -> None:
    assert ck.size_for_memory("0-:4G", 4 * G) == 0
    assert ck.size_for_memory("0-:4G", 8 * G) == 4 * G


def test_size_for_memory_other_forms() -> None:
    assert ck.size_for_memory("256M", G) == 256 * M
    assert ck.size_for_memory("256M@16M", G) == 256 * M
    assert ck.size_for_memory("1G,high", 8 * G) == G
    assert ck.size_for_memory("256M,low", 8 * G) == 0


# recommend_size (get_recommend_size, §7.1) ------------------------------------------------

SPEC_TABLE = "4G-64G:256M,2G-4G:192M,64G-1T:512M,1T-:12345M"


@pytest.mark.parametrize(
    ("mem_gib", "expected"),
    [
        (1, "0M"),  # below every range
        (2, "192M"),  # lower bound inclusive, in an unsorted list
        (3, "192M"),
        (4, "256M"),  # upper bound exclusive
        (64, "512M"),
        (1023, "512M"),
        (1024, "12345M"),  # T bound
        (64 * 1024, "12345M"),  # open end
        (102400 * 1024, "0M"),  # open end means 102400T
    ],
)
def test_recommend_size(mem_gib: int, expected: str) -> None:
    assert ck.recommend_size(SPEC_TABLE, mem_gib) == expected


def test_recommend_size_t_bounds_and_prefix() -> None:
    assert ck.recommend_size("crashkernel=1T-2T:6G,2T-4T:12G", 2048) == "12G"
    assert ck.recommend_size("1T-2T:6G,2T-4T:12G", 4096) == "0M"


def test_recommend_size_rejects_other_bound_units() -> None:
    with pytest.raises(CrashkernelError, match="bounds in G or T"):
        ck.recommend_size("512M-2G:64M", 1)


# system_memory_gib (get_system_size, §7.1) ----------------------------------------------


def _iomem(blocks: int, block_mib: int = 1000) -> str:
    lines = ["00000000-00000fff : Reserved"]
    base = 0x100000000
    for index in range(blocks):
        start = base + index * 2 * block_mib * M
        end = start + block_mib * M - 1
        lines.append(f"{start:08x}-{end:08x} : System RAM")
        # Nested lines describe parts of the block; counting them would double it.
        lines.append(f"  {start:08x}-{start + M - 1:08x} : Kernel code")
        lines.append(f"  {start + M:08x}-{start + 2 * M - 1:08x} : System RAM")
    lines.append("fee00000-fee00fff : Local APIC")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("blocks", "gib"), [(1, 1), (3, 3), (6, 5)])
def test_system_memory_gib(blocks: int, gib: int) -> None:
    assert ck.system_memory_gib(_iomem(blocks)) == gib


def test_system_memory_gib_exact_gigabytes() -> None:
    one_gib = "00000000-3fffffff : System RAM\n"
    assert ck.system_memory_gib(one_gib) == 1
    assert ck.system_memory_gib(one_gib * 3) == 3
    assert ck.system_memory_gib("") == 0


def test_read_iomem_memory_gib(fake_root: Paths) -> None:
    write(fake_root.proc_iomem, _iomem(3))
    assert ck.read_iomem_memory_gib(fake_root) == 3


def test_read_iomem_memory_gib_missing_or_unprivileged(fake_root: Paths) -> None:
    with pytest.raises(CrashkernelError, match="cannot read"):
        ck.read_iomem_memory_gib(fake_root)
    write(fake_root.proc_iomem, "00000000-00000000 : System RAM\n")
    with pytest.raises(CrashkernelError, match="as root"):
        ck.read_iomem_memory_gib(fake_root)


# default tables (§4.1) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "kwargs", "expected"),
    [
        ("x86_64", {}, "2G-64G:256M,64G-:512M"),
        ("amd64", {}, "2G-64G:256M,64G-:512M"),
        ("x86_64", {"sme_sev_active": True}, "2G-64G:320M,64G-:576M"),
        ("s390x", {}, "2G-64G:256M,64G-:512M"),
        ("aarch64", {}, "2G-4G:256M,4G-64G:320M,64G-:576M"),
        ("aarch64", {"mlx5_bound": True}, "2G-4G:406M,4G-64G:470M,64G-:726M"),
        # The SMMU costs memory only with 64K pages.
        ("arm64", {"arm_smmu_present": True}, "2G-4G:256M,4G-64G:320M,64G-:576M"),
        (
            "aarch64",
            {"kernel_release": "6.12.0-1.el10.aarch64+64k"},
            "2G-4G:356M,4G-64G:420M,64G-:676M",
        ),
        (
            "aarch64",
            {"kernel_release": "6.12.0+64k", "arm_smmu_present": True},
            "2G-4G:740M,4G-64G:804M,64G-:1060M",
        ),
        (
            "aarch64",
            {"kernel_release": "6.12.0+64k", "arm_smmu_present": True, "mlx5_bound": True},
            "2G-4G:940M,4G-64G:1004M,64G-:1260M",
        ),
        (
            "aarch64",
            {"kernel_release": "6.12.0+64k", "mlx5_bound": True},
            "2G-4G:556M,4G-64G:620M,64G-:876M",
        ),
        ("ppc64le", {}, "2G-4G:385M,4G-16G:513M,16G-64G:1025M,64G-128G:2049M,128G-:4097M"),
        (
            "ppc64le",
            {"nr_cpus": 16},
            "2G-4G:400M,4G-16G:528M,16G-64G:1040M,64G-128G:2064M,128G-:4112M",
        ),
        (
            "ppc64el",
            {"mode": "fadump", "nr_cpus": 16},
            "4G-16G:784M,16G-64G:1040M,64G-128G:2064M,128G-1T:4112M,1T-2T:6160M,"
            "2T-4T:12304M,4T-8T:20496M,8T-16T:36880M,16T-32T:65552M,32T-64T:131088M,"
            "64T-:184336M",
        ),
    ],
)
def test_default_crashkernel(arch: str, kwargs: dict[str, object], expected: str) -> None:
    assert ck.default_crashkernel(arch, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arch", "kwargs", "why"),
    [
        ("riscv64", {}, "no default crashkernel for architecture 'riscv64'"),
        ("ppc64", {}, "no default crashkernel"),
        ("x86_64", {"mode": "fadump"}, "only on ppc64le"),
        ("ppc64le", {"mode": "dump"}, "unknown dump mode"),
        ("ppc64le", {"nr_cpus": 0}, "at least 1"),
    ],
)
def test_default_crashkernel_rejects(arch: str, kwargs: dict[str, object], why: str) -> None:
    with pytest.raises(CrashkernelError, match=why):
        ck.default_crashkernel(arch, **kwargs)  # type: ignore[arg-type]


def test_defaults_reserve_nothing_below_the_first_range() -> None:
    kdump = ck.default_crashkernel("x86_64")
    assert ck.size_for_memory(kdump, G) == 0
    assert ck.size_for_memory(kdump, 8 * G) == 256 * M
    fadump = ck.default_crashkernel("ppc64le", mode="fadump")
    assert ck.size_for_memory(fadump, 3 * G) == 0
    assert ck.size_for_memory(fadump, 4 * G) == 769 * M


# host readings -------------------------------------------------------------------------


def test_arm_smmu_present(fake_root: Paths) -> None:
    assert not ck.arm_smmu_present(fake_root)
    (fake_root.sys_platform / "serial8250").mkdir(parents=True)
    assert not ck.arm_smmu_present(fake_root)
    (fake_root.sys_platform / "arm-smmu-v3.0.auto").mkdir()
    assert ck.arm_smmu_present(fake_root)


def test_mlx5_bound(fake_root: Paths) -> None:
    driver = fake_root.sys_pci_drivers / "mlx5_core"
    assert not ck.mlx5_bound(fake_root)
    driver.mkdir(parents=True)
    write(driver / "bind", "")
    os.symlink("../../../../module/mlx5_core", driver / "module")
    # Loaded but bound to nothing: no extra memory needed.
    assert not ck.mlx5_bound(fake_root)
    os.symlink("../../../../devices/pci0000:00/0000:01:00.0", driver / "0000:01:00.0")
    assert ck.mlx5_bound(fake_root)


@pytest.mark.parametrize(
    ("append", "expected"),
    [
        ("", 1),
        ("irqpoll reset_devices", 1),
        ("irqpoll nr_cpus=16 reset_devices", 16),
        ("nr_cpus=1 nr_cpus=4", 4),
        ("foo.nr_cpus=8", 1),
    ],
)
def test_nr_cpus_from_cmdline_append(append: str, expected: int) -> None:
    assert ck.nr_cpus_from_cmdline_append(append) == expected


@pytest.mark.parametrize("append", ["nr_cpus=", "nr_cpus=abc", "nr_cpus=0"])
def test_nr_cpus_from_cmdline_append_rejects(append: str) -> None:
    with pytest.raises(CrashkernelError, match="KDUMP_COMMANDLINE_APPEND"):
        ck.nr_cpus_from_cmdline_append(append)


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("Memory Encryption Features active: AMD SME\n", True),
        ("[    0.000000] Memory Encryption Features active: AMD SEV\n", True),
        ("Jan 01 host kernel: Memory Encryption Features active: AMD SEV SEV-ES\n", True),
        ("Memory Encryption Features active: Intel TDX\n", False),
        ("Memory Encryption Features active: AMD SMEX\n", False),
        ("Linux version 6.1.0\n", False),
        ("", False),
    ],
)
def test_sme_sev_active(log: str, expected: bool) -> None:
    assert ck.sme_sev_active(log) is expected

"""The ``crashkernel=`` parameter: syntax, arithmetic, per-arch defaults and host readings.

Owns everything about the value of the kernel's ``crashkernel=`` parameter:

* sizes (:func:`parse_size`, :func:`format_size`) with the kernel's K/M/G/T/P/E suffixes;
* a typed model of every form the kernel accepts (:class:`CrashkernelSpec`) with
  :func:`parse` and :func:`format`;
* kdump-utils' arithmetic: adding a delta to every size (:func:`add`), picking the size
  for a machine (:func:`size_for_memory`, :func:`recommend_size`) and the machine's RAM
  as kdump-utils counts it (:func:`system_memory_gib`);
* the per-architecture default tables of ``kdumpctl get-default-crashkernel``
  (:func:`default_crashkernel`) and the small host readings they depend on.

Everything here is pure or reads files through :class:`~kdumpd.paths.Paths`; nothing
starts a program. The kernel log needed for the SME/SEV check is supplied by the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from kdumpd.arch import normalize_arch
from kdumpd.errors import KdumpError
from kdumpd.host import system_ram_bytes
from kdumpd.paths import Paths

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# Suffixes of the kernel's memparse(), smallest first; P and E are accepted by
# kdump-utils' helper too.
_UNITS = ("", "K", "M", "G", "T", "P", "E")
_UNIT_FACTOR: dict[str, int] = {unit: 1024**power for power, unit in enumerate(_UNITS)}

_SIZE_RE = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|[0-9]+)([kKmMgGtTpPeE]?)")

Region = Literal["high", "low"]


class CrashkernelError(KdumpError):
    """A ``crashkernel=`` value, a size or a default-table request is invalid."""


# sizes -----------------------------------------------------------------------


def parse_size(text: str) -> int:
    """Bytes of a size such as ``256M``, ``1g``, ``-100m`` or ``4096``.

    Suffixes K M G T P E (any case) are powers of 1024; a plain number is bytes.
    A leading ``+``/``-`` is accepted (deltas may be negative). ``0x`` hex is accepted
    because the kernel's memparse accepts it.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        raise CrashkernelError(
            f"invalid size {text!r}: expected a number with an optional unit "
            "K, M, G, T, P or E (for example 256M)"
        )
    sign, digits, unit = match.groups()
    if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xX":
        # memparse() uses base 0: "010M" would be octal 8M to the kernel.
        raise CrashkernelError(
            f"invalid size {text!r}: the kernel reads a leading 0 as octal; "
            "write the number without leading zeros"
        )
    value = int(digits, 0) * _UNIT_FACTOR[unit.upper()]
    return -value if sign == "-" else value


def format_size(n: int) -> str:
    """Express ``n`` bytes in the largest unit that divides it evenly.

    ``1099511627776`` -> ``1T``; ``1090519040`` -> ``1040M``; ``268435556`` stays bytes.
    """
    magnitude = abs(n)
    power = 0
    while magnitude >= 1024 and magnitude % 1024 == 0 and power < len(_UNITS) - 1:
        magnitude //= 1024
        power += 1
    return f"{'-' if n < 0 else ''}{magnitude}{_UNITS[power]}"


# model -------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """``start-[end]:size``: reserve ``size`` when ``start <= RAM < end`` (bytes).

    ``end`` is ``None`` for an open range (``64G-``).
    """

    start: int
    end: int | None
    size: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.size < 0:
            raise CrashkernelError(f"negative value in crashkernel range {self}")
        if self.end is not None and self.end <= self.start:
            raise CrashkernelError(
                f"crashkernel range {_format_range(self)} ends before it starts; "
                "the end must be larger than the start"
            )

    def matches(self, memory: int) -> bool:
        """True when a machine with ``memory`` bytes falls in this range."""
        return self.start <= memory and (self.end is None or memory < self.end)


@dataclass(frozen=True)
class CrashkernelSpec:
    """One ``crashkernel=`` value in any form the kernel accepts.

    Exactly one of ``size`` and ``ranges`` is set:

    * ``256M``                     -> ``size`` (bytes)
    * ``256M@16M``                 -> ``size``, ``offset``
    * ``2G-64G:256M,64G-:512M``    -> ``ranges`` (in the order written)
    * ``...@16M`` after a list     -> ``ranges``, ``offset``
    * ``1G,high`` / ``256M,low``   -> ``size``, ``region="high"|"low"``

    ``offset`` and ``region`` exclude each other; ``region`` needs ``size``.
    """

    size: int | None = None
    ranges: tuple[Range, ...] = ()
    offset: int | None = None
    region: Region | None = None

    def __post_init__(self) -> None:
        if (self.size is None) == (not self.ranges):
            raise CrashkernelError(
                "a crashkernel value has either one size or a list of ranges, not both or neither"
            )
        if self.size is not None and self.size < 0:
            raise CrashkernelError(f"negative crashkernel size {self.size}")
        if self.offset is not None and self.offset < 0:
            raise CrashkernelError(f"negative crashkernel offset {self.offset}")
        if self.region is not None:
            if self.region not in ("high", "low"):
                raise CrashkernelError(f"unknown crashkernel suffix ,{self.region}")
            if self.ranges:
                raise CrashkernelError("the kernel accepts ,high and ,low only after a size")
            if self.offset is not None:
                raise CrashkernelError("the kernel accepts either @offset or ,high/,low, not both")

    def __str__(self) -> str:
        return format(self)


_PREFIX = "crashkernel="
_FORMS = "SIZE[@OFFSET], START-[END]:SIZE[,START-[END]:SIZE...][@OFFSET], SIZE,high or SIZE,low"


def parse(text: str) -> CrashkernelSpec:
    """Parse a ``crashkernel=`` value, with or without the ``crashkernel=`` prefix."""
    value = text.strip()
    if value.startswith(_PREFIX):
        value = value[len(_PREFIX) :]
    if not value:
        raise CrashkernelError(f"empty crashkernel value; expected {_FORMS}")
    if value == "auto":
        # RHEL 8 kernels had it; upstream kernels reserve nothing for it.
        raise CrashkernelError(
            "crashkernel=auto is not understood by this kernel; "
            "use the value printed by 'kdumpctl get-default-crashkernel'"
        )
    try:
        return _parse_value(value)
    except CrashkernelError as error:
        raise CrashkernelError(
            f"invalid crashkernel value {value!r}: {error}; expected {_FORMS}"
        ) from None


def _parse_value(value: str) -> CrashkernelSpec:
    body, at, offset_text = value.partition("@")
    offset = _parse_unsigned(offset_text, "offset") if at else None
    if ":" in body:
        ranges = tuple(_parse_range(entry) for entry in body.split(","))
        return CrashkernelSpec(ranges=ranges, offset=offset)
    size_text, comma, suffix = body.partition(",")
    region: Region | None = None
    if comma:
        if suffix == "high":
            region = "high"
        elif suffix == "low":
            region = "low"
        else:
            raise CrashkernelError(f"unknown suffix ,{suffix} (only ,high and ,low exist)")
        if at:
            raise CrashkernelError("@offset cannot be combined with ,high or ,low")
    return CrashkernelSpec(size=_parse_unsigned(size_text, "size"), offset=offset, region=region)


def _parse_range(entry: str) -> Range:
    bounds, colon, size_text = entry.partition(":")
    start_text, dash, end_text = bounds.partition("-")
    if not colon or not dash:
        raise CrashkernelError(f"range {entry!r} is not START-[END]:SIZE")
    start = _parse_unsigned(start_text, "range start")
    end = _parse_unsigned(end_text, "range end") if end_text else None
    return Range(start, end, _parse_unsigned(size_text, "size"))


def _parse_unsigned(text: str, what: str) -> int:
    if text[:1] in ("+", "-"):
        raise CrashkernelError(f"{what} {text!r} must not carry a sign")
    try:
        return parse_size(text)
    except CrashkernelError:
        raise CrashkernelError(f"{what} {text!r} is not a size like 256M") from None


def _format_range(item: Range) -> str:
    end = "" if item.end is None else format_size(item.end)
    return f"{format_size(item.start)}-{end}:{format_size(item.size)}"


def format(spec: CrashkernelSpec) -> str:
    """The value text (no ``crashkernel=`` prefix), every number in its largest exact unit.

    ``parse(format(s)) == s`` for every spec, and ``format(parse(t)) == t`` for every
    text already written in largest exact units (as kdump-utils writes them).
    """
    if spec.ranges:
        text = ",".join(_format_range(item) for item in spec.ranges)
    else:
        assert spec.size is not None  # guaranteed by CrashkernelSpec
        text = format_size(spec.size)
    if spec.offset is not None:
        text += f"@{format_size(spec.offset)}"
    if spec.region is not None:
        text += f",{spec.region}"
    return text


# arithmetic ------------------------------------------------------------------


def add(value: str, delta: int | str) -> str:
    """Add ``delta`` (bytes, or size text such as ``100M`` or ``-100m``) to every size.

    Range bounds, ``@offset`` and ``,high``/``,low`` are kept; every number comes out in
    its largest exact unit: ``add("1G", "16M") == "1040M"``,
    ``add("500M@1G", "-100m") == "400M@1G"``, ``add("1099511627776", 0) == "1T"``.
    """
    spec = parse(value)
    step = parse_size(delta) if isinstance(delta, str) else delta

    def grown(size: int) -> int:
        if size + step < 0:
            raise CrashkernelError(
                f"adding {format_size(step)} to crashkernel={value} gives a negative size"
            )
        return size + step

    if spec.ranges:
        ranges = tuple(Range(r.start, r.end, grown(r.size)) for r in spec.ranges)
        result = CrashkernelSpec(ranges=ranges, offset=spec.offset)
    else:
        assert spec.size is not None
        result = CrashkernelSpec(size=grown(spec.size), offset=spec.offset, region=spec.region)
    return format(result)


# The kernel rounds the RAM total up to 128 MiB before matching ranges, because
# firmware keeps a little memory for itself (kernel/crash_reserve.c).
_RAM_ROUNDING = 128 * MiB


def size_for_memory(value: str, memory_bytes: int) -> int:
    """Bytes the kernel would reserve for ``value`` on a machine with ``memory_bytes`` RAM.

    Range lists: RAM is rounded up to 128 MiB, the first range with ``start <= RAM < end``
    wins (lists need not be sorted), no match or a size not below RAM gives 0.
    A plain size (with or without ``@offset`` or ``,high``) is that size. A ``,low``
    value alone reserves nothing: the kernel reads it only next to a ``,high`` value.
    """
    spec = parse(value)
    if spec.region == "low":
        return 0
    if spec.size is not None:
        return spec.size
    memory = -(-memory_bytes // _RAM_ROUNDING) * _RAM_ROUNDING
    for item in spec.ranges:
        if item.matches(memory):
            return item.size if item.size < memory else 0
    return 0


# kdump-utils writes open ends as this when it matches by GiB.
_OPEN_END_GIB = 102400 * 1024
_RECOMMEND_RE = re.compile(r"([0-9]+)([GT]?)-([0-9]*)([GT]?):(\S+)")


def recommend_size(value: str, mem_gib: int) -> str:
    """kdump-utils' ``get_recommend_size``: the size text of the range holding ``mem_gib``.

    Bounds are whole GiB or TiB (``G``/``T``; a bare number counts as GiB, as in
    kdump-utils); an open end means 102400T; ``start <= mem < end``; the first match in
    the written order wins; no match gives ``0M``. The size is returned as written.
    """
    spec_text = value.strip().removeprefix(_PREFIX)
    for entry in spec_text.split(","):
        match = _RECOMMEND_RE.fullmatch(entry)
        if not match:
            raise CrashkernelError(
                f"invalid range {entry!r} in {spec_text!r}: expected START-[END]:SIZE "
                "with bounds in G or T"
            )
        start_text, start_unit, end_text, end_unit, size = match.groups()
        start = int(start_text) * (1024 if start_unit == "T" else 1)
        end = int(end_text) * (1024 if end_unit == "T" else 1) if end_text else _OPEN_END_GIB
        if start <= mem_gib < end:
            return size
    return "0M"


def system_memory_gib(iomem_text: str) -> int:
    """kdump-utils' ``get_system_size``: RAM in whole GiB from ``/proc/iomem`` text.

    Sums the top-level ``System RAM`` ranges (end - start + 1), floors to MiB, rounds up
    to a multiple of 128 MiB (as the kernel does before matching ranges), floors to GiB.
    """
    mib = system_ram_bytes(iomem_text) // MiB
    rounded = -(-mib // 128) * 128
    return rounded // 1024


# defaults ----------------------------------------------------------------------

_X86_S390 = "2G-64G:256M,64G-:512M"
_AARCH64 = "2G-4G:256M,4G-64G:320M,64G-:576M"
_PPC64LE_KDUMP = "2G-4G:384M,4G-16G:512M,16G-64G:1G,64G-128G:2G,128G-:4G"
_PPC64LE_FADUMP = (
    "4G-16G:768M,16G-64G:1G,64G-128G:2G,128G-1T:4G,1T-2T:6G,2T-4T:12G,"
    "4T-8T:20G,8T-16T:36G,16T-32T:64G,32T-64T:128G,64T-:180G"
)


def default_crashkernel(
    arch: str,
    *,
    mode: str = "kdump",
    kernel_release: str = "",
    sme_sev_active: bool = False,
    mlx5_bound: bool = False,
    arm_smmu_present: bool = False,
    nr_cpus: int = 1,
) -> str:
    """The value ``kdumpctl get-default-crashkernel [mode]`` prints (kdump-utils v1.0.61).

    ``arch`` is ``uname -m`` (Debian names amd64/arm64/ppc64el are accepted). The deltas
    are added to every range: x86_64/s390x +64M with SME/SEV; aarch64 with a 64K-page
    kernel (``64k`` in ``kernel_release``) +100M, +384M with an Arm SMMU, +200M with
    mlx5_core bound; 4K pages +150M with mlx5_core bound; ppc64le +1M per capture-kernel
    CPU (``nr_cpus`` from the kdump or fadump append line).
    """
    machine = normalize_arch(arch)
    if mode not in ("kdump", "fadump"):
        raise CrashkernelError(f"unknown dump mode {mode!r}: use kdump or fadump")
    if mode == "fadump" and machine != "ppc64le":
        raise CrashkernelError(f"fadump exists only on ppc64le, not on {arch}")
    delta_mib = 0
    if machine in ("x86_64", "s390x"):
        table = _X86_S390
        if sme_sev_active:
            # Encrypted guests bounce DMA through SWIOTLB in the capture kernel.
            delta_mib += 64
    elif machine == "aarch64":
        table = _AARCH64
        if "64k" in kernel_release:
            # Measured by kdump-utils: 64K pages cost ~82M more MemFree, the SMMU
            # queues ~384M, mlx5 ~188M.
            delta_mib += 100
            if arm_smmu_present:
                delta_mib += 384
            if mlx5_bound:
                delta_mib += 200
        elif mlx5_bound:
            delta_mib += 150
    elif machine == "ppc64le":
        if nr_cpus < 1:
            raise CrashkernelError(f"nr_cpus must be at least 1, not {nr_cpus}")
        table = _PPC64LE_FADUMP if mode == "fadump" else _PPC64LE_KDUMP
        delta_mib += nr_cpus
    else:
        raise CrashkernelError(
            f"no default crashkernel for architecture {arch!r}; "
            "known: x86_64, aarch64, ppc64le, s390x. Set crashkernel= by hand"
        )
    return add(table, delta_mib * MiB)


# host readings -----------------------------------------------------------------


def read_iomem_memory_gib(paths: Paths) -> int:
    """:func:`system_memory_gib` of this system's ``/proc/iomem``.

    Raises when the file cannot be read or shows zeroed addresses (non-root readers).
    """
    try:
        text = paths.proc_iomem.read_text()
    except OSError as error:
        raise CrashkernelError(f"cannot read {paths.proc_iomem}: {error.strerror}") from error
    if re.search(r"^0+-0+ : System RAM$", text, re.MULTILINE):
        raise CrashkernelError(
            f"{paths.proc_iomem} shows zeroed addresses: it must be read as root"
        )
    return system_memory_gib(text)


def arm_smmu_present(paths: Paths) -> bool:
    """True when an Arm SMMU platform device exists (``/sys/devices/platform/arm-smmu-*``)."""
    return any(paths.sys_platform.glob("arm-smmu-*"))


_PCI_ADDRESS_RE = re.compile(r"[0-9a-fA-F]{4,}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")


def mlx5_bound(paths: Paths) -> bool:
    """True when the mlx5_core PCI driver is bound to at least one device.

    A bound device shows as a symlink named by its PCI address in the driver directory.
    """
    driver = paths.sys_pci_drivers / "mlx5_core"
    if not driver.is_dir():
        return False
    return any(
        entry.is_symlink() and _PCI_ADDRESS_RE.fullmatch(entry.name) for entry in driver.iterdir()
    )


def nr_cpus_from_cmdline_append(text: str) -> int:
    """CPUs the capture kernel brings up, from ``nr_cpus=N`` in an append line (default 1).

    The last ``nr_cpus=`` wins, as in the kernel.
    """
    values = re.findall(r"(?:^|\s)nr_cpus=(\S*)", text)
    if not values:
        return 1
    last = values[-1]
    if not last.isdigit() or int(last) < 1:
        raise CrashkernelError(
            f"nr_cpus={last} in the capture command line is not a positive number; "
            "fix KDUMP_COMMANDLINE_APPEND (or FADUMP_COMMANDLINE_APPEND)"
        )
    return int(last)


# The kernel prints e.g. "Memory Encryption Features active: AMD SEV SEV-ES"; the
# first feature after AMD is SME or SEV whenever either is on.
_SME_SEV_RE = re.compile(r"Memory Encryption Features active: AMD (SME|SEV)\b")


def sme_sev_active(kernel_log: str) -> bool:
    """True when the kernel log says AMD SME or SEV memory encryption is active."""
    return _SME_SEV_RE.search(kernel_log) is not None

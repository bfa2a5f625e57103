"""The memory a capture kernel needs: ``kdumpctl estimate`` (§4.3).

recommended = max(baseline, kernel + modules + 3 x initramfs + runtime): the
baseline is the default table's size for this machine's RAM, the kernel size
comes from :mod:`kdumpd.host.kernel_image`, modules and initramfs from the
built capture image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdumpd.host import MIB
from kdumpd.host.kernel_image import KernelSize


def read_module_list(path: Path | None) -> frozenset[str] | None:
    """Module names listed one per line (``hostonly-kernel-modules.txt``); None if absent.

    Names are normalised to the /proc/modules spelling (``-`` becomes ``_``).
    """
    if path is None:
        return None
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return frozenset(line.strip().replace("-", "_") for line in text.splitlines() if line.strip())


RUNTIME_BYTES = 16 * MIB
# Modules at least this large are listed by name, as kdumpctl estimate does.
LARGE_MODULE_BYTES = 1 * MIB


@dataclass(frozen=True)
class Estimate:
    """The numbers of ``kdumpctl estimate``, in bytes, and notes on what was not counted."""

    reserved: int
    baseline: int
    kernel: KernelSize
    modules: dict[str, int]
    initramfs: int
    runtime: int = RUNTIME_BYTES
    image_built: bool = True
    notes: tuple[str, ...] = ()

    @property
    def modules_total(self) -> int:
        return sum(self.modules.values())

    @property
    def large_modules(self) -> dict[str, int]:
        return {n: s for n, s in sorted(self.modules.items()) if s >= LARGE_MODULE_BYTES}

    @property
    def estimated(self) -> int:
        """Kernel + modules + 3 x initramfs + runtime.

        Three times the image: the compressed image sits in the reservation and
        is unpacked into a tmpfs there as well (kdump-utils' factor).
        """
        return self.kernel.bytes + self.modules_total + 3 * self.initramfs + self.runtime

    @property
    def recommended(self) -> int:
        return max(self.baseline, self.estimated)

    @property
    def too_small(self) -> bool:
        return self.reserved < self.recommended


def estimate_capture_memory(
    *,
    reserved: int,
    baseline: int,
    kernel: KernelSize,
    loaded: dict[str, int],
    image_modules: frozenset[str] | None,
    initramfs: Path | None,
) -> Estimate:
    """Combine the readings into an :class:`Estimate`.

    Only loaded modules that the capture image lists are counted. Without a
    built image (no module list or no initramfs file) both terms count 0 and a
    note says so, rather than guessing from every module the host has loaded.
    """
    notes: list[str] = []
    if kernel.note:
        notes.append(kernel.note)
    initramfs_size: int | None = None
    if initramfs is not None:
        try:
            initramfs_size = initramfs.stat().st_size
        except OSError:
            initramfs_size = None
    built = image_modules is not None and initramfs_size is not None
    if image_modules is None:
        modules: dict[str, int] = {}
        notes.append(
            "the capture initramfs is not built yet (no module list): Kernel modules size counts 0"
        )
    else:
        modules = {name: size for name, size in loaded.items() if name in image_modules}
    if initramfs_size is None:
        notes.append("the capture initramfs is not built yet: Initramfs size counts 0")
    return Estimate(
        reserved=reserved,
        baseline=baseline,
        kernel=kernel,
        modules=modules,
        initramfs=initramfs_size or 0,
        image_built=built,
        notes=tuple(notes),
    )


def format_estimate(estimate: Estimate) -> list[str]:
    """The stdout lines of ``kdumpctl estimate`` (§4.3 layout, MiB by integer division)."""
    mib = MIB
    lines = [
        f"Reserved crashkernel:    {estimate.reserved // mib}M",
        f"Recommended crashkernel: {estimate.recommended // mib}M",
        "",
        f"Kernel image size:   {estimate.kernel.bytes // mib}M",
        f"Kernel modules size: {estimate.modules_total // mib}M",
        f"Initramfs size:      {estimate.initramfs // mib}M",
        f"Runtime reservation: {estimate.runtime // mib}M",
    ]
    large = estimate.large_modules
    if large:
        lines.append("Large modules:")
        lines.extend(f"    {name}: {size}" for name, size in large.items())
    else:
        lines.append("Large modules: <none>")
    if estimate.too_small:
        lines.append(
            "WARNING: Current crashkernel size is lower than recommended size "
            f"{estimate.recommended // mib}M."
        )
    return lines

"""Host readings: reservation and loaded state, Secure Boot, kernel lookup, kernel image size."""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from kdumpd import estimate as est
from kdumpd import host
from kdumpd.config.sysconfig import SysConfig
from kdumpd.errors import KdumpError
from kdumpd.host import kernel_image
from kdumpd.paths import Paths
from tests.conftest import write

MIB = 1024 * 1024
# The kernel's lzma streams use a dictionary of at least 16 MiB, whose little-endian
# size gives the 5d 00 00 00 magic extract-vmlinux looks for.
LZMA_KERNEL = [
    {"id": lzma.FILTER_LZMA1, "dict_size": 16 * MIB, "mf": lzma.MF_HC3, "mode": lzma.MODE_FAST}
]
GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


def make_elf(memsz: list[int], *, elf64: bool = True, little: bool = True) -> bytes:
    """A minimal ELF executable: one PT_LOAD per memsz, plus a PT_NOTE that must not count."""
    order = "<" if little else ">"
    headers = [(1, size) for size in memsz] + [(4, 999_999)]
    if elf64:
        ehsize, phentsize = 64, 56
        ident = b"\x7fELF" + bytes([2, 1 if little else 2, 1]) + bytes(9)
        header = ident + struct.pack(
            order + "HHIQQQIHHHHHH", 2, 62, 1, 0, ehsize, 0, 0, ehsize, phentsize,
            len(headers), 0, 0, 0,
        )  # fmt: skip
        phdrs = b"".join(
            struct.pack(order + "IIQQQQQQ", p_type, 5, 0, 0, 0, 0, size, 4096)
            for p_type, size in headers
        )
    else:
        ehsize, phentsize = 52, 32
        ident = b"\x7fELF" + bytes([1, 1 if little else 2, 1]) + bytes(9)
        header = ident + struct.pack(
            order + "HHIIIIIHHHHHH", 2, 3, 1, 0, ehsize, 0, 0, ehsize, phentsize,
            len(headers), 0, 0, 0,
        )  # fmt: skip
        phdrs = b"".join(
            struct.pack(order + "IIIIIIII", p_type, 0, 0, 0, 0, size, 5, 4096)
            for p_type, size in headers
        )
    return header + phdrs + bytes(512)


# -- reservation, loaded state, status ------------------------------------------------


def kdump_tree(paths: Paths, *, loaded: str | None = "0", size: str = "268435456") -> None:
    if loaded is not None:
        write(paths.kexec_crash_loaded, loaded + "\n")
    write(paths.kexec_crash_size, size + "\n")


def test_status_kernel_without_kexec_support(fake_root: Paths) -> None:
    kdump_tree(fake_root, loaded=None, size="0")
    status = host.read_status(fake_root)
    assert not status.operational
    assert status.reason == "Kdump is not supported on this kernel"


def test_status_without_reservation(fake_root: Paths) -> None:
    kdump_tree(fake_root, size="0")
    status = host.read_status(fake_root)
    assert status.supported
    assert status.reason == "No memory reserved for crash kernel"


def test_status_not_loaded(fake_root: Paths) -> None:
    kdump_tree(fake_root)
    status = host.read_status(fake_root)
    assert status.reserved_bytes == 256 * MIB
    assert status.reason == "capture kernel not loaded"
    assert not status.loaded


def test_status_operational(fake_root: Paths) -> None:
    kdump_tree(fake_root, loaded="1")
    status = host.read_status(fake_root)
    assert status.operational
    assert status.reason is None
    assert status.mode == "kdump"


def test_fadump_mode_reads_fadump_nodes(fake_root: Paths) -> None:
    kdump_tree(fake_root, loaded="0", size="0")
    write(fake_root.fadump_enabled, "1\n")
    write(fake_root.fadump_registered, "1\n")
    write(fake_root.fadump_mem_reserved, str(1024 * MIB))
    assert host.dump_mode(fake_root) == "fadump"
    assert host.crash_size_bytes(fake_root) == 1024 * MIB
    assert host.crash_loaded(fake_root)
    assert host.read_status(fake_root).operational


def test_missing_or_garbled_nodes_read_as_nothing(fake_root: Paths) -> None:
    assert host.crash_size_bytes(fake_root) == 0
    assert not host.crash_loaded(fake_root)
    write(fake_root.kexec_crash_size, "garbage")
    assert host.crash_size_bytes(fake_root) == 0


# -- Secure Boot -------------------------------------------------------------------


def efivar(paths: Paths, name: str, value: int) -> None:
    location = paths.efivars / f"{name}-{GUID}"
    location.parent.mkdir(parents=True, exist_ok=True)
    location.write_bytes(b"\x06\x00\x00\x00" + bytes([value]))


@pytest.mark.parametrize(
    ("secure_boot", "setup_mode", "expected"),
    [(1, 0, True), (1, 1, False), (0, 0, False)],
)
def test_secure_boot_from_efi_variables(
    fake_root: Paths, secure_boot: int, setup_mode: int, expected: bool
) -> None:
    efivar(fake_root, "SecureBoot", secure_boot)
    efivar(fake_root, "SetupMode", setup_mode)
    assert host.secure_boot_enforced(fake_root) is expected


def test_secure_boot_needs_setup_mode_variable(fake_root: Paths) -> None:
    efivar(fake_root, "SecureBoot", 1)
    assert not host.secure_boot_enforced(fake_root)


def test_secure_boot_without_efi(fake_root: Paths) -> None:
    assert not host.secure_boot_enforced(fake_root)


def test_secure_boot_powerpc_and_s390(fake_root: Paths) -> None:
    level = fake_root.device_tree / "ibm,secure-boot"
    level.parent.mkdir(parents=True)
    level.write_bytes((1).to_bytes(4, "big"))
    assert not host.secure_boot_enforced(fake_root)
    level.write_bytes((2).to_bytes(4, "big"))
    assert host.secure_boot_enforced(fake_root)
    level.unlink()
    write(fake_root.ipl_secure, "1\n")
    assert host.secure_boot_enforced(fake_root)


# -- kernel release and lookup ------------------------------------------------------


def test_kernelver_wins_over_running_kernel(fake_root: Paths) -> None:
    config = SysConfig(kernelver="6.1.0-9-amd64")
    assert host.kernel_release(fake_root, config, running="6.1.0-28-amd64") == "6.1.0-9-amd64"
    assert host.kernel_release(fake_root, SysConfig(), running="6.1.0-28-amd64") == (
        "6.1.0-28-amd64"
    )


def test_debug_kernel_replaced_by_installed_non_debug(fake_root: Paths) -> None:
    notes: list[str] = []
    running = "6.9.0-1.fc40.x86_64+debug"
    assert host.kernel_release(fake_root, SysConfig(), running=running, notes=notes) == running
    write(fake_root.modules / "6.9.0-1.fc40.x86_64" / "modules.dep", "")
    plain = host.kernel_release(fake_root, SysConfig(), running=running, notes=notes)
    assert plain == "6.9.0-1.fc40.x86_64"
    assert notes == ["Use of debug kernel detected. Trying to use 6.9.0-1.fc40.x86_64"]


def test_boot_image_strips_grub_device() -> None:
    cmdline = "BOOT_IMAGE=(hd0,gpt2)/vmlinuz-6.1.0-28-amd64 root=UUID=x ro"
    assert host.boot_image_from_cmdline(cmdline) == "/vmlinuz-6.1.0-28-amd64"
    assert host.boot_image_from_cmdline("root=/dev/sda1") is None


def test_find_kernel_prefers_boot_image(fake_root: Paths) -> None:
    kver = "6.1.0-28-amd64"
    write(fake_root.proc_cmdline, f"BOOT_IMAGE=(hd0,msdos1)/custom/vmlinuz-{kver} ro\n")
    write(fake_root.boot / f"vmlinuz-{kver}", "standard")
    write(fake_root.boot / "custom" / f"vmlinuz-{kver}", "from grub")
    found = host.find_kernel(fake_root, SysConfig(), kver)
    assert found.read_text() == "from grub"


def test_find_kernel_ignores_boot_image_of_other_release(fake_root: Paths) -> None:
    kver = "6.1.0-28-amd64"
    write(fake_root.proc_cmdline, "BOOT_IMAGE=/vmlinuz-6.1.0-27-amd64 ro\n")
    write(fake_root.boot / "vmlinuz-6.1.0-27-amd64", "old")
    write(fake_root.boot / f"vmlinuz-{kver}", "wanted")
    assert host.find_kernel(fake_root, SysConfig(), kver).read_text() == "wanted"


def test_find_kernel_bls_layout_and_img_ext(fake_root: Paths) -> None:
    kver = "6.9.0"
    write(fake_root.machine_id, "0123456789abcdef0123456789abcdef\n")
    write(fake_root.under_root(f"/efi/0123456789abcdef0123456789abcdef/{kver}/linux"), "bls")
    config = SysConfig(img="linux")
    assert host.find_kernel(fake_root, config, kver).read_text() == "bls"
    write(fake_root.boot / f"vmlinuz-{kver}.signed", "signed")
    config = SysConfig(img_ext=".signed")
    assert host.find_kernel(fake_root, config, kver).read_text() == "signed"


def test_find_kernel_bootdir_restricts_search(fake_root: Paths) -> None:
    kver = "6.1.0-28-amd64"
    write(fake_root.boot / f"vmlinuz-{kver}", "boot")
    with pytest.raises(host.KernelNotFound) as info:
        host.find_kernel(fake_root, SysConfig(bootdir="/mnt/kernels"), kver)
    message = str(info.value)
    assert message.startswith("Failed to detect kdump kernel location")
    assert f"/mnt/kernels/vmlinuz-{kver}" in message
    assert "/boot/" not in message


def test_find_kernel_not_found_names_every_default_dir(fake_root: Paths) -> None:
    with pytest.raises(host.KernelNotFound) as info:
        host.find_kernel(fake_root, SysConfig(), "6.1.0-28-amd64")
    message = str(info.value)
    for tried in ("/boot/vmlinuz-", "/boot/efi/vmlinuz-", "/efi/vmlinuz-", " /vmlinuz-"):
        assert tried in message
    assert str(fake_root.root) not in message  # paths as the managed system names them


# -- memory, modules, kernel log ----------------------------------------------------

IOMEM = """\
00000000-00000fff : Reserved
00001000-0009ffff : System RAM
000a0000-000fffff : Reserved
00100000-bffdffff : System RAM
  01000000-01ffffff : Kernel code
  02000000-027fffff : Kernel rodata
  02800000-02bfffff : Kernel data
  03000000-033fffff : Kernel bss
  a0000000-afffffff : Crash kernel
100000000-13fffffff : System RAM
"""


def test_iomem_memory_and_kernel_ranges(fake_root: Paths) -> None:
    write(fake_root.proc_iomem, IOMEM)
    ram = (0x9FFFF - 0x1000 + 1) + (0xBFFDFFFF - 0x100000 + 1) + 0x40000000
    assert host.system_ram_bytes(IOMEM) == ram
    assert host.iomem_kernel_bytes(fake_root) == 16 * MIB + 8 * MIB + 4 * MIB + 4 * MIB


def test_meminfo_and_modules(fake_root: Paths) -> None:
    write(fake_root.proc_meminfo, "MemTotal:        2030712 kB\nMemFree: 1 kB\n")
    write(
        fake_root.proc_modules,
        "ext4 1015808 1 - Live 0xffffffffc0a00000\n"
        "crc16 16384 1 ext4, Live 0xffffffffc0400000\n",
    )
    assert host.meminfo_total_kib(fake_root) == 2030712
    assert host.loaded_modules(fake_root) == {"ext4": 1015808, "crc16": 16384}
    assert host.meminfo_total_kib(Paths(root=fake_root.root / "missing")) is None


def test_kernel_log_live_falls_back_to_dmesg(programs: Any) -> None:
    programs.expect("journalctl", returncode=1, stderr="No journal files were found.")
    programs.expect("dmesg", stdout="[0.0] Memory Encryption Features active: AMD SEV\n")
    log = host.read_kernel_log(Paths(root=Path("/")))
    assert "AMD SEV" in log
    assert [call[0] for call in programs.calls] == ["journalctl", "dmesg"]


def test_kernel_log_of_other_tree_reads_only_its_journal(fake_root: Paths, programs: Any) -> None:
    programs.expect("journalctl", stdout="kernel: hello\n")
    assert host.read_kernel_log(fake_root) == "kernel: hello\n"
    assert programs.calls == [
        ("journalctl", "--root", str(fake_root.root), "-k", "--no-pager", "-q")
    ]


def test_kernel_log_absent_is_empty(fake_root: Paths, programs: Any) -> None:
    programs.expect("journalctl", returncode=1)
    assert host.read_kernel_log(fake_root) == ""


# -- kernel image size ----------------------------------------------------------------


@pytest.mark.parametrize(("elf64", "little"), [(True, True), (True, False), (False, True)])
def test_elf_load_memsz_sums_only_pt_load(elf64: bool, little: bool) -> None:
    image = make_elf([20 * MIB, 3 * MIB], elf64=elf64, little=little)
    assert kernel_image.elf_load_memsz(image) == 23 * MIB


def test_elf_load_memsz_rejects_non_elf_and_truncated() -> None:
    assert kernel_image.elf_load_memsz(b"MZ" + bytes(100)) is None
    assert kernel_image.elf_load_memsz(make_elf([MIB])[:70]) is None


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("gzip", gzip.compress),
        ("xz", lzma.compress),
        ("bzip2", bz2.compress),
        ("lzma", lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE, filters=LZMA_KERNEL)),
    ],
)
def test_compressed_kernel_found_inside_junk(name: str, compress: Any) -> None:
    # A bzImage: setup code, then the compressed vmlinux, then trailing data.
    junk = b"MZ\x00\x1f\x8b" + bytes(range(256)) * 8
    image = junk + compress(make_elf([30 * MIB, 2 * MIB])) + b"\x00" * 64
    assert kernel_image.image_load_size(image) == (32 * MIB, name)


def test_zstd_kernel_is_named_as_unsupported() -> None:
    image = b"MZ" + bytes(64) + b"\x28\xb5\x2f\xfd" + bytes(64)
    assert kernel_image.image_load_size(image) == (None, "zstd")


def test_kernel_size_falls_back_to_iomem(fake_root: Paths, tmp_path: Path) -> None:
    write(fake_root.proc_iomem, IOMEM)
    zstd_image = tmp_path / "vmlinuz"
    zstd_image.write_bytes(b"MZ" + bytes(64) + b"\x28\xb5\x2f\xfd" + bytes(64))
    size = kernel_image.kernel_image_size(fake_root, zstd_image)
    assert (size.bytes, size.source) == (32 * MIB, "iomem")
    assert size.note is not None and "zstd-compressed" in size.note
    missing = kernel_image.kernel_image_size(fake_root, None)
    assert missing.source == "iomem" and missing.note is not None
    assert "kernel image not found" in missing.note


# -- estimate -------------------------------------------------------------------------


def test_estimate_counts_only_image_modules_and_three_initrds(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    with initrd.open("wb") as handle:
        handle.truncate(40 * MIB)
    estimate = est.estimate_capture_memory(
        reserved=192 * MIB,
        baseline=128 * MIB,
        kernel=kernel_image.KernelSize(30 * MIB, "elf"),
        loaded={"ext4": 2 * MIB, "crc16": 16384, "nvidia": 60 * MIB},
        image_modules=frozenset({"ext4", "crc16"}),
        initramfs=initrd,
    )
    assert estimate.modules_total == 2 * MIB + 16384
    assert estimate.estimated == 30 * MIB + 2 * MIB + 16384 + 120 * MIB + 16 * MIB
    assert estimate.recommended == estimate.estimated
    assert estimate.image_built and not estimate.notes
    assert est.format_estimate(estimate) == [
        "Reserved crashkernel:    192M",
        "Recommended crashkernel: 168M",
        "",
        "Kernel image size:   30M",
        "Kernel modules size: 2M",
        "Initramfs size:      40M",
        "Runtime reservation: 16M",
        "Large modules:",
        "    ext4: 2097152",
    ]


def test_estimate_without_image_counts_zero_and_says_so() -> None:
    estimate = est.estimate_capture_memory(
        reserved=128 * MIB,
        baseline=256 * MIB,
        kernel=kernel_image.KernelSize(30 * MIB, "elf"),
        loaded={"ext4": 2 * MIB},
        image_modules=None,
        initramfs=None,
    )
    assert estimate.modules_total == 0 and estimate.initramfs == 0
    assert not estimate.image_built
    assert len(estimate.notes) == 2
    assert all("not built yet" in note for note in estimate.notes)
    lines = est.format_estimate(estimate)
    assert lines[1] == "Recommended crashkernel: 256M"
    assert lines[-2:] == [
        "Large modules: <none>",
        "WARNING: Current crashkernel size is lower than recommended size 256M.",
    ]


def test_module_list_normalises_dashes(tmp_path: Path) -> None:
    listing = write(tmp_path / "mods.txt", "ext4\nnvme-core\n\n")
    assert est.read_module_list(listing) == frozenset({"ext4", "nvme_core"})
    with pytest.raises(host.HostReadError, match="No such file"):
        est.read_module_list(tmp_path / "absent")
    with pytest.raises(host.HostReadError, match="Is a directory"):
        est.read_module_list(tmp_path)
    assert est.read_module_list(None) is None


def test_a_busy_sysfs_node_is_read_once_the_kexec_load_ends(
    fake_root: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kexec_crash_size answers EBUSY while a load holds kexec_mutex.
    node = write(fake_root.kexec_crash_size, f"{256 << 20}\n")
    real_read_text = Path.read_text
    busy = [2]

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == node and busy[0]:
            busy[0] -= 1
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    assert host.crash_size_bytes(fake_root, "kdump") == 256 << 20
    assert busy == [0]


def test_a_node_busy_for_too_long_is_an_error_not_a_traceback(
    fake_root: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = write(fake_root.kexec_crash_size, "0\n")

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        raise OSError(errno.EBUSY, "Device or resource busy", str(node))

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with pytest.raises(KdumpError, match="a kexec load or unload is running; try again"):
        host.crash_size_bytes(fake_root, "kdump")

"""Raw dump import with the real makedumpfile, on an image file and on a loop device."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from kdumpd.messages import RecordedMessages
from kdumpd.paths import Paths
from kdumpd.postcrash import raw_import
from kdumpd.targets import raw
from tests.support import flattened_writer
from tests.support.synth import generate_core

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("makedumpfile"),
]

WHEN = datetime(2024, 6, 23, 21, 27, 26)
DEVICE_BYTES = 4 << 20


def make_dumps(tmp_path: Path) -> tuple[Path, bytes]:
    """A flattened stream and the kdump file makedumpfile writes directly from the same core."""
    core = generate_core(tmp_path / "vmcore.elf").path
    direct = tmp_path / "direct.kdump"
    subprocess.run(
        ["makedumpfile", "-l", "-d", "31", str(core), str(direct)], check=True, capture_output=True
    )
    stream = tmp_path / "vmcore.flat"
    with stream.open("wb") as out:
        subprocess.run(
            ["makedumpfile", "-F", "-l", "-d", "31", str(core)],
            check=True,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    return stream, direct.read_bytes()


def write_over(device: Path, data: bytes) -> None:
    """What the capture side's dd does: write at offset 0, keep the rest of the device."""
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def fake_root_with_mounts(tmp_path: Path) -> Paths:
    root = tmp_path / "root"
    (root / "proc" / "self").mkdir(parents=True)
    (root / "dev").mkdir()
    # The host's real mounts: the import must find the device unmounted among them.
    shutil.copy("/proc/self/mountinfo", root / "proc" / "self" / "mountinfo")
    return Paths(root=root)


def check_import(paths: Paths, device: str, node: Path, direct: bytes) -> None:
    messages = RecordedMessages()
    result = raw_import.import_raw_dump(paths, device, messages=messages, now=WHEN)
    assert result is not None
    assert result.directory == paths.var_crash / "127.0.0.1-2024-06-23-21:27:26"
    assert sorted(p.name for p in result.directory.iterdir()) == ["vmcore", "vmcore-dmesg.txt"]
    assert result.vmcore.read_bytes() == direct
    assert result.size == len(direct)
    assert "Kernel panic - not syncing: sysrq triggered crash" in result.dmesg.read_text()  # type: ignore[union-attr]
    assert ("info", f"Dump saved to {result.vmcore}") in messages.entries

    with node.open("rb") as f:
        head = f.read(4096)
    assert head[:512] == bytes(512)
    assert not raw.find_pending_dump(node)
    record = raw_import.read_import_record(paths, result.fingerprint)
    assert record is not None and record["directory"] == str(result.directory)

    again = RecordedMessages()
    assert raw_import.import_raw_dump(paths, device, messages=again, now=WHEN) is None
    assert again.entries == []
    assert len(list(paths.var_crash.iterdir())) == 1


def test_import_from_an_image_file(tmp_path: Path) -> None:
    stream, direct = make_dumps(tmp_path)
    paths = fake_root_with_mounts(tmp_path)
    image = paths.under_root("/dev/kdump")
    image.write_bytes(os.urandom(DEVICE_BYTES))  # old data after the stream stays there
    write_over(image, stream.read_bytes())
    assert raw.check_raw_device(paths, "/dev/kdump", allow_regular_file=True) == []
    check_import(paths, "/dev/kdump", image, direct)


def test_own_writer_stream_is_reassembled_by_makedumpfile(tmp_path: Path) -> None:
    _, direct = make_dumps(tmp_path)
    # Pieces out of order and overlapping, as makedumpfile itself writes headers last.
    pieces = [(4096, direct[4096:]), (0, direct[:4096]), (100, direct[100:200])]
    paths = fake_root_with_mounts(tmp_path)
    image = paths.under_root("/dev/kdump")
    with image.open("wb") as out:
        flattened_writer.write_stream(pieces, out)
        out.write(bytes(DEVICE_BYTES))
    check_import(paths, "/dev/kdump", image, direct)


def test_truncated_stream_leaves_the_device_and_no_directory(tmp_path: Path) -> None:
    stream, _ = make_dumps(tmp_path)
    paths = fake_root_with_mounts(tmp_path)
    image = paths.under_root("/dev/kdump")
    image.write_bytes(stream.read_bytes()[:60000])
    before = image.read_bytes()
    with pytest.raises(raw_import.RawImportError) as caught:
        raw_import.import_raw_dump(paths, "/dev/kdump", messages=RecordedMessages(), now=WHEN)
    assert "the dump stream on /dev/kdump is incomplete" in str(caught.value)
    assert "dd if=/dev/zero of=/dev/kdump bs=512 count=1" in str(caught.value)
    assert image.read_bytes() == before
    assert not paths.var_crash.exists() or list(paths.var_crash.iterdir()) == []
    assert not (paths.state_dir / raw_import.IMPORTS_DIR).exists()


@pytest.mark.requires("mkfs.ext4")
def test_filesystem_signature_is_refused(tmp_path: Path) -> None:
    paths = fake_root_with_mounts(tmp_path)
    image = paths.under_root("/dev/kdump")
    image.write_bytes(bytes(DEVICE_BYTES))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    problems = raw.check_raw_device(paths, "/dev/kdump", allow_regular_file=True, line=4)
    assert [str(p) for p in problems] == [
        "/etc/kdump.conf:4: Detected 'ext4' signature on /dev/kdump, data loss is expected if "
        "kdump writes to it. If that ext4 data is not needed, erase the signature with "
        "'wipefs -a /dev/kdump'; otherwise name another device."
    ]


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    assert os.geteuid() == 0, "loop devices need root (the test command runs as root)"
    assert shutil.which("losetup") is not None, "losetup missing: tools/setup-host.sh installs it"
    backing = tmp_path / "loop.img"
    with backing.open("wb") as f:
        f.truncate(DEVICE_BYTES)
    done = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    assert done.returncode == 0, f"losetup failed: {done.stderr.strip()}"
    device = done.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def test_import_from_a_loop_device(tmp_path: Path, loop_device: str) -> None:
    stream, direct = make_dumps(tmp_path)
    paths = fake_root_with_mounts(tmp_path)
    node = paths.under_root("/dev/kdump")
    os.mknod(node, stat.S_IFBLK | 0o600, os.stat(loop_device).st_rdev)
    assert raw.check_raw_device(paths, "/dev/kdump") == []
    write_over(node, stream.read_bytes())
    assert raw.find_pending_dump(node)
    check_import(paths, "/dev/kdump", node, direct)
    # The loop device itself (not only our node) lost the stream.
    with open(loop_device, "rb") as f:
        assert f.read(512) == bytes(512)

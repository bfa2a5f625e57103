"""The raw target's first-kernel side over fake roots: device checks, detection, import flow."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest

from kdumpd import proc
from kdumpd.messages import RecordedMessages
from kdumpd.paths import Paths
from kdumpd.postcrash import raw_import
from kdumpd.targets import raw
from kdumpd.targets import raw as raw_target
from kdumpd.vmcore import flattened
from tests.conftest import ProgramStub, write
from tests.support import flattened_writer

WHEN = datetime(2024, 6, 23, 21, 27, 26)
KDUMP_FILE = b"KDUMP   " + bytes(range(256)) * 40
MOUNTINFO = (
    "22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n"
    "30 22 8:17 / /srv rw,relatime - xfs /dev/sdb1 rw\n"
)


def stream_bytes(content: bytes = KDUMP_FILE) -> bytes:
    out = io.BytesIO()
    # Written out of order, as makedumpfile does (headers after the data).
    flattened_writer.write_stream([(4096, content[4096:]), (0, content[:4096])], out)
    return out.getvalue()


def fake_block_device(paths: Paths, name: str, majmin: str) -> Path:
    """A block device node in the fake tree (tests run as root) and its sysfs entry."""
    node = paths.under_root(f"/dev/{name}")
    node.parent.mkdir(parents=True, exist_ok=True)
    major, minor = (int(n) for n in majmin.split(":"))
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(major, minor))
    paths.under_root(f"/sys/dev/block/{majmin}/holders").mkdir(parents=True)
    return node


needs_root = pytest.mark.requires(root=True)  # mknod


# -- flattened format ---------------------------------------------------------------


def test_flattened_header_detection() -> None:
    head = flattened_writer.header_bytes()
    assert len(head) == 4096
    assert flattened.is_flattened(head[: flattened.PROBE_SIZE])
    assert not flattened.is_flattened(head[:20])
    assert not flattened.is_flattened(b"makedumpfile" + bytes(20))  # type 0
    wrong_version = bytearray(head)
    wrong_version[31] = 2
    assert not flattened.is_flattened(bytes(wrong_version))
    assert not flattened.is_flattened(b"KDUMP   " + bytes(4088))


def test_reassemble_applies_records_in_order() -> None:
    out = io.BytesIO()
    flattened_writer.write_stream([(0, b"aaaa"), (8, b"bb"), (2, b"XY")], out)
    rebuilt = io.BytesIO()
    summary = flattened.reassemble(io.BytesIO(out.getvalue() + b"trailing junk"), rebuilt)
    assert rebuilt.getvalue() == b"aaXY\0\0\0\0bb"
    # head: the rebuilt file's start as far as it is contiguous from byte 0
    assert summary == flattened.StreamSummary(
        records=3, output_size=10, stream_size=len(out.getvalue()), complete=True, head=b"aaXY"
    )


def test_scan_reports_a_cut_stream_and_rejects_garbage() -> None:
    data = stream_bytes()
    summary = flattened.scan(io.BytesIO(data[:5000]))
    assert not summary.complete
    assert summary.records == 0
    corrupt = data[:4096] + (-5).to_bytes(8, "big", signed=True) + (10).to_bytes(8, "big")
    with pytest.raises(flattened.FlattenedFormatError, match="record 1 at stream byte 4096"):
        flattened.scan(io.BytesIO(corrupt), where="/dev/sdz")
    with pytest.raises(flattened.FlattenedFormatError, match="no makedumpfile flattened header"):
        flattened.scan(io.BytesIO(bytes(8192)))


# -- device checks ------------------------------------------------------------------


def test_missing_device(fake_root: Paths) -> None:
    problems = raw.check_raw_device(fake_root, "/dev/disk/by-id/gone", line=5)
    assert [str(p) for p in problems] == [
        "/etc/kdump.conf:5: raw partition /dev/disk/by-id/gone not found. Name an existing "
        "block device by a persistent path such as /dev/disk/by-id/..."
    ]


def test_regular_file_only_when_allowed(fake_root: Paths, programs: ProgramStub) -> None:
    write(fake_root.under_root("/dev/image"), "")
    problems = raw.check_raw_device(fake_root, "/dev/image")
    assert len(problems) == 1
    assert "Bad raw disk /dev/image: not a block device" in problems[0].message
    programs.expect("blkid", returncode=2)
    assert raw.check_raw_device(fake_root, "/dev/image", allow_regular_file=True) == []


def test_signatures_are_refused(fake_root: Paths, programs: ProgramStub) -> None:
    write(fake_root.under_root("/dev/image"), "")
    programs.expect("blkid", stdout="UUID=1234\nVERSION=1.0\nTYPE=xfs\nUSAGE=filesystem\n")
    programs.expect("blkid", stdout="PTUUID=abcd\nPTTYPE=gpt\n")
    first = raw.check_raw_device(fake_root, "/dev/image", allow_regular_file=True)
    assert [p.message for p in first] == [
        "Detected 'xfs' signature on /dev/image, data loss is expected if kdump writes to "
        "it. If that xfs data is not needed, erase the signature with 'wipefs -a "
        "/dev/image'; otherwise name another device."
    ]
    second = raw.check_raw_device(fake_root, "/dev/image", allow_regular_file=True)
    assert "Detected a 'gpt' partition table on /dev/image" in second[0].message
    assert programs.calls[0] == (
        "blkid",
        "-p",
        "-o",
        "export",
        str(fake_root.under_root("/dev/image")),
    )


def test_a_pending_stream_skips_the_signature_probe(fake_root: Paths) -> None:
    image = fake_root.under_root("/dev/image")
    image.parent.mkdir(parents=True)
    image.write_bytes(stream_bytes())
    # No blkid expected: the stub fails the test if it runs.
    assert raw.check_raw_device(fake_root, "/dev/image", allow_regular_file=True) == []


@needs_root
def test_mounted_partition_swap_and_holders_are_refused(
    fake_root: Paths, programs: ProgramStub
) -> None:
    write(fake_root.proc_mounts, MOUNTINFO)
    write(
        fake_root.under_root("/proc/swaps"),
        "Filename Type Size Used Priority\n/dev/sdb2 partition 1024 0 -2\n",
    )
    fake_block_device(fake_root, "sdb", "8:16")
    fake_block_device(fake_root, "sdb2", "8:18")
    for name, number in (("sdb1", "8:17"), ("sdb2", "8:18")):
        part = fake_root.under_root(f"/sys/dev/block/8:16/{name}")
        write(part / "partition", "1\n")
        write(part / "dev", f"{number}\n")
    (fake_root.under_root("/sys/dev/block/8:16/holders") / "dm-0").mkdir()

    problems = [p.message for p in raw.check_raw_device(fake_root, "/dev/sdb")]
    assert problems == [
        "raw dump target /dev/sdb (/dev/sdb) is in use by dm-0 (LVM, RAID or dm-crypt); "
        "name a device nothing else uses.",
        "raw dump target /dev/sdb (partition sdb1) is mounted at /srv; a dump would destroy "
        "that filesystem. Name an unused device.",
        "raw dump target /dev/sdb (partition sdb2) is an active swap device; run 'swapoff' "
        "and remove it from /etc/fstab, or name another device.",
    ]


@needs_root
def test_unused_but_unreadable_block_device(fake_root: Paths) -> None:
    # Nothing uses it, but no such device exists behind the node: it cannot be read.
    write(fake_root.proc_mounts, MOUNTINFO)
    fake_block_device(fake_root, "sdc", "240:240")
    assert [p.message for p in raw.check_raw_device(fake_root, "/dev/sdc")] == [
        "Bad raw disk /dev/sdc: cannot read it (No such device or address). Check that the "
        "device is present and that kdumpctl runs as root."
    ]


def test_size_warning(fake_root: Paths) -> None:
    write(fake_root.proc_meminfo, "MemTotal:        2048 kB\nMemFree: 1 kB\n")
    image = write(fake_root.under_root("/dev/image"), "")
    image.write_bytes(bytes(1024 * 1024))
    messages = RecordedMessages()
    raw.check_raw_size(fake_root, "/dev/image", messages)
    assert messages.entries == [
        ("warning", "There might not be enough space to save a vmcore."),
        ("warning", "The size of /dev/image should be greater than 2048 kilo bytes."),
    ]
    with image.open("ab") as f:
        f.truncate(4 * 1024 * 1024)
    quiet = RecordedMessages()
    raw.check_raw_size(fake_root, "/dev/image", quiet)
    assert quiet.entries == []


# -- import -------------------------------------------------------------------------


def fake_makedumpfile(argv: Sequence[str]) -> proc.Completed:
    """Stands in for ``sh -c 'exec makedumpfile -R out < dev'`` with the stdlib reassembler."""
    assert tuple(argv[:3]) == ("sh", "-c", 'exec makedumpfile -R "$1" < "$2"')
    out, device = argv[4], argv[5]
    with open(device, "rb") as src, open(out, "wb") as dst:
        flattened.reassemble(src, dst)
    return proc.Completed(tuple(argv), 0, "", "")


def dmesg_ok(argv: Sequence[str]) -> proc.Completed:
    Path(argv[-1]).write_text("Kernel panic - not syncing: test\n")
    return proc.Completed(tuple(argv), 0, "", "")


def device_with_stream(paths: Paths, content: bytes = KDUMP_FILE) -> Path:
    image = paths.under_root("/dev/kdump")
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(stream_bytes(content) + b"\x55" * 8192)
    return image


def test_no_stream_no_import(fake_root: Paths) -> None:
    write(fake_root.under_root("/dev/kdump"), "\0" * 4096)
    result = raw_import.import_raw_dump(
        fake_root, "/dev/kdump", messages=RecordedMessages(), now=WHEN
    )
    assert result is None
    assert not fake_root.var_crash.exists()


def test_import_saves_records_then_invalidates(fake_root: Paths, programs: ProgramStub) -> None:
    image = device_with_stream(fake_root)
    print_ = raw_import.fingerprint(image)
    programs.expect_call("sh", fake_makedumpfile)
    programs.expect_call("makedumpfile", dmesg_ok)
    messages = RecordedMessages()
    result = raw_import.import_raw_dump(fake_root, "/dev/kdump", messages=messages, now=WHEN)

    directory = fake_root.var_crash / "127.0.0.1-2024-06-23-21:27:26"
    assert result == raw_import.RawImport(
        directory, directory / "vmcore", len(KDUMP_FILE), print_, directory / "vmcore-dmesg.txt"
    )
    assert (directory / "vmcore").read_bytes() == KDUMP_FILE
    assert not (directory / "vmcore-incomplete").exists()
    assert messages.entries == [("info", f"Dump saved to {directory / 'vmcore'}")]
    # The whole stream is erased (the memory image with it), nothing after it.
    data, stream = image.read_bytes(), stream_bytes()
    assert data[: len(stream)] == bytes(len(stream))
    assert data[len(stream) :] == b"\x55" * 8192
    record = raw_import.read_import_record(fake_root, print_)
    assert record == {
        "device": "/dev/kdump",
        "imported": "2024-06-23T21:27:26",
        "directory": str(directory),
        "size": len(KDUMP_FILE),
        "sha256_first_mib": print_,
        "stream_size": len(stream),
    }
    assert programs.calls[1] == (
        "makedumpfile", "--dump-dmesg", str(directory / "vmcore-incomplete"),
        str(directory / "vmcore-dmesg.txt"),
    )  # fmt: skip


def test_dmesg_failure_only_warns(fake_root: Paths, programs: ProgramStub) -> None:
    device_with_stream(fake_root)
    programs.expect_call("sh", fake_makedumpfile)
    programs.expect("makedumpfile", stderr="The kernel version is not supported.", returncode=1)
    messages = RecordedMessages()
    result = raw_import.import_raw_dump(fake_root, "/dev/kdump", messages=messages, now=WHEN)
    assert result is not None and result.dmesg is None
    assert not (result.directory / "vmcore-dmesg.txt").exists()
    assert messages.entries[0][0] == "warning"
    assert "could not extract the kernel log" in messages.entries[0][1]


def test_an_already_imported_stream_is_only_erased(fake_root: Paths, programs: ProgramStub) -> None:
    image = device_with_stream(fake_root)
    print_ = raw_import.fingerprint(image)
    write(
        fake_root.state_dir / "raw-imports" / f"{print_}.json",
        '{"directory": "/var/crash/127.0.0.1-2024-01-01-00:00:00"}',
    )
    messages = RecordedMessages()
    assert raw_import.import_raw_dump(fake_root, "/dev/kdump", messages=messages, now=WHEN) is None
    assert messages.entries == [
        (
            "warning",
            "The dump on /dev/kdump was already saved to "
            "/var/crash/127.0.0.1-2024-01-01-00:00:00; erasing it from the device.",
        )
    ]
    assert image.read_bytes()[:512] == bytes(512)
    assert not fake_root.var_crash.exists()


def test_reassembly_failure_keeps_the_device_and_no_directory(
    fake_root: Paths, programs: ProgramStub
) -> None:
    image = device_with_stream(fake_root)
    before = image.read_bytes()
    programs.expect("sh", stderr="write error: No space left on device", returncode=1)
    with pytest.raises(raw_import.RawImportError) as caught:
        raw_import.import_raw_dump(fake_root, "/dev/kdump", messages=RecordedMessages(), now=WHEN)
    text = str(caught.value)
    assert text.startswith("saving the dump from /dev/kdump failed: sh: exited with status 1")
    assert "makedumpfile -R /var/crash/vmcore < /dev/kdump" in text
    assert image.read_bytes() == before
    assert list(fake_root.var_crash.iterdir()) == []
    assert not (fake_root.state_dir / "raw-imports").exists()


def test_a_result_that_is_no_dump_is_refused(fake_root: Paths, programs: ProgramStub) -> None:
    image = device_with_stream(fake_root, content=b"not a dump" * 1000)
    before = image.read_bytes()
    programs.expect_call("sh", fake_makedumpfile)
    with pytest.raises(raw_import.RawImportError, match="is not a kdump-compressed or ELF file"):
        raw_import.import_raw_dump(fake_root, "/dev/kdump", messages=RecordedMessages(), now=WHEN)
    assert image.read_bytes() == before
    assert list(fake_root.var_crash.iterdir()) == []


def test_a_cut_stream_never_reaches_makedumpfile(fake_root: Paths) -> None:
    image = fake_root.under_root("/dev/kdump")
    image.parent.mkdir(parents=True)
    image.write_bytes(stream_bytes()[:6000])
    with pytest.raises(
        raw_import.RawImportError, match="is incomplete: it breaks off after 0 records"
    ):
        raw_import.import_raw_dump(fake_root, "/dev/kdump", messages=RecordedMessages(), now=WHEN)


# -- issue 8, finding 7: a cut stream on a zeroed device -----------------------------------


def test_reader_stops_at_the_first_impossible_record(fake_root: Paths) -> None:
    # Header, then zeros: every 16 zero bytes used to read as an empty record, so the
    # reader walked the whole device (hours on a large disk) before giving up.
    data = stream_bytes()[: flattened.HEADER_SIZE] + bytes(1 << 20)
    reads: list[int] = []

    class Counting(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            reads.append(len(chunk))
            return chunk

    with pytest.raises(flattened.FlattenedFormatError, match="record 1 at stream byte 4096"):
        flattened.scan(Counting(data), where="/dev/kdump")
    assert sum(reads) == flattened.HEADER_SIZE + flattened.RECORD_HEADER.size


def test_an_unusable_stream_is_set_aside_once_and_never_blocks(fake_root: Paths) -> None:
    image = fake_root.under_root("/dev/kdump")
    image.parent.mkdir(parents=True)
    image.write_bytes(stream_bytes()[: flattened.HEADER_SIZE] + bytes(1 << 16))
    before = image.read_bytes()
    with pytest.raises(raw_import.UnusableStream, match="is corrupt"):
        raw_import.import_raw_dump(fake_root, "/dev/kdump", messages=RecordedMessages(), now=WHEN)
    (noted,) = (fake_root.state_dir / raw_import.SET_ASIDE_DIR).iterdir()
    assert "record 1 at stream byte 4096" in noted.read_text()
    messages = RecordedMessages()
    result = raw_import.import_raw_dump(fake_root, "/dev/kdump", messages=messages, now=WHEN)
    assert result is None
    assert [level for level, _ in messages.entries] == ["info"]
    assert image.read_bytes() == before  # set aside, not erased: it may still be examined


def test_start_arms_over_an_unusable_stream(
    fake_root: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdumpd import manager

    # A regular file stands in for the device here: only the import is under test.
    monkeypatch.setattr(raw_target, "check_raw_device", lambda *a, **k: [])
    write(fake_root.kdump_conf, "raw /dev/kdump\ncore_collector makedumpfile -F -l -d 31\n")
    image = fake_root.under_root("/dev/kdump")
    image.parent.mkdir(parents=True)
    image.write_bytes(stream_bytes()[:6000])
    messages = RecordedMessages()
    manager.import_pending_raw_dump(fake_root, messages)  # no exception: arming goes on
    ((level, text),) = messages.entries
    assert level == "warning"
    assert "is incomplete" in text and "kdump is armed" in text


def test_start_imports_only_from_a_validated_block_device(fake_root: Paths) -> None:
    from kdumpd import manager
    from kdumpd.errors import ConfigError

    write(fake_root.kdump_conf, "raw /dev/kdump\ncore_collector makedumpfile -F -l -d 31\n")
    image = device_with_stream(fake_root)
    before = image.read_bytes()
    with pytest.raises(ConfigError, match="kdump.conf:1: Bad raw disk /dev/kdump: not a block"):
        manager.import_pending_raw_dump(fake_root, RecordedMessages())
    assert image.read_bytes() == before
    assert not fake_root.var_crash.exists()


def kdump_file_of(nodename: bytes) -> bytes:
    """A kdump-compressed file whose header names the host that crashed."""
    header = b"KDUMP   " + (6).to_bytes(4, "little") + b"Linux".ljust(65, b"\0")
    return header + nodename.ljust(65, b"\0") + bytes(8192)


def test_a_dump_written_by_another_host_is_neither_imported_nor_erased(
    fake_root: Paths,
) -> None:
    write(fake_root.hostname, "thishost\n")
    image = device_with_stream(fake_root, content=kdump_file_of(b"otherhost"))
    before = image.read_bytes()
    with pytest.raises(raw_import.UnusableStream, match="written by host 'otherhost'"):
        raw_import.import_raw_dump(fake_root, "/dev/kdump", messages=RecordedMessages(), now=WHEN)
    assert image.read_bytes() == before
    assert not fake_root.var_crash.exists()
    assert len(list((fake_root.state_dir / raw_import.SET_ASIDE_DIR).iterdir())) == 1


def test_a_dump_of_this_host_is_imported(fake_root: Paths, programs: ProgramStub) -> None:
    write(fake_root.hostname, "thishost\n")
    content = kdump_file_of(b"ThisHost.example.com")
    assert raw_import.dump_nodename(content) == "ThisHost.example.com"
    device_with_stream(fake_root, content=content)
    programs.expect_call("sh", fake_makedumpfile)
    programs.expect_call("makedumpfile", dmesg_ok)
    result = raw_import.import_raw_dump(
        fake_root, "/dev/kdump", messages=RecordedMessages(), now=WHEN
    )
    assert result is not None

"""Filesystem target discovery against a fake root: mountinfo, /dev/disk links, fstab."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdumpd.errors import ConfigError
from kdumpd.mountinfo import parse_mountinfo
from kdumpd.paths import Paths
from kdumpd.targets import fs
from tests.conftest import ProgramStub, write

ROOT_UUID = "11111111-2222-3333-4444-555555555555"
VAR_UUID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
DATA_UUID = "99999999-8888-7777-6666-555555555555"

MOUNTINFO = """\
22 1 0:21 / /proc rw,relatime - proc proc rw
25 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw,errors=remount-ro
30 25 254:2 / /var ro,noatime,nofail - xfs /dev/vda2 rw,attr2,inode64
31 25 254:3 / /data rw,relatime - ext4 /dev/vdb1 rw
32 25 254:3 /crash /srv/dumps rw,relatime - ext4 /dev/vdb1 rw
33 25 254:1 /home/dumps /mnt/bind\\040dir rw,relatime - ext4 /dev/vda1 rw,errors=remount-ro
"""


def link(paths: Paths, name: str, target: str) -> None:
    path = paths.under_root(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def host(paths: Paths, mountinfo: str = MOUNTINFO) -> None:
    write(paths.proc_mounts, mountinfo)
    for dev in ("vda1", "vda2", "vdb1", "vdc1"):
        write(paths.under_root(f"/dev/{dev}"), "")
    link(paths, f"/dev/disk/by-uuid/{ROOT_UUID}", "../../vda1")
    link(paths, f"/dev/disk/by-uuid/{VAR_UUID}", "../../vda2")
    link(paths, f"/dev/disk/by-uuid/{DATA_UUID}", "../../vdb1")
    link(paths, "/dev/disk/by-id/virtio-data-part1", "../../vdb1")
    link(paths, "/dev/disk/by-label/my\\x20dumps", "../../vdc1")
    link(paths, "/dev/disk/by-id/virtio-spare-part1", "../../vdc1")
    for directory in ("/var/crash", "/data/crash/kdump", "/home/dumps/x", "/srv/dumps"):
        paths.under_root(directory).mkdir(parents=True, exist_ok=True)


def test_parse_mountinfo_unescapes_and_reads_both_option_sets() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    bind = entries[-1]
    assert bind.mountpoint == "/mnt/bind dir"
    assert bind.root == "/home/dumps"
    assert entries[2].options == ("ro", "noatime", "nofail", "rw", "attr2", "inode64")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("ro", "noatime"), "rw,noatime"),
        (("noauto", "nofail", "nobootwait"), "defaults"),
        ((), "defaults"),
        (("rw", "ro", "errors=remount-ro"), "rw,errors=remount-ro"),
    ],
)
def test_rewrite_options(options: tuple[str, ...], expected: str) -> None:
    assert fs.rewrite_options(options) == expected


def test_persistent_name_prefers_uuid_then_id_then_label(fake_root: Paths) -> None:
    host(fake_root)
    assert fs.persistent_name(fake_root, "/dev/vdb1") == f"/dev/disk/by-uuid/{DATA_UUID}"
    assert fs.persistent_name(fake_root, "/dev/vdc1") == "/dev/disk/by-id/virtio-spare-part1"
    # nothing points at it: keep the kernel name
    write(fake_root.under_root("/dev/sdz"), "")
    assert fs.persistent_name(fake_root, "/dev/sdz") == "/dev/sdz"


def test_label_spec_with_blank_finds_udev_escaped_link(fake_root: Paths) -> None:
    host(fake_root)
    assert fs.device_for_spec(fake_root, 'LABEL="my dumps"') == "/dev/disk/by-label/my\\x20dumps"
    assert fs.device_for_spec(fake_root, "UUID=nope") is None


def test_capture_mountpoint() -> None:
    assert fs.capture_mountpoint("/") == "/sysroot"
    assert fs.capture_mountpoint("/var") == "/kdumproot/var"
    assert fs.capture_mountpoint(None) == "/kdumproot"


def test_default_target_on_separate_var(fake_root: Paths) -> None:
    host(fake_root)
    target = fs.default_target(fake_root, "/var//crash/", where=("/etc/kdump.conf", 3))
    assert target.mount.device == f"/dev/disk/by-uuid/{VAR_UUID}"
    assert target.mount.mountpoint == "/kdumproot/var"
    assert target.mount.fstype == "xfs"
    assert target.mount.options == "rw,noatime,attr2,inode64"
    assert target.path == "/crash"


def test_default_target_bind_mount_goes_to_the_real_mount(fake_root: Paths) -> None:
    host(fake_root)
    # /srv/dumps shows /crash of the fs that is mounted whole at /data
    target = fs.default_target(fake_root, "/srv/dumps", where=("/etc/kdump.conf", 1))
    assert target.mount.mountpoint == "/kdumproot/data"
    assert target.path == "/crash"
    assert target.mount.device == f"/dev/disk/by-uuid/{DATA_UUID}"


def test_default_target_bind_of_root_directory_goes_to_sysroot(fake_root: Paths) -> None:
    host(fake_root)
    fake_root.under_root("/mnt/bind dir/x").mkdir(parents=True)
    target = fs.default_target(fake_root, "/mnt/bind dir/x", where=("/etc/kdump.conf", 1))
    assert target.mount.mountpoint == "/sysroot"
    assert target.path == "/home/dumps/x"


def test_default_target_missing_path_names_the_line(fake_root: Paths) -> None:
    host(fake_root)
    with pytest.raises(ConfigError) as caught:
        fs.default_target(fake_root, "/nowhere", where=("/etc/kdump.conf", 7))
    assert str(caught.value).startswith("/etc/kdump.conf:7: Dump path /nowhere does not exist.")


def test_device_stack_modules_from_sysfs(fake_root: Paths) -> None:
    link(fake_root, "/dev/mapper/vg-dump", "../dm-3")
    write(fake_root.under_root("/dev/dm-3"), "")
    write(fake_root.under_root("/sys/class/block/dm-3/dm/uuid"), "LVM-abcdef\n")
    assert fs.device_stack_modules(fake_root, "/dev/mapper/vg-dump") == ("dm", "lvm")
    assert fs.device_stack_modules(fake_root, "/dev/vda1") == ()


def test_explicit_target_unmounted_uses_fstab_options(
    fake_root: Paths, programs: ProgramStub
) -> None:
    host(fake_root)
    write(
        fake_root.fstab, f"UUID={ROOT_UUID} / ext4 defaults 0 1\n/dev/vdc1 /x ext4 noauto,ro 0 2\n"
    )
    programs.expect("blkid", stdout="ext4\n")
    target = fs.explicit_target(
        fake_root, "ext4", "/dev/vdc1", "/var/crash", where=("/etc/kdump.conf", 2)
    )
    assert target.mount.mountpoint == "/kdumproot"
    assert target.mount.options == "rw"
    assert target.mount.device == "/dev/disk/by-id/virtio-spare-part1"
    assert programs.calls == [("blkid", "-o", "value", "-s", "TYPE", "/dev/vdc1")]
    assert Path(target.path) == Path("/var/crash")

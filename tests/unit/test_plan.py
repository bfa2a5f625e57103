"""compile_full: kdump.conf + host facts (fake root) -> CapturePlan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdumpd.config.kdumpconf import KdumpConfig, parse_kdump_conf
from kdumpd.contract.plan import CapturePlan, FsTarget
from kdumpd.errors import ConfigError
from kdumpd.paths import Paths
from kdumpd.planner import compile_full
from tests.conftest import ProgramStub, write

KVER = "6.1.0-28-amd64"
ROOT_UUID = "11111111-2222-3333-4444-555555555555"
VAR_UUID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
DUMP_UUID = "0d0d0d0d-1111-2222-3333-444444444444"


def conf(text: str) -> KdumpConfig:
    return parse_kdump_conf(text).config


def link(paths: Paths, name: str, target: str) -> None:
    path = paths.under_root(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def host(paths: Paths, *extra_mounts: str) -> None:
    lines = [
        "22 1 0:21 / /proc rw,relatime - proc proc rw",
        "25 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw,errors=remount-ro",
        *extra_mounts,
    ]
    write(paths.proc_mounts, "\n".join(lines) + "\n")
    for dev in ("vda1", "vda2", "vdb1"):
        write(paths.under_root(f"/dev/{dev}"), "")
    link(paths, f"/dev/disk/by-uuid/{ROOT_UUID}", "../../vda1")
    link(paths, f"/dev/disk/by-uuid/{VAR_UUID}", "../../vda2")
    link(paths, f"/dev/disk/by-uuid/{DUMP_UUID}", "../../vdb1")
    paths.under_root("/var/crash").mkdir(parents=True)


def compile_plan(config: KdumpConfig, paths: Paths, *, kernel_release: str) -> CapturePlan:
    return compile_full(config, paths, kernel_release=kernel_release).plan


def fs_target(plan: CapturePlan) -> FsTarget:
    assert isinstance(plan.target, FsTarget)
    return plan.target


def executable(path: Path, mode: int = 0o755) -> None:
    write(path, "#!/bin/sh\n")
    path.chmod(mode)


def test_default_path_on_root_fs(fake_root: Paths) -> None:
    host(fake_root)
    plan = compile_plan(conf("path /var/crash\n"), fake_root, kernel_release=KVER)
    mount = fs_target(plan).mount
    assert mount is not None
    assert (mount.device, mount.mountpoint, mount.fstype) == (
        f"/dev/disk/by-uuid/{ROOT_UUID}",
        "/sysroot",
        "ext4",
    )
    assert mount.options == "rw,relatime,errors=remount-ro"
    assert fs_target(plan).path == "/var/crash"
    assert plan.core_collector == ("makedumpfile", "-l", "--message-level", "7", "-d", "31")
    assert plan.kernel_release == KVER
    # the JSON contract still round-trips
    assert CapturePlan.from_dict(plan.to_dict()) == plan


def test_default_path_on_separate_var(fake_root: Paths) -> None:
    host(fake_root, "30 25 254:2 / /var ro,nofail - xfs /dev/vda2 rw,inode64")
    plan = compile_plan(KdumpConfig(), fake_root, kernel_release=KVER)
    mount = fs_target(plan).mount
    assert mount is not None
    assert mount.mountpoint == "/kdumproot/var"
    assert mount.device == f"/dev/disk/by-uuid/{VAR_UUID}"
    assert mount.options == "rw,inode64"
    assert fs_target(plan).path == "/crash"


def test_default_path_through_bind_mount(fake_root: Paths) -> None:
    host(
        fake_root,
        "30 25 254:2 / /srv rw - ext4 /dev/vda2 rw",
        "31 25 254:2 /dumps/kdump /var/crash rw - ext4 /dev/vda2 rw",
    )
    plan = compile_plan(KdumpConfig(), fake_root, kernel_release=KVER)
    mount = fs_target(plan).mount
    assert mount is not None
    assert mount.mountpoint == "/kdumproot/srv"
    assert fs_target(plan).path == "/dumps/kdump"


def test_explicit_uuid_target_mounted(fake_root: Paths) -> None:
    host(fake_root, "40 25 254:17 / /dumps rw,noauto - ext4 /dev/vdb1 rw")
    fake_root.under_root("/dumps/crash").mkdir(parents=True)
    plan = compile_plan(
        conf(f"ext4 UUID={DUMP_UUID}\npath /crash\n"), fake_root, kernel_release=KVER
    )
    mount = fs_target(plan).mount
    assert mount is not None
    assert mount.device == f"/dev/disk/by-uuid/{DUMP_UUID}"
    assert mount.mountpoint == "/kdumproot/dumps"
    assert mount.options == "rw"
    assert fs_target(plan).path == "/crash"


def test_explicit_uuid_target_not_mounted(fake_root: Paths, programs: ProgramStub) -> None:
    host(fake_root)
    programs.expect("blkid", stdout="ext4\n")
    plan = compile_plan(conf(f"ext4 UUID={DUMP_UUID}\n"), fake_root, kernel_release=KVER)
    mount = fs_target(plan).mount
    assert mount is not None
    assert (mount.mountpoint, mount.options) == ("/kdumproot", "defaults")
    assert fs_target(plan).path == "/var/crash"


def test_wrong_fstype_names_file_and_line(fake_root: Paths) -> None:
    host(fake_root, "40 25 254:17 / /dumps rw - ext4 /dev/vdb1 rw")
    config = conf(f"# dump disk\npath /\nxfs UUID={DUMP_UUID}\n")
    with pytest.raises(ConfigError) as caught:
        compile_plan(config, fake_root, kernel_release=KVER)
    assert str(caught.value) == (
        f'/etc/kdump.conf:3: "UUID={DUMP_UUID}" have a wrong type config "xfs", expected "ext4"'
    )


def test_missing_dump_path_in_target(fake_root: Paths) -> None:
    host(fake_root, "40 25 254:17 / /dumps rw - ext4 /dev/vdb1 rw")
    with pytest.raises(ConfigError) as caught:
        compile_plan(conf("ext4 /dev/vdb1\npath /nope\n"), fake_root, kernel_release=KVER)
    assert "/etc/kdump.conf:1:" in str(caught.value)
    assert 'Dump path "/nope" does not exist in dump target "/dev/vdb1"' in str(caught.value)


def test_hooks_in_lexical_order_and_non_executables_warned(fake_root: Paths) -> None:
    host(fake_root)
    pre = fake_root.hooks_dir / "pre.d"
    executable(pre / "20-b")
    executable(pre / "10-a")
    executable(pre / "9-c")
    executable(pre / "15-off", mode=0o644)
    executable(fake_root.hooks_dir / "emergency.d" / "x")
    compiled = compile_full(
        conf("kdump_pre /usr/local/bin/pre\nkdump_post /usr/local/bin/post\n"),
        fake_root,
        kernel_release=KVER,
    )
    plan = compiled.plan
    assert plan.pre_d == ("/etc/kdump/pre.d/10-a", "/etc/kdump/pre.d/20-b", "/etc/kdump/pre.d/9-c")
    assert plan.post_d == ()
    assert plan.emergency_d == ("/etc/kdump/emergency.d/x",)
    assert (plan.kdump_pre, plan.kdump_post) == ("/usr/local/bin/pre", "/usr/local/bin/post")
    assert [str(w).split(":")[0] for w in compiled.warnings] == ["/etc/kdump/pre.d/15-off"]
    assert "not executable" in str(compiled.warnings[0])


def test_dump_to_rootfs_fills_rootfs(fake_root: Paths) -> None:
    host(fake_root, "30 25 254:2 / /var rw - xfs /dev/vda2 rw")
    compiled = compile_full(conf("failure_action dump_to_rootfs\n"), fake_root, kernel_release=KVER)
    plan = compiled.plan
    assert plan.rootfs is not None
    assert plan.rootfs.mountpoint == "/sysroot"
    assert plan.rootfs.device == f"/dev/disk/by-uuid/{ROOT_UUID}"
    assert plan.rootfs_path == "/var/crash"
    assert plan.failure_action == "dump_to_rootfs"
    assert compiled.devices == ("/dev/vda2", "/dev/vda1")


def test_rootfs_absent_without_dump_to_rootfs(fake_root: Paths) -> None:
    host(fake_root)
    assert compile_plan(KdumpConfig(), fake_root, kernel_release=KVER).rootfs is None


def test_unsupported_target_kind_names_line(fake_root: Paths) -> None:
    host(fake_root)
    config = conf("path /x\nnfs server:/export\n")
    with pytest.raises(ConfigError) as caught:
        compile_plan(config, fake_root, kernel_release=KVER)
    assert str(caught.value).startswith("/etc/kdump.conf:2: nfs dump targets are not supported")

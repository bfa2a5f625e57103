"""Boot configuration editing over fake trees: GRUB's defaults, BLS entries, /etc/kernel/cmdline."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from kdumpd import bootloader, proc
from kdumpd.bootloader import BLS, GRUB, KERNEL_CMDLINE, BootConfigError, Change
from kdumpd.paths import Paths
from tests.conftest import ProgramStub, write

DEBIAN_GRUB = """\
# If you change this file, run 'update-grub' afterwards to update
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=ttyS0,115200 net.ifnames=0"
"""

BLS_ENTRY = """\
title Fedora Linux (6.8.5-301.fc40.x86_64) 40 (Server Edition)
version 6.8.5-301.fc40.x86_64
linux /vmlinuz-6.8.5-301.fc40.x86_64
initrd /initramfs-6.8.5-301.fc40.x86_64.img
options root=UUID=0b1c rd.lvm.lv=fedora/root rhgb quiet
grub_users $grub_users
grub_arg --unrestricted
grub_class fedora
"""


def executable(path: Path) -> Path:
    write(path, "#!/bin/sh\n")
    path.chmod(0o755)
    return path


def grub_tree(paths: Paths, text: str = DEBIAN_GRUB) -> Paths:
    write(paths.under_root("/etc/default/grub"), text)
    executable(paths.under_root("/usr/sbin/update-grub"))
    return paths


def expect_update_grub(programs: ProgramStub) -> None:
    # Under a tree that is not /, update-grub runs chrooted into it.
    programs.expect("chroot")


# -- words ----------------------------------------------------------------------------


def test_set_param_keeps_every_other_word_in_place() -> None:
    words = ["root=/dev/vda", "crashkernel=128M", "quiet", "crashkernel=1G"]
    assert bootloader.set_param(words, "crashkernel", "256M") == [
        "root=/dev/vda",
        "crashkernel=256M",
        "quiet",
    ]
    assert bootloader.set_param(["quiet"], "crashkernel", "256M") == ["quiet", "crashkernel=256M"]
    assert bootloader.set_param(words, "crashkernel", None) == ["root=/dev/vda", "quiet"]
    # A parameter whose name only starts the same is another parameter.
    assert bootloader.set_param(["crashkernel_x=1"], "crashkernel", None) == ["crashkernel_x=1"]


def test_param_value_is_the_last_one_as_the_kernel_reads_it() -> None:
    assert bootloader.param_value(["crashkernel=1G", "crashkernel=2G"], "crashkernel") == "2G"
    assert bootloader.param_value(["crashkernel"], "crashkernel") is None


@pytest.mark.parametrize("value", ["256M; rm -rf /", "$(reboot)", "1G\nX=1", 'a"b', ""])
def test_values_that_are_not_sizes_are_refused(value: str) -> None:
    with pytest.raises(BootConfigError, match="not a valid value"):
        bootloader.check_value("crashkernel", value)


# -- Debian GRUB ----------------------------------------------------------------------


def test_grub_without_crashkernel(fake_root: Paths) -> None:
    grub_tree(fake_root)
    [location] = bootloader.locations(fake_root)
    assert location.kind == GRUB
    assert location.value("crashkernel") is None
    assert location.file == bootloader.drop_in_path(fake_root)


def test_grub_setting_writes_the_drop_in_and_runs_update_grub(
    fake_root: Paths, programs: ProgramStub
) -> None:
    grub_tree(fake_root)
    expect_update_grub(programs)
    [location] = bootloader.locations(fake_root)
    done = bootloader.apply(fake_root, [Change(location, "crashkernel", None, "2G-64G:256M")])
    assert [c.new for c in done] == ["2G-64G:256M"]
    assert programs.calls == [("chroot", str(fake_root.root), "update-grub")]
    drop_in = bootloader.drop_in_path(fake_root)
    assert oct(drop_in.stat().st_mode & 0o777) == "0o644"
    # The administrator's file is untouched.
    assert fake_root.under_root("/etc/default/grub").read_text() == DEBIAN_GRUB
    [after] = bootloader.locations(fake_root)
    assert after.value("crashkernel") == "2G-64G:256M"
    assert after.source["crashkernel"] == drop_in
    assert bootloader.read_record(fake_root) == {
        (GRUB, "/etc/default/grub.d/kdumpd.cfg", "crashkernel"): "2G-64G:256M"
    }


def test_grub_admin_value_is_read_from_its_file(fake_root: Paths) -> None:
    grub_tree(fake_root, DEBIAN_GRUB.replace('"quiet"', '"quiet crashkernel=384M"'))
    write(
        fake_root.under_root("/etc/default/grub.d/50-local.cfg"),
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX mitigations=off"\n',
    )
    [location] = bootloader.locations(fake_root)
    assert location.value("crashkernel") == "384M"
    assert location.source["crashkernel"] == fake_root.under_root("/etc/default/grub")


def test_grub_admin_value_wins_over_the_drop_in(fake_root: Paths) -> None:
    grub_tree(fake_root, DEBIAN_GRUB.replace('"quiet"', '"quiet crashkernel=384M"'))
    write(bootloader.drop_in_path(fake_root), bootloader.render_drop_in({"crashkernel": "256M"}))
    [location] = bootloader.locations(fake_root)
    assert location.value("crashkernel") == "384M"


def test_grub_explicit_change_of_an_admin_value_edits_only_that_word(
    fake_root: Paths, programs: ProgramStub
) -> None:
    text = DEBIAN_GRUB.replace('"quiet"', '"quiet crashkernel=384M splash"')
    grub_tree(fake_root, text)
    expect_update_grub(programs)
    [location] = bootloader.locations(fake_root)
    bootloader.apply(fake_root, [Change(location, "crashkernel", "384M", "512M")])
    after = fake_root.under_root("/etc/default/grub").read_text()
    assert after == text.replace("crashkernel=384M", "crashkernel=512M")
    assert not bootloader.drop_in_path(fake_root).exists()
    # The administrator's file holds it: not recorded as kdumpd's.
    assert bootloader.read_record(fake_root) == {}


def test_grub_removing_kdumpds_value_deletes_the_drop_in(
    fake_root: Paths, programs: ProgramStub
) -> None:
    grub_tree(fake_root)
    expect_update_grub(programs)
    [location] = bootloader.locations(fake_root)
    bootloader.apply(fake_root, [Change(location, "crashkernel", None, "256M")])
    [location] = bootloader.locations(fake_root)
    bootloader.apply(fake_root, [Change(location, "crashkernel", "256M", None)])
    assert not bootloader.drop_in_path(fake_root).exists()
    assert bootloader.read_record(fake_root) == {}
    assert len(programs.calls) == 2


def test_grub_unparseable_assignment_names_file_and_line(fake_root: Paths) -> None:
    grub_tree(fake_root, 'GRUB_CMDLINE_LINUX="unterminated\n')
    with pytest.raises(BootConfigError, match=r"/etc/default/grub:1: cannot parse"):
        bootloader.locations(fake_root)


def test_update_grub_failure_says_what_to_do(fake_root: Paths, programs: ProgramStub) -> None:
    grub_tree(fake_root)
    programs.expect("chroot", returncode=1, stderr="grub-probe: error: cannot find a device")
    [location] = bootloader.locations(fake_root)
    with pytest.raises(BootConfigError, match="run update-grub"):
        bootloader.apply(fake_root, [Change(location, "crashkernel", None, "256M")])


def test_no_grub_without_update_grub(fake_root: Paths) -> None:
    write(fake_root.under_root("/etc/default/grub"), DEBIAN_GRUB)
    assert bootloader.locations(fake_root) == []


# -- BLS entries ----------------------------------------------------------------------


def bls_tree(paths: Paths, *versions: str) -> list[Path]:
    entries = []
    for version in versions:
        text = BLS_ENTRY.replace("6.8.5-301.fc40.x86_64", version)
        entries.append(write(paths.boot / "loader" / "entries" / f"abc-{version}.conf", text))
    return entries


def test_bls_entries_are_edited_without_grubby(fake_root: Paths) -> None:
    [entry] = bls_tree(fake_root, "6.8.5-301.fc40.x86_64")
    write(fake_root.under_root("/etc/default/grub"), DEBIAN_GRUB)  # Fedora has one too
    [location] = bootloader.locations(fake_root)
    assert (location.kind, location.version) == (BLS, "6.8.5-301.fc40.x86_64")
    assert location.kernel == "/vmlinuz-6.8.5-301.fc40.x86_64"
    bootloader.apply(fake_root, [Change(location, "crashkernel", None, "1G-4G:192M")])
    expected = BLS_ENTRY.replace("rhgb quiet", "rhgb quiet crashkernel=1G-4G:192M")
    assert entry.read_text() == expected
    [location] = bootloader.locations(fake_root)
    bootloader.apply(fake_root, [Change(location, "crashkernel", "1G-4G:192M", "2G-64G:256M")])
    assert entry.read_text() == expected.replace("1G-4G:192M", "2G-64G:256M")
    assert bootloader.read_record(fake_root) == {
        (BLS, f"/boot/loader/entries/{entry.name}", "crashkernel"): "2G-64G:256M"
    }


def test_bls_entry_without_options_line_gets_one(fake_root: Paths) -> None:
    entry = write(fake_root.boot / "loader/entries/x.conf", "title X\nlinux /vmlinuz-1\n")
    [location] = bootloader.locations(fake_root)
    bootloader.apply(fake_root, [Change(location, "crashkernel", None, "256M")])
    assert entry.read_text() == "title X\nlinux /vmlinuz-1\noptions crashkernel=256M\n"


def test_bls_through_grubby_when_installed(fake_root: Paths, programs: ProgramStub) -> None:
    bls_tree(fake_root, "6.8.5-301.fc40.x86_64")
    executable(fake_root.under_root("/usr/sbin/grubby"))
    seen: list[Sequence[str]] = []

    def grubby(argv: Sequence[str]) -> proc.Completed:
        seen.append(argv)
        return proc.Completed(tuple(argv), 0, "", "")

    programs.expect_call("grubby", grubby)
    [location] = bootloader.locations(fake_root)
    bootloader.apply(fake_root, [Change(location, "crashkernel", None, "256M")])
    assert list(seen[0]) == [
        "/usr/sbin/grubby",
        "--update-kernel=/boot/vmlinuz-6.8.5-301.fc40.x86_64",
        f"--bls-directory={fake_root.boot / 'loader/entries'}",
        "--args=crashkernel=256M",
    ]


# -- /etc/kernel/cmdline --------------------------------------------------------------


def test_kernel_cmdline_keeps_its_other_parameters(fake_root: Paths) -> None:
    path = write(fake_root.under_root("/etc/kernel/cmdline"), "root=UUID=1 ro quiet\n")
    [location] = bootloader.locations(fake_root)
    assert location.kind == KERNEL_CMDLINE
    bootloader.apply(fake_root, [Change(location, "crashkernel", None, "256M")])
    assert path.read_text() == "root=UUID=1 ro quiet crashkernel=256M\n"
    [location] = bootloader.locations(fake_root)
    bootloader.apply(fake_root, [Change(location, "crashkernel", "256M", None)])
    assert path.read_text() == "root=UUID=1 ro quiet\n"


def test_no_change_when_old_equals_new(fake_root: Paths) -> None:
    path = write(fake_root.under_root("/etc/kernel/cmdline"), "ro crashkernel=256M\n")
    before = os.stat(path).st_mtime_ns
    [location] = bootloader.locations(fake_root)
    assert bootloader.apply(fake_root, [Change(location, "crashkernel", "256M", "256M")]) == []
    assert os.stat(path).st_mtime_ns == before
    assert not bootloader.record_path(fake_root).exists()


def test_a_file_that_cannot_be_written_is_an_error_not_a_traceback(fake_root: Paths) -> None:
    grub_tree(fake_root)
    # /etc/default/grub.d is a file here, so the drop-in cannot be created.
    write(fake_root.under_root("/etc/default/grub.d"), "not a directory\n")
    [location] = bootloader.locations(fake_root)
    with pytest.raises(BootConfigError, match=r"cannot change /etc/default/grub.d.*as root"):
        bootloader.apply(fake_root, [Change(location, "crashkernel", None, "256M")])

"""reset-crashkernel, the automatic reset, kernel hooks and kdumpctl test, over fake trees."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdumpd import bootloader, cli, lifecycle, manager
from kdumpd.config import load_kdump_conf
from kdumpd.image import manifest
from kdumpd.messages import RecordedMessages
from kdumpd.paths import Paths
from tests.conftest import ProgramStub, write
from tests.unit.test_bootloader import BLS_ENTRY, DEBIAN_GRUB, bls_tree, grub_tree

X86 = os.uname_result(("Linux", "host", "6.1.0-28-amd64", "#1 SMP", "x86_64"))
PPC = os.uname_result(("Linux", "host", "6.1.0-28-powerpc64le", "#1 SMP", "ppc64le"))
DEFAULT = "2G-64G:256M,64G-:512M"  # kdump-utils v1.0.61, x86_64
IOMEM_4G = "00001000-0009ffff : System RAM\n00100000-ffffffff : System RAM\n"
BOOT_ID = "5b1e0c4e-0000-4000-8000-000000000001"


@pytest.fixture
def machine(fake_root: Paths, programs: ProgramStub) -> Paths:
    """A 4 GiB x86_64 machine with kdumpd.service enabled (no SME/SEV in its kernel log)."""
    programs.expect("journalctl", stdout="kernel: Linux version 6.1.0-28-amd64\n")
    write(fake_root.proc_iomem, IOMEM_4G)
    write(fake_root.kdump_conf, "auto_reset_crashkernel yes\npath /var/crash\n")
    enable(fake_root)
    return fake_root


def enable(paths: Paths) -> None:
    wants = paths.under_root("/etc/systemd/system/multi-user.target.wants")
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "kdumpd.service").symlink_to("/lib/systemd/system/kdumpd.service")


def reset(paths: Paths, **options: Any) -> tuple[lifecycle.ResetResult, RecordedMessages]:
    messages = RecordedMessages()
    result = lifecycle.reset_crashkernel(paths, messages, machine=X86, **options)
    return result, messages


def auto(paths: Paths, kernel_release: str | None = None) -> tuple[list[Any], RecordedMessages]:
    messages = RecordedMessages()
    done = lifecycle.auto_reset(paths, messages, machine=X86, kernel_release=kernel_release)
    return done, messages


def texts(messages: RecordedMessages) -> list[str]:
    return [text for _, text in messages.entries]


# -- reset-crashkernel ----------------------------------------------------------------


def test_reset_on_debian_grub_is_idempotent(machine: Paths, programs: ProgramStub) -> None:
    grub_tree(machine)
    programs.expect("chroot")
    result, messages = reset(machine)
    assert [(c.name, c.old, c.new) for c in result.changes] == [("crashkernel", None, DEFAULT)]
    assert texts(messages) == [
        f"Updated crashkernel={DEFAULT} for /etc/default/grub.d/kdumpd.cfg "
        "(every kernel GRUB boots).",
        "Ran update-grub: /boot/grub/grub.cfg has the new command line.",
        lifecycle.REBOOT_NOTE,
    ]
    again, messages = reset(machine)
    assert not again.changed
    assert texts(messages) == [
        "No need to update crashkernel value for /etc/default/grub.d/kdumpd.cfg "
        "(every kernel GRUB boots)"
    ]
    assert [call[0] for call in programs.calls if call[0] != "journalctl"] == ["chroot"]


def test_reset_default_touches_only_the_default_kernels_entries(machine: Paths) -> None:
    running, other = bls_tree(machine, X86.release, "6.1.0-20-amd64")
    result, _ = reset(machine)
    assert [c.location.file for c in result.changes] == [running]
    assert f"crashkernel={DEFAULT}" in running.read_text()
    assert "crashkernel" not in other.read_text()
    result, _ = reset(machine, kernel="ALL")
    assert [c.location.file for c in result.changes] == [other]


def test_reset_kernel_path_selects_its_entry(machine: Paths) -> None:
    _, other = bls_tree(machine, X86.release, "6.1.0-20-amd64")
    write(machine.boot / "vmlinuz-6.1.0-20-amd64", "kernel")
    result, _ = reset(machine, kernel="/boot/vmlinuz-6.1.0-20-amd64")
    assert [c.location.file for c in result.changes] == [other]


def test_reset_rejects_a_kernel_that_is_not_there(machine: Paths) -> None:
    bls_tree(machine, X86.release)
    with pytest.raises(lifecycle.ResetError, match="Invalid --kernel=/boot/nope"):
        reset(machine, kernel="/boot/nope")


def test_reset_without_any_boot_configuration_says_so(machine: Paths) -> None:
    with pytest.raises(lifecycle.ResetError, match="Unable to update kernel command line"):
        reset(machine)


def test_reset_fadump_only_on_power(machine: Paths) -> None:
    bls_tree(machine, X86.release)
    with pytest.raises(lifecycle.ResetError, match="Option --fadump only valid on PPC"):
        reset(machine, fadump="on")


def test_reset_fadump_on_power_sets_both_parameters(fake_root: Paths) -> None:
    # ppc64le's default depends on the capture CPUs, not on the kernel log.
    write(fake_root.proc_iomem, "00000000-1ffffffff : System RAM\n")  # 8 GiB
    [entry] = bls_tree(fake_root, PPC.release)
    messages = RecordedMessages()
    lifecycle.reset_crashkernel(fake_root, messages, machine=PPC, fadump="on")
    options = next(line for line in entry.read_text().splitlines() if line.startswith("options"))
    assert "fadump=on" in options.split()
    assert "rhgb" in options.split()
    value = bootloader.param_value(options.split(), "crashkernel")
    assert value is not None and value != DEFAULT
    messages = RecordedMessages()
    lifecycle.reset_crashkernel(fake_root, messages, machine=PPC, fadump="off")
    assert "fadump=" not in entry.read_text()


def test_reset_warns_when_the_default_reserves_nothing(
    fake_root: Paths, programs: ProgramStub
) -> None:
    programs.expect("journalctl", stdout="")
    write(fake_root.proc_iomem, "00001000-3fffffff : System RAM\n")  # 1 GiB
    bls_tree(fake_root, X86.release)
    _, messages = reset(fake_root)
    assert any("No memory will be reserved" in t for t in texts(messages))


def test_reset_changes_an_admin_grub_value_in_its_own_file(
    machine: Paths, programs: ProgramStub
) -> None:
    grub_tree(machine, DEBIAN_GRUB.replace('"quiet"', '"quiet crashkernel=384M"'))
    programs.expect("chroot")
    reset(machine)
    text = machine.under_root("/etc/default/grub").read_text()
    assert f'GRUB_CMDLINE_LINUX_DEFAULT="quiet crashkernel={DEFAULT}"' in text
    assert not bootloader.drop_in_path(machine).exists()


# -- the automatic reset ----------------------------------------------------------------


def test_first_install_sets_the_default_where_none_is(
    machine: Paths, programs: ProgramStub
) -> None:
    grub_tree(machine)
    programs.expect("chroot")
    done, messages = auto(machine)
    assert [c.new for c in done] == [DEFAULT]
    assert "A reboot arms kdump" in texts(messages)[0]


def test_an_admin_value_is_never_overwritten(machine: Paths, programs: ProgramStub) -> None:
    text = DEBIAN_GRUB.replace('"quiet"', '"quiet crashkernel=384M"')
    grub_tree(machine, text)
    done, messages = auto(machine)
    assert done == []
    assert machine.under_root("/etc/default/grub").read_text() == text
    assert not bootloader.drop_in_path(machine).exists()
    assert "was not set by kdumpd; it stays" in texts(messages)[0]
    assert [call[0] for call in programs.calls if call[0] != "journalctl"] == []


def test_kdumpds_own_value_follows_a_new_default(machine: Paths, programs: ProgramStub) -> None:
    [entry] = bls_tree(machine, X86.release)
    old = "1G-4G:192M,4G-64G:256M,64G-:512M"  # the default before kdump-utils 1.0.53
    [location] = bootloader.locations(machine)
    bootloader.apply(machine, [bootloader.Change(location, "crashkernel", None, old)])
    done, _ = auto(machine)
    assert [(c.old, c.new) for c in done] == [(old, DEFAULT)]
    assert f"crashkernel={DEFAULT}" in entry.read_text()


def test_a_value_kdumpd_set_and_the_admin_changed_stays(machine: Paths) -> None:
    [entry] = bls_tree(machine, X86.release)
    [location] = bootloader.locations(machine)
    bootloader.apply(machine, [bootloader.Change(location, "crashkernel", None, "128M")])
    entry.write_text(entry.read_text().replace("crashkernel=128M", "crashkernel=300M"))
    assert auto(machine)[0] == []
    assert "crashkernel=300M" in entry.read_text()


def test_a_value_the_admin_removed_is_not_put_back(machine: Paths) -> None:
    [entry] = bls_tree(machine, X86.release)
    [location] = bootloader.locations(machine)
    bootloader.apply(machine, [bootloader.Change(location, "crashkernel", None, DEFAULT)])
    entry.write_text(BLS_ENTRY.replace("6.8.5-301.fc40.x86_64", X86.release))
    assert auto(machine)[0] == []
    assert "crashkernel" not in entry.read_text()


def test_auto_reset_no_in_kdump_conf_changes_nothing(machine: Paths) -> None:
    write(machine.kdump_conf, "auto_reset_crashkernel no\n")
    [entry] = bls_tree(machine, X86.release)
    assert auto(machine)[0] == []
    assert "crashkernel" not in entry.read_text()


def test_auto_reset_needs_the_unit_enabled(fake_root: Paths) -> None:
    write(fake_root.kdump_conf, "")
    [entry] = bls_tree(fake_root, X86.release)
    assert auto(fake_root)[0] == []
    assert "crashkernel" not in entry.read_text()


def test_installed_kernel_gets_only_its_own_entries(machine: Paths) -> None:
    old, new = bls_tree(machine, X86.release, "6.1.0-30-amd64")
    done, _ = auto(machine, kernel_release="6.1.0-30-amd64")
    assert [c.location.file for c in done] == [new]
    assert "crashkernel" not in old.read_text()


# -- kernel hooks ---------------------------------------------------------------------


def test_removed_kernel_loses_its_image_and_manifest(fake_root: Paths) -> None:
    image = write(manifest.image_path(fake_root, "6.1.0-30-amd64"), "img")
    inputs = write(manifest.manifest_path(fake_root, "6.1.0-30-amd64"), "{}")
    kept = write(manifest.image_path(fake_root, "6.1.0-28-amd64"), "img")
    messages = RecordedMessages()
    assert lifecycle.kernel_removed(fake_root, messages, "6.1.0-30-amd64") == [image, inputs]
    assert not image.exists() and not inputs.exists() and kept.exists()
    assert lifecycle.kernel_removed(fake_root, messages, "6.1.0-30-amd64") == []


def test_added_kernel_is_built_for_that_release(
    machine: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[dict[str, Any]] = []
    monkeypatch.setattr(manager, "prepare", lambda paths, messages, **kw: built.append(kw))
    messages = RecordedMessages()
    lifecycle.kernel_added(machine, messages, "6.1.0-30-amd64", machine=X86)
    assert built == [{"image": "auto", "kernel_release": "6.1.0-30-amd64"}]


def test_added_kernel_is_not_built_when_kdumpd_is_disabled(
    fake_root: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(fake_root.kdump_conf, "")
    monkeypatch.setattr(manager, "prepare", lambda *a, **kw: pytest.fail("built"))
    messages = RecordedMessages()
    lifecycle.kernel_added(fake_root, messages, "6.1.0-30-amd64", machine=X86)
    assert "not enabled" in texts(messages)[0]


def test_tool_upgrade_restarts_when_armed_and_builds_when_not(
    machine: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(manager, "restart", lambda paths, messages: calls.append("restart"))
    monkeypatch.setattr(manager, "prepare", lambda paths, messages, **kw: calls.append("build"))
    write(machine.kexec_crash_loaded, "1\n")
    lifecycle.tools_upgraded(machine, RecordedMessages())
    write(machine.kexec_crash_loaded, "0\n")
    lifecycle.tools_upgraded(machine, RecordedMessages())
    assert calls == ["restart", "build"]


# -- kdumpctl test --------------------------------------------------------------------


@pytest.fixture
def armed(machine: Paths) -> Iterator[Paths]:
    write(machine.kexec_crash_loaded, "1\n")
    write(machine.kexec_crash_size, f"{256 << 20}\n")
    write(machine.under_root("/proc/sys/kernel/random/boot_id"), BOOT_ID + "\n")
    yield machine


def test_test_refuses_when_not_operational(machine: Paths) -> None:
    write(machine.kexec_crash_loaded, "0\n")
    with pytest.raises(lifecycle.TestRefused, match="Kdump needs be operational before test"):
        lifecycle.run_test(machine, RecordedMessages(), force=True, confirm=input)


def test_test_asks_and_cancels(armed: Paths) -> None:
    messages = RecordedMessages()
    asked: list[str] = []

    def confirm(prompt: str) -> str:
        asked.append(prompt)
        return "n"

    assert lifecycle.run_test(armed, messages, force=False, confirm=confirm) is None
    assert asked and asked[0].startswith("DANGER!!!")
    assert texts(messages) == ["Operation cancelled."]
    assert not armed.under_root("/proc/sysrq-trigger").exists()
    assert not lifecycle.test_status_path(armed).exists()


def test_test_records_the_id_reloads_with_it_and_crashes(
    armed: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    reloads: list[str] = []
    monkeypatch.setattr(
        manager,
        "reload_with_append",
        lambda paths, messages, cmdline_append: reloads.append(cmdline_append),
    )
    test_id = lifecycle.run_test(
        armed,
        RecordedMessages(),
        force=True,
        confirm=input,
        clock=lambda: 1_700_000_000_000_000_042,
    )
    assert test_id == "1700000000-000000042"
    assert reloads == ["kdump_test_id=1700000000-000000042"]
    status = lifecycle.test_status_path(armed).read_text().splitlines()
    assert status[0] == "pending kdump_test_id=1700000000-000000042"
    assert json.loads(status[1])["boot_id"] == BOOT_ID
    assert armed.under_root("/proc/sysrq-trigger").read_text() == "c\n"
    # Not yet rebooted: still pending.
    assert lifecycle.last_test(armed, None).state == "pending"


def make_test_dump(paths: Paths, test_id: str, *, result: str = "success") -> Path:
    dump = paths.var_crash / "127.0.0.1-2023-11-14-22:13:25"
    write(dump / "kexec-dmesg.log", f"Command line: elfcorehdr=0x1 kdump_test_id={test_id}\n")
    write(dump / "kdumpd-metadata.json", json.dumps({"result": result}))
    write(dump / "vmcore", "core")
    return dump


def pending(paths: Paths, test_id: str) -> None:
    status = {"state": "pending", "kdump_test_id": test_id, "boot_id": "an-earlier-boot"}
    write(lifecycle.test_status_path(paths), lifecycle._status_text(status))


def test_after_the_reboot_status_finds_the_tests_dump(
    armed: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    pending(armed, "1700000000-000000042")
    make_test_dump(armed, "1700000000-000000042")
    code = cli.main(["--root", str(armed.root), "status"], uname=X86)
    err = capsys.readouterr().err.splitlines()
    assert code == 0
    assert err[0] == "kdump: Kdump is operational"
    assert err[1].startswith("kdump: Notice: Last successful vmcore creation test on 2023-11-1")
    assert err[1].endswith("(dump in /var/crash/127.0.0.1-2023-11-14-22:13:25)")
    # Resolved once: the file now says success.
    assert lifecycle.test_status_path(armed).read_text().startswith("success ")


def test_a_test_without_its_dump_failed(armed: Paths) -> None:
    pending(armed, "1700000000-000000042")
    make_test_dump(armed, "1600000000-000000001")  # an older test's dump
    config = load_kdump_conf(armed).config
    result = lifecycle.last_test(armed, config)
    assert (result.state, result.level) == ("fail", "warning")
    assert result.message.startswith("Last NOT successful vmcore creation test on")


def test_a_failed_capture_is_a_failed_test(armed: Paths) -> None:
    pending(armed, "1700000000-000000042")
    make_test_dump(armed, "1700000000-000000042", result="failure")
    assert lifecycle.last_test(armed, load_kdump_conf(armed).config).state == "fail"


def test_a_remote_target_needs_a_manual_check(armed: Paths) -> None:
    write(armed.kdump_conf, "ssh kdump@dumps.example\n")
    pending(armed, "1700000000-000000042")
    result = lifecycle.last_test(armed, load_kdump_conf(armed).config)
    assert result.state == "manual"
    assert result.message.startswith("Require manual check for vmcore creation test of")


def test_status_notification_can_be_turned_off(
    armed: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    write(armed.default_kdump, "VMCORE_CREATION_NOTIFICATION=no\n")
    assert cli.main(["--root", str(armed.root), "status"], uname=X86) == 0
    assert capsys.readouterr().err.splitlines() == ["kdump: Kdump is operational"]


# -- the command line -----------------------------------------------------------------


def test_reset_crashkernel_json(
    machine: Paths, programs: ProgramStub, capsys: pytest.CaptureFixture[str]
) -> None:
    grub_tree(machine)
    programs.expect("chroot")
    code = cli.main(["--root", str(machine.root), "reset-crashkernel", "--json"], uname=X86)
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert document["changed"] is True and document["reboot_needed"] is True
    assert document["changes"] == [
        {
            "kind": "grub",
            "file": "/etc/default/grub.d/kdumpd.cfg",
            "kernel": None,
            "parameter": "crashkernel",
            "old": None,
            "new": DEFAULT,
        }
    ]
    code = cli.main(["--root", str(machine.root), "reset-crashkernel", "--json"], uname=X86)
    assert json.loads(capsys.readouterr().out)["changed"] is False


def test_reset_crashkernel_errors_are_one_sentence(
    machine: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    bls_tree(machine, X86.release)
    code = cli.main(["--root", str(machine.root), "reset-crashkernel", "--kernel=/x"], uname=X86)
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        "kdump: Invalid --kernel=/x, please specify a valid kernel path, ALL or DEFAULT"
    ]


def test_hidden_commands_are_not_in_the_help() -> None:
    text = cli.build_parser().format_help()
    assert "_reset-crashkernel" not in text and "_kernel-installed" not in text
    assert "reset-crashkernel" in text and "test" in text

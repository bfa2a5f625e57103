"""kexec command lines and how kexec failures are reported (kdumpd.kexec)."""

from __future__ import annotations

import pytest

from kdumpd import kexec
from kdumpd.messages import RecordedMessages
from kdumpd.paths import Paths
from tests.conftest import ProgramStub, write

CMDLINE = "ro console=ttyS0 irqpoll nr_cpus=1 reset_devices"


def test_load_argv_plain() -> None:
    argv = kexec.load_argv(
        kernel="/boot/vmlinuz-6.1.0-28-amd64",
        initrd="/var/lib/kdumpd/initramfs-6.1.0-28-amd64kdump.img",
        cmdline=CMDLINE,
    )
    assert argv == [
        "kexec",
        "-p",
        f"--command-line={CMDLINE}",
        "--initrd=/var/lib/kdumpd/initramfs-6.1.0-28-amd64kdump.img",
        "/boot/vmlinuz-6.1.0-28-amd64",
    ]


def test_secure_boot_adds_file_load_flag_before_p() -> None:
    argv = kexec.load_argv(kernel="/k", initrd="/i", cmdline="x", secure_boot=True)
    assert argv[:3] == ["kexec", "-s", "-p"]


def test_kexec_args_come_first_and_are_split_like_shell() -> None:
    argv = kexec.load_argv(
        kernel="/k", initrd="/i", cmdline="x", kexec_args='--dtb="/boot/my dtb" -d'
    )
    assert argv[:4] == ["kexec", "--dtb=/boot/my dtb", "-d", "-p"]


@pytest.mark.parametrize("given", ["-s", "--kexec-file-syscall", "-d -s"])
def test_no_duplicate_file_load_flag_under_secure_boot(given: str) -> None:
    argv = kexec.load_argv(
        kernel="/k", initrd="/i", cmdline="x", kexec_args=given, secure_boot=True
    )
    assert sum(arg in ("-s", "--kexec-file-syscall") for arg in argv) == 1
    assert argv.index("-p") > max(i for i, a in enumerate(argv) if a in kexec.FILE_LOAD_FLAGS)


def test_kexec_args_as_list() -> None:
    argv = kexec.load_argv(kernel="/k", initrd="/i", cmdline="x", kexec_args=["-s"])
    assert argv[:3] == ["kexec", "-s", "-p"]


def test_command_line_with_quotes_stays_one_argument() -> None:
    line = 'ro foo="a b" c=1'
    argv = kexec.load_argv(kernel="/k", initrd="/i", cmdline=line)
    assert f"--command-line={line}" in argv


@pytest.mark.parametrize(
    ("kexec_args", "secure_boot", "expected"),
    [
        ("", False, ["kexec", "-p", "-u"]),
        ("", True, ["kexec", "-s", "-p", "-u"]),
        ("-s", False, ["kexec", "-s", "-p", "-u"]),
        ("-s", True, ["kexec", "-s", "-p", "-u"]),
        # load-only options do not leak into the unload
        ("--dt-no-old-root -d", False, ["kexec", "-p", "-u"]),
    ],
)
def test_unload_argv(kexec_args: str, secure_boot: bool, expected: list[str]) -> None:
    assert kexec.unload_argv(kexec_args=kexec_args, secure_boot=secure_boot) == expected


def test_load_runs_kexec_and_says_so(programs: ProgramStub) -> None:
    programs.expect("kexec")
    messages = RecordedMessages()
    kexec.load(
        kernel="/boot/vmlinuz-1",
        initrd="/var/lib/kdumpd/i.img",
        cmdline="a b",
        kexec_args="-s",
        secure_boot=False,
        messages=messages,
    )
    assert programs.calls == [
        (
            "kexec",
            "-s",
            "-p",
            "--command-line=a b",
            "--initrd=/var/lib/kdumpd/i.img",
            "/boot/vmlinuz-1",
        )
    ]
    assert ("info", "kexec: loaded kdump kernel") in messages.entries


def test_load_under_secure_boot_announces_file_syscall(programs: ProgramStub) -> None:
    programs.expect("kexec")
    messages = RecordedMessages()
    kexec.load(kernel="/k", initrd="/i", cmdline="x", secure_boot=True, messages=messages)
    assert messages.entries[0] == (
        "info",
        "Secure Boot is enabled. Using kexec file based syscall.",
    )


def test_load_failure_carries_stderr(programs: ProgramStub) -> None:
    programs.expect("kexec", returncode=255, stderr="Could not find a free area of memory\n")
    messages = RecordedMessages()
    with pytest.raises(kexec.KexecError) as caught:
        kexec.load(kernel="/k", initrd="/i", cmdline="x", messages=messages)
    text = str(caught.value)
    assert text.splitlines()[0] == "kexec: failed to load kdump kernel"
    assert "Could not find a free area of memory" in text
    assert ("info", "kexec: loaded kdump kernel") not in messages.entries


def test_file_load_eperm_names_lockdown_and_signature(programs: ProgramStub) -> None:
    programs.expect(
        "kexec", returncode=255, stderr="kexec_file_load failed: Operation not permitted\n"
    )
    with pytest.raises(kexec.KexecError) as caught:
        kexec.load(
            kernel="/boot/vmlinuz-1",
            initrd="/i",
            cmdline="x",
            kexec_args="-s",
            lockdown="integrity",
        )
    text = str(caught.value)
    assert "kexec_file_load failed: Operation not permitted" in text
    assert "lockdown: integrity" in text
    assert "signed" in text and "/boot/vmlinuz-1" in text


def test_legacy_load_eperm_suggests_file_syscall(programs: ProgramStub) -> None:
    programs.expect("kexec", returncode=255, stderr="kexec_load failed: Operation not permitted\n")
    with pytest.raises(kexec.KexecError) as caught:
        kexec.load(kernel="/k", initrd="/i", cmdline="x")
    assert "add -s to KEXEC_ARGS" in str(caught.value)


def test_unload_success_and_failure(programs: ProgramStub) -> None:
    programs.expect("kexec")
    messages = RecordedMessages()
    kexec.unload(kexec_args="", secure_boot=False, messages=messages)
    assert programs.calls == [("kexec", "-p", "-u")]
    assert messages.entries == [("info", "kexec: unloaded kdump kernel")]

    programs.answers.clear()
    programs.calls.clear()
    programs.expect("kexec", returncode=1, stderr="kexec unload failed: Invalid argument\n")
    with pytest.raises(kexec.KexecError, match="kexec: failed to unload kdump kernel"):
        kexec.unload(kexec_args="", secure_boot=False)
    # both syscalls were tried before giving up
    assert programs.calls == [("kexec", "-p", "-u"), ("kexec", "-s", "-p", "-u")]


def test_unload_falls_back_to_the_other_syscall(programs: ProgramStub) -> None:
    programs.expect("kexec", returncode=1, stderr="syscall kexec_file_load not available.\n")
    programs.expect("kexec")
    messages = RecordedMessages()
    kexec.unload(kexec_args="-s", secure_boot=False, messages=messages)
    assert programs.calls == [("kexec", "-s", "-p", "-u"), ("kexec", "-p", "-u")]
    assert messages.entries == [("info", "kexec: unloaded kdump kernel")]


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("none [integrity] confidentiality\n", "integrity"),
        ("[none] integrity confidentiality\n", "none"),
    ],
)
def test_lockdown_mode(fake_root: Paths, text: str, mode: str) -> None:
    write(fake_root.kernel_lockdown, text)
    assert kexec.lockdown_mode(fake_root) == mode


def test_lockdown_mode_unknown_without_securityfs(fake_root: Paths) -> None:
    assert kexec.lockdown_mode(fake_root) is None

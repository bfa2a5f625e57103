"""The ssh target's first-kernel side with a stub runner: argv, classification, waiting, keys."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from kdumpd import proc
from kdumpd.config import parse_kdump_conf
from kdumpd.config.kdumpconf import DumpTarget
from kdumpd.contract import ssh as wire
from kdumpd.errors import ConfigError
from kdumpd.messages import RecordedMessages
from kdumpd.paths import Paths
from kdumpd.targets import ssh
from tests.conftest import ProgramStub, write

DEST = ssh.SshDestination(user="root", host="10.0.0.5", port=2222)

SSH_G = """user root
hostname 10.0.0.5
port 2222
userknownhostsfile /root/.ssh/known_hosts /root/.ssh/known_hosts2
globalknownhostsfile /etc/ssh/ssh_known_hosts
"""


class Clock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run_preflight(clock: Clock, *, wait: float = 180.0) -> RecordedMessages:
    messages = RecordedMessages()
    ssh.run_preflight(
        DEST,
        identity="/root/.ssh/kdump_id_rsa",
        known_hosts="/root/.ssh/known_hosts",
        path="/var/crash",
        messages=messages,
        wait=wait,
        sleep=clock.sleep,
        clock=clock,
    )
    return messages


def test_base_argv_has_the_capture_kernel_options() -> None:
    argv = wire.ssh_base_argv(
        user="root",
        host="2001:db8::1",
        port=2222,
        identity="/etc/kdumpd/id",
        known_hosts="/etc/kdumpd/known_hosts",
        connect_timeout=7,
    )
    assert argv == [
        "ssh", "-F", "/dev/null", "-i", "/etc/kdumpd/id", "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", "UserKnownHostsFile=/etc/kdumpd/known_hosts",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=7",
        "-p", "2222", "root@2001:db8::1",
    ]  # fmt: skip
    interactive = wire.ssh_base_argv(
        user="u", host="h", identity="k", known_hosts="kh", batch=False
    )
    assert "BatchMode=yes" not in interactive
    assert interactive[-3:] == ["-p", "22", "u@h"]


def test_probe_command_quotes_the_path() -> None:
    command = ssh.probe_command("/srv/crash dumps/it's")
    assert command == (
        "set -C && mkdir -p -- '/srv/crash dumps/it'\"'\"'s' && "
        ": > '/srv/crash dumps/it'\"'\"'s'/.kdumpd-probe.$$ && "
        "rm -f -- '/srv/crash dumps/it'\"'\"'s'/.kdumpd-probe.$$"
    )


@pytest.mark.parametrize(
    ("code", "stderr", "failure"),
    [
        (0, "", None),
        (None, "", wire.SshFailure.NETWORK),
        (
            1,
            "mkdir: cannot create directory '/var/crash': Permission denied",
            wire.SshFailure.PERMISSION,
        ),
        (255, "root@h: Permission denied (publickey).", wire.SshFailure.AUTHENTICATION),
        (
            255,
            "Warning: Identity file /k not accessible: No such file or directory.",
            wire.SshFailure.AUTHENTICATION,
        ),
        (
            255,
            "No ED25519 host key is known for h and you have requested strict checking.\n"
            "Host key verification failed.",
            wire.SshFailure.HOST_KEY,
        ),
        (
            255,
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
            wire.SshFailure.HOST_KEY,
        ),
        (255, "ssh: connect to host h port 22: Connection refused", wire.SshFailure.NETWORK),
        (255, "ssh: connect to host h port 22: No route to host", wire.SshFailure.NETWORK),
        (
            255,
            "ssh: Could not resolve hostname h: Name or service not known",
            wire.SshFailure.NETWORK,
        ),
    ],
)
def test_classify(code: int | None, stderr: str, failure: wire.SshFailure | None) -> None:
    assert wire.classify(code, stderr) is failure


def test_preflight_success_runs_the_probe_once(programs: ProgramStub) -> None:
    programs.expect("ssh")
    clock = Clock()
    assert run_preflight(clock).entries == []
    assert len(programs.calls) == 1
    assert programs.calls[0][-2] == "root@10.0.0.5"
    assert programs.calls[0][-1] == ssh.probe_command("/var/crash")
    assert clock.sleeps == []


def test_preflight_waits_for_the_network_and_warns_once(programs: ProgramStub) -> None:
    for _ in range(3):
        programs.expect("ssh", stderr="ssh: connect to host x: No route to host", returncode=255)
    programs.expect("ssh")
    programs.expect("ssh")  # the last answer repeats; it must not be reached
    clock = Clock()
    messages = run_preflight(clock)
    assert messages.entries == [
        ("warning", "Network dump target is not usable, waiting for it to be ready...")
    ]
    assert clock.sleeps == [1.0, 1.0, 1.0]
    assert len(programs.calls) == 4


def test_preflight_gives_up_on_the_network_at_the_bound(programs: ProgramStub) -> None:
    programs.expect("ssh", stderr="ssh: connect to host x: Connection refused", returncode=255)
    clock = Clock()
    with pytest.raises(ssh.SshTargetError) as caught:
        run_preflight(clock, wait=5)
    assert caught.value.failure is wire.SshFailure.NETWORK
    assert str(caught.value).startswith(
        "Could not create root@10.0.0.5:/var/crash, ipaddr is not ready yet. "
        "You should check network connection. Network: cannot reach root@10.0.0.5 port 2222 "
        "to create /var/crash (ssh: connect to host x: Connection refused; tried for 5 s)"
    )
    assert len(programs.calls) == 6  # at 0, 1, ... 5 s


def test_preflight_treats_a_timeout_as_network(programs: ProgramStub) -> None:
    def hang(argv: Sequence[str]) -> proc.Completed:
        raise proc.ProgramError(argv, None, "", "", "timed out after 70 s")

    programs.expect_call("ssh", hang)
    with pytest.raises(ssh.SshTargetError) as caught:
        run_preflight(Clock(), wait=2)
    assert caught.value.failure is wire.SshFailure.NETWORK


@pytest.mark.parametrize(
    ("code", "stderr", "failure", "sentence"),
    [
        (
            1,
            "mkdir: cannot create directory '/var/crash': Read-only file system",
            wire.SshFailure.PERMISSION,
            "Could not create root@10.0.0.5:/var/crash, you should check the privilege on "
            "server side. Permission: root@10.0.0.5 could not create /var/crash (mkdir: "
            "cannot create directory '/var/crash': Read-only file system); root needs write "
            "access to /var/crash.",
        ),
        (
            255,
            "root@10.0.0.5: Permission denied (publickey).",
            wire.SshFailure.AUTHENTICATION,
            'Could not create root@10.0.0.5:/var/crash, you probably need to run "kdumpctl '
            'propagate". Authentication: root@10.0.0.5 refused the key /root/.ssh/kdump_id_rsa',
        ),
        (
            255,
            "Host key verification failed.",
            wire.SshFailure.HOST_KEY,
            'Could not create root@10.0.0.5:/var/crash, you probably need to run "kdumpctl '
            'propagate". Host key: the key of [10.0.0.5]:2222 is unknown or changed in '
            "/root/.ssh/known_hosts",
        ),
    ],
)
def test_preflight_stops_at_once_on_other_failures(
    programs: ProgramStub, code: int, stderr: str, failure: wire.SshFailure, sentence: str
) -> None:
    programs.expect("ssh", stderr=stderr, returncode=code)
    clock = Clock()
    with pytest.raises(ssh.SshTargetError) as caught:
        run_preflight(clock)
    assert caught.value.failure is failure
    assert str(caught.value).startswith(sentence)
    assert clock.sleeps == []
    assert len(programs.calls) == 1


def test_resolve_destination_reads_ssh_g(programs: ProgramStub) -> None:
    programs.expect("ssh", stdout=SSH_G)
    dest = ssh.resolve_destination(DumpTarget("ssh", "root@10.0.0.5"))
    assert dest == ssh.SshDestination(
        "root",
        "10.0.0.5",
        2222,
        ("/root/.ssh/known_hosts", "/root/.ssh/known_hosts2", "/etc/ssh/ssh_known_hosts"),
    )
    assert dest.known_hosts_name == "[10.0.0.5]:2222"
    assert programs.calls == [("ssh", "-G", "root@10.0.0.5")]


def test_resolve_destination_refuses_an_alias(programs: ProgramStub) -> None:
    programs.expect("ssh", stdout=SSH_G)
    with pytest.raises(ConfigError) as caught:
        ssh.resolve_destination(DumpTarget("ssh", "root@dumps"), line=7)
    assert str(caught.value).startswith(
        "/etc/kdump.conf:7: Invalid ssh destination root@dumps provided."
    )


def test_resolve_destination_refuses_an_option_as_host() -> None:
    with pytest.raises(ConfigError, match="Invalid ssh destination root@-oProxyCommand=x"):
        ssh.resolve_destination(DumpTarget("ssh", "root@-oProxyCommand=x"))


def ssh_config_conf() -> str:
    return "ssh root@dumphost\ncore_collector makedumpfile -F -l -d 31\n"


def test_propagate_without_ssh_target(fake_root: Paths) -> None:
    config = parse_kdump_conf("path /var/crash\n").config
    with pytest.raises(ssh.SshTargetError) as caught:
        ssh.propagate(config, fake_root, RecordedMessages())
    assert str(caught.value) == (
        "No ssh destination defined in /etc/kdump.conf.\n"
        "Please verify that /etc/kdump.conf contains 'ssh <user>@<host>' and that it is "
        "properly formatted."
    )


def test_propagate_generates_a_key_and_copies_it(fake_root: Paths, programs: ProgramStub) -> None:
    key = fake_root.under_root("/root/.ssh/kdump_id_rsa")

    def keygen(argv: Sequence[str]) -> proc.Completed:
        Path(argv[-1]).write_text("private")
        Path(argv[-1] + ".pub").write_text("ssh-rsa AAAA")
        return proc.Completed(tuple(argv), 0, "", "")

    programs.expect_call("ssh-keygen", keygen)
    programs.expect("ssh-copy-id")
    messages = RecordedMessages()
    config = parse_kdump_conf(ssh_config_conf()).config
    assert ssh.propagate(config, fake_root, messages) == key
    assert messages.entries == [
        ("info", "Generating new ssh keys... "),
        ("info", "done."),
        (
            "info",
            "/root/.ssh/kdump_id_rsa has been added to ~root/.ssh/authorized_keys on dumphost",
        ),
    ]
    assert programs.calls == [
        ("ssh-keygen", "-q", "-t", "rsa", "-N", "", "-f", str(key)),
        ("ssh-copy-id", "-i", str(key), "root@dumphost"),
    ]
    assert oct(key.parent.stat().st_mode & 0o777) == "0o700"


def test_propagate_uses_an_existing_key_and_reports_a_failed_copy(
    fake_root: Paths, programs: ProgramStub
) -> None:
    write(fake_root.under_root("/etc/kdump/id"), "private")
    programs.expect("ssh-copy-id", stderr="Permission denied", returncode=1)
    messages = RecordedMessages()
    config = parse_kdump_conf(ssh_config_conf() + "sshkey /etc/kdump/id\n").config
    with pytest.raises(ssh.SshTargetError) as caught:
        ssh.propagate(config, fake_root, messages, interactive=False, ssh_options=["-p", "2222"])
    assert str(caught.value).startswith(
        "Failed to propagate ssh key, could not transfer /etc/kdump/id to dumphost."
    )
    assert messages.entries == [("info", "Using existing keys...")]
    key = str(fake_root.under_root("/etc/kdump/id"))
    assert programs.calls == [
        ("ssh-copy-id", "-i", key, "-f", "-o", "BatchMode=yes", "-p", "2222", "root@dumphost")
    ]


def test_known_hosts_entry_collects_matching_lines(fake_root: Paths, programs: ProgramStub) -> None:
    write(fake_root.under_root("/root/.ssh/known_hosts"), "ignored by the stub\n")
    line = "[10.0.0.5]:2222 ssh-ed25519 AAAAC3Nz"
    programs.expect("ssh-keygen", stdout=f"# Host [10.0.0.5]:2222 found: line 1\n{line}\n")
    dest = ssh.SshDestination(
        "root", "10.0.0.5", 2222, ("/root/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
    )
    assert ssh.known_hosts_entry(fake_root, dest) == line + "\n"
    assert programs.calls == [
        (
            "ssh-keygen",
            "-F",
            "[10.0.0.5]:2222",
            "-f",
            str(fake_root.under_root("/root/.ssh/known_hosts")),
        )
    ]


def test_known_hosts_entry_missing_says_what_to_do(fake_root: Paths) -> None:
    with pytest.raises(ssh.SshTargetError) as caught:
        ssh.known_hosts_entry(fake_root, DEST)
    assert caught.value.failure is wire.SshFailure.HOST_KEY
    assert "Connect once with 'ssh -p 2222 root@10.0.0.5' and accept the key" in str(caught.value)


@pytest.mark.parametrize(
    ("avail", "warnings"),
    [
        ("99999999", []),
        (
            "1000",
            [
                "There might not be enough space to save a vmcore.",
                "The size of root@10.0.0.5:/var/crash should be greater than 2048 kilo bytes.",
            ],
        ),
    ],
)
def test_remote_size_check(programs: ProgramStub, avail: str, warnings: list[str]) -> None:
    programs.expect(
        "ssh",
        stdout="Filesystem 1024-blocks Used Available Capacity Mounted on\n"
        f"/dev/vdb 2000000 10 {avail} 1% /var\n",
    )
    messages = RecordedMessages()
    ssh.check_remote_size(
        DEST, identity="k", known_hosts="kh", path="/var/crash", mem_total_kib=2048,
        messages=messages,
    )  # fmt: skip
    assert messages.entries == [("warning", text) for text in warnings]
    assert programs.calls[0][-1] == "df -P -k -- /var/crash"


def test_remote_size_check_failure_only_warns(programs: ProgramStub) -> None:
    programs.expect("ssh", stderr="df: unrecognized option", returncode=1)
    messages = RecordedMessages()
    ssh.check_remote_size(
        DEST, identity="k", known_hosts="kh", path="/x", mem_total_kib=1, messages=messages
    )
    assert messages.entries == [("warning", "checking remote ssh server available size failed.")]

"""The ssh target against a real loopback sshd: preflight, failure kinds, a real transfer."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import LoopbackSshd, free_port, running_sshd

from kdumpd import proc
from kdumpd.config import parse_kdump_conf
from kdumpd.config.kdumpconf import DumpTarget
from kdumpd.contract import ssh as wire
from kdumpd.errors import ConfigError
from kdumpd.messages import RecordedMessages
from kdumpd.paths import Paths
from kdumpd.targets import ssh
from kdumpd.vmcore import flattened
from tests.support.synth import generate_core

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackSshd]:
    yield from running_sshd(tmp_path)


def destination(server: LoopbackSshd, *, port: int | None = None) -> ssh.SshDestination:
    return ssh.SshDestination(
        user=server.user,
        host=server.host,
        port=server.port if port is None else port,
        known_hosts_files=(str(server.known_hosts),),
    )


def run_preflight(
    server: LoopbackSshd,
    path: Path,
    *,
    identity: Path | None = None,
    known_hosts: Path | None = None,
    port: int | None = None,
    wait: float = 5.0,
) -> RecordedMessages:
    messages = RecordedMessages()
    ssh.run_preflight(
        destination(server, port=port),
        identity=str(identity or server.user_key),
        known_hosts=str(known_hosts or server.known_hosts),
        path=str(path),
        messages=messages,
        wait=wait,
        poll=0.2,
        connect_timeout=2,
    )
    return messages


def test_preflight_creates_the_path_and_leaves_no_probe(
    server: LoopbackSshd, tmp_path: Path
) -> None:
    path = tmp_path / "remote" / "crash"
    messages = run_preflight(server, path)
    assert path.is_dir()
    assert list(path.iterdir()) == []
    assert messages.entries == []


def test_resolve_destination_takes_the_port_from_ssh_config(server: LoopbackSshd) -> None:
    config = server.client_config()
    dest = ssh.resolve_destination(DumpTarget("ssh", server.target), ssh_config=config)
    assert (dest.host, dest.port, dest.user) == (server.host, server.port, server.user)
    assert str(server.known_hosts) in dest.known_hosts_files


def test_resolve_destination_refuses_a_host_alias(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host dumpserver\n  HostName 127.0.0.1\n")
    with pytest.raises(ConfigError) as caught:
        ssh.resolve_destination(DumpTarget("ssh", "root@dumpserver"), ssh_config=config, line=3)
    text = str(caught.value)
    assert "/etc/kdump.conf:3: Invalid ssh destination root@dumpserver provided." in text
    assert "'127.0.0.1'" in text


def test_wrong_key_is_an_authentication_failure(server: LoopbackSshd, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    with pytest.raises(ssh.SshTargetError) as caught:
        run_preflight(server, tmp_path / "crash", identity=other)
    assert caught.value.failure is wire.SshFailure.AUTHENTICATION
    assert 'you probably need to run "kdumpctl propagate"' in str(caught.value)
    assert "Permission denied" in str(caught.value)
    assert not (tmp_path / "crash").exists()


def test_unknown_host_key_is_a_host_key_failure(server: LoopbackSshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(ssh.SshTargetError) as caught:
        run_preflight(server, tmp_path / "crash", known_hosts=empty)
    assert caught.value.failure is wire.SshFailure.HOST_KEY
    assert "Host key verification failed" in str(caught.value)


def test_server_down_is_a_network_failure_after_the_bounded_wait(tmp_path: Path) -> None:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    (tmp_path / "known_hosts").write_text("")
    dest = ssh.SshDestination(user="root", host="127.0.0.1", port=free_port())
    messages = RecordedMessages()
    started = time.monotonic()
    with pytest.raises(ssh.SshTargetError) as caught:
        ssh.run_preflight(
            dest,
            identity=str(key),
            known_hosts=str(tmp_path / "known_hosts"),
            path="/var/crash",
            messages=messages,
            wait=1.5,
            poll=0.3,
            connect_timeout=1,
        )
    elapsed = time.monotonic() - started
    assert caught.value.failure is wire.SshFailure.NETWORK
    assert "ipaddr is not ready yet. You should check network connection" in str(caught.value)
    assert "Connection refused" in str(caught.value)
    assert 1.0 <= elapsed < 10
    assert messages.entries == [
        ("warning", "Network dump target is not usable, waiting for it to be ready...")
    ]


def test_unwritable_path_is_a_permission_failure(server: LoopbackSshd, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ssh.SshTargetError) as caught:
        run_preflight(server, blocker / "crash")
    assert caught.value.failure is wire.SshFailure.PERMISSION
    assert "you should check the privilege on server side" in str(caught.value)
    assert "Not a directory" in str(caught.value)


def test_known_hosts_entry_is_what_strict_checking_needs(
    server: LoopbackSshd, tmp_path: Path
) -> None:
    dest = destination(server)
    entry = ssh.known_hosts_entry(Paths(), dest)
    assert entry.startswith(f"[127.0.0.1]:{server.port} ssh-ed25519 ")
    image_known_hosts = tmp_path / "image_known_hosts"
    image_known_hosts.write_text(entry)
    run_preflight(server, tmp_path / "crash", known_hosts=image_known_hosts)

    wrong_port = ssh.SshDestination(
        server.user, server.host, port=22, known_hosts_files=(str(server.known_hosts),)
    )
    with pytest.raises(ssh.SshTargetError) as caught:
        ssh.known_hosts_entry(Paths(), wrong_port)
    assert caught.value.failure is wire.SshFailure.HOST_KEY
    assert "The host key of 127.0.0.1 is not in" in str(caught.value)


@pytest.mark.requires("makedumpfile")
def test_flattened_stream_through_ssh_reassembles(server: LoopbackSshd, tmp_path: Path) -> None:
    core = generate_core(tmp_path / "vmcore.elf").path
    direct = tmp_path / "direct.kdump"
    subprocess.run(
        ["makedumpfile", "-l", "-d", "31", str(core), str(direct)],
        check=True,
        capture_output=True,
    )
    remote = tmp_path / "server" / "crash" / "127.0.0.1-2024-01-01-00:00:00"
    run_preflight(server, remote)

    base = wire.ssh_base_argv(
        user=server.user,
        host=server.host,
        port=server.port,
        identity=str(server.user_key),
        known_hosts=str(server.known_hosts),
    )
    incomplete = remote / "vmcore-incomplete"
    proc.run(
        ["makedumpfile", "-F", "-l", "-d", "31", str(core)],
        pipe_to=[*base, f"umask 0077 && dd bs=512 of='{incomplete}'"],
        timeout=60,
    )
    proc.run([*base, f"mv '{incomplete}' '{remote}/vmcore.flat'"], timeout=60)

    stream = remote / "vmcore.flat"
    assert stream.stat().st_mode & 0o077 == 0
    with stream.open("rb") as f:
        summary = flattened.scan(f)
    assert summary.complete and summary.records > 3
    rebuilt = tmp_path / "rebuilt.kdump"
    subprocess.run(
        f"makedumpfile -R '{rebuilt}' < '{stream}'", shell=True, check=True, capture_output=True
    )
    assert rebuilt.read_bytes()[:8] == b"KDUMP   "
    assert rebuilt.read_bytes() == direct.read_bytes()


def test_propagate_installs_a_new_key_that_then_works(server: LoopbackSshd, tmp_path: Path) -> None:
    # The session's HOME is the fixture's, so ssh-copy-id writes there (checked first).
    probe = subprocess.run(
        [
            *wire.ssh_base_argv(
                user=server.user,
                host=server.host,
                port=server.port,
                identity=str(server.user_key),
                known_hosts=str(server.known_hosts),
            ),
            "echo $HOME",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == str(server.home)

    root = Paths(root=tmp_path / "root")
    (tmp_path / "root").mkdir()
    config = parse_kdump_conf(
        f"ssh {server.target}\ncore_collector makedumpfile -F -l -d 31\n"
    ).config
    client = server.client_config(IdentityFile=str(server.user_key), IdentitiesOnly="yes")
    messages = RecordedMessages()
    key = ssh.propagate(config, root, messages, interactive=False, ssh_options=["-F", str(client)])
    assert key == root.under_root("/root/.ssh/kdump_id_rsa")
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.with_suffix(".pub").read_text().startswith("ssh-rsa ")
    assert messages.entries == [
        ("info", "Generating new ssh keys... "),
        ("info", "done."),
        (
            "info",
            f"/root/.ssh/kdump_id_rsa has been added to ~{server.user}/.ssh/authorized_keys "
            f"on {server.host}",
        ),
    ]
    installed = (server.home / ".ssh" / "authorized_keys").read_text()
    assert key.with_suffix(".pub").read_text().split()[1] in installed
    run_preflight(server, tmp_path / "crash", identity=key)

    again = RecordedMessages()
    ssh.propagate(config, root, again, interactive=False, ssh_options=["-F", str(client)])
    assert again.entries[0] == ("info", "Using existing keys...")

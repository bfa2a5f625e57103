"""A throw-away OpenSSH server on 127.0.0.1 for integration tests.

``start_sshd(workdir)`` generates a host key and a user key in ``workdir``,
writes an sshd_config (free port on 127.0.0.1, ``AuthorizedKeysFile`` and
``PidFile`` in ``workdir``, ``StrictModes no``, no PAM, no passwords), starts
``/usr/sbin/sshd -D -e -f <config>`` and waits until it accepts connections.
The returned :class:`LoopbackSshd` carries a matching client ``known_hosts``
and stops the server in :meth:`LoopbackSshd.stop`.

Sessions log in as the user running the tests. Their ``HOME`` is set to
``workdir/home`` by the server, so tools that write ``~/.ssh/authorized_keys``
(ssh-copy-id) write there, never into the real home directory; that file is
also an authorized keys file of the server.

sshd running as root insists on its privilege separation directory
(/run/sshd), which only exists on hosts where the ssh service ran. When it is
missing the server is started in a private mount namespace (``unshare -m``)
with a tmpfs on /run, so the host is left untouched.

Use it through a fixture of the test module::

    @pytest.fixture
    def server(tmp_path: Path) -> Iterator[LoopbackSshd]:
        yield from running_sshd(tmp_path)

(or import the ``sshd`` fixture below into a conftest.py).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def unavailable_reason() -> str | None:
    """Why a loopback sshd cannot run here, or None."""
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} not installed (openssh-server)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (openssh-client)"
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir() and shutil.which("unshare") is None:
        return f"{PRIVSEP_DIR} missing and unshare not available"
    return None


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"kdumpd-test-{path.name}", "-f", path],
        check=True,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class LoopbackSshd:
    """A running test sshd and the client-side files that go with it."""

    workdir: Path
    port: int
    user: str
    host_key: Path
    user_key: Path
    authorized_keys: Path
    known_hosts: Path
    home: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def target(self) -> str:
        return f"{self.user}@{LOOPBACK}"

    def known_hosts_line(self) -> str:
        """The client known_hosts line for this server: ``[127.0.0.1]:port <type> <key>``."""
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[{LOOPBACK}]:{self.port} {kind} {key}\n"

    def authorize(self, public_key: Path) -> None:
        with self.authorized_keys.open("a") as f:
            f.write(public_key.read_text())

    def client_config(self, name: str = "ssh_config", **extra: str) -> Path:
        """An ssh_config for ssh -G / ssh-copy-id -F: port, known hosts, extra options."""
        lines = [
            f"Host {LOOPBACK}",
            f"  Port {self.port}",
            f"  UserKnownHostsFile {self.known_hosts}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
        ]
        lines += [f"  {key} {value}" for key, value in extra.items()]
        path = self.workdir / name
        path.write_text("\n".join(lines) + "\n")
        return path

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def _write_config(server: LoopbackSshd) -> Path:
    config = server.workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {LOOPBACK}",
                f"Port {server.port}",
                f"HostKey {server.host_key}",
                f"PidFile {server.workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {server.authorized_keys} "
                f"{server.home / '.ssh' / 'authorized_keys'}",
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "AllowTcpForwarding no",
                "X11Forwarding no",
                f"SetEnv HOME={server.home}",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    return config


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def start_sshd(workdir: Path, *, timeout: float = 15.0) -> LoopbackSshd:
    """Start a server in ``workdir`` (created if needed) and wait until it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    server = LoopbackSshd(
        workdir=workdir,
        port=0,
        user=getpass.getuser(),
        host_key=workdir / "ssh_host_ed25519_key",
        user_key=workdir / "id_user",
        authorized_keys=workdir / "authorized_keys",
        known_hosts=workdir / "known_hosts",
        home=home,
        log=workdir / "sshd.log",
    )
    _keygen(server.host_key)
    _keygen(server.user_key)
    server.authorized_keys.write_text(server.user_key.with_suffix(".pub").read_text())
    for _attempt in range(3):  # the free port may be taken before sshd binds it
        server.port = free_port()
        config = _write_config(server)
        argv = [SSHD, "-D", "-e", "-f", str(config)]
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            # unshare execs the shell, which execs sshd: the pid we hold is sshd's.
            argv = [
                "unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount -t tmpfs -o mode=0755 kdumpd-test /run && mkdir -m 0755 {PRIVSEP_DIR} '
                '&& exec "$@"',
                "sh", *argv,
            ]  # fmt: skip
        with server.log.open("ab") as log:
            server.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.process.poll() is not None or _accepts(server.port):
                break
            time.sleep(0.1)
        if server.process.poll() is None and _accepts(server.port):
            server.known_hosts.write_text(server.known_hosts_line())
            return server
        server.stop()
        if "Address already in use" not in server.logs():
            break
    raise RuntimeError(f"test sshd did not start; its log:\n{server.logs()}")


def running_sshd(tmp_path: Path) -> Iterator[LoopbackSshd]:
    """Body of a fixture: fail where openssh-server is missing, start, yield, stop."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(f"{reason}: tools/setup-host.sh installs openssh-server")
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[LoopbackSshd]:
    """A running loopback sshd; skipped where openssh-server is missing."""
    yield from running_sshd(tmp_path)

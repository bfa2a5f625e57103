"""The ssh target, capture side: wait for the network, then stream the dump into dd on the server.

Layout on the server, as kdump-utils (§5.5): ``<path>/<address>-<date>/`` with
``vmcore-dmesg.txt``, ``vmcore.flat`` (``vmcore-incomplete`` until complete),
``kexec-dmesg.log`` and ``kdumpd-metadata.json``; ``<address>`` is the capture
kernel's source address toward the server. The server needs nothing but sshd
and a POSIX shell with ``mkdir``, ``dd`` and ``mv``: every remote command
below is built from those, with every path quoted for the remote shell.

The ssh options (:func:`ssh_base_argv`) and the failure kinds
(:func:`classify`) are shared with the first kernel's preflight
(:mod:`kdumpd.targets.ssh`), so that what was proven before arming is what
runs after the crash.
"""

from __future__ import annotations

import enum
import json
import posixpath
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kdumpd import proc
from kdumpd.capture.fs import TargetError, dump_dir_name
from kdumpd.capture.log import CaptureLog
from kdumpd.plan import NetworkSpec, SshSpec, TargetSpec

DEFAULT_PORT = 22
#: ssh's own bound on connecting (TCP and key exchange), per attempt.
CONNECT_TIMEOUT_SECONDS = 10
#: How long a server that does not answer is retried before failure_action.
CONNECT_RETRY_SECONDS = 30.0
VMCORE_FLAT = "vmcore.flat"
_SSH_FAILED = 255  # ssh's own exit status; anything else comes from the remote command


class SshFailure(enum.Enum):
    """Why an ssh target cannot be used; each calls for a different fix."""

    NETWORK = "network"  # no route, refused, timed out, name not resolved
    HOST_KEY = "host-key"  # server host key unknown or changed
    AUTHENTICATION = "authentication"  # key refused or missing
    PERMISSION = "permission"  # logged in, but the remote command failed


def classify(returncode: int | None, stderr: str) -> SshFailure | None:
    """The kind of failure of an ssh run (None: it worked), by kdumpctl's rules (§3.3).

    ``returncode`` None means the run timed out.
    """
    if returncode == 0:
        return None
    if returncode is None:
        return SshFailure.NETWORK
    if returncode != _SSH_FAILED:
        return SshFailure.PERMISSION
    if (
        "Host key verification failed" in stderr
        or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr
    ):
        return SshFailure.HOST_KEY
    if (
        "Permission denied" in stderr
        or "No such file or directory" in stderr
        or "Too many authentication failures" in stderr
    ):
        return SshFailure.AUTHENTICATION
    return SshFailure.NETWORK


def ssh_base_argv(
    *,
    user: str,
    host: str,
    port: int = DEFAULT_PORT,
    identity: str,
    known_hosts: str,
    batch: bool = True,
    connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
    host_key_alias: str | None = None,
) -> list[str]:
    """The ssh command line both kernels use, up to (not including) the remote command.

    ``-F /dev/null`` and ``GlobalKnownHostsFile=/dev/null``: only what is
    named here counts, as in the capture image. ``IdentitiesOnly``: an agent
    or a default key must not make the check pass where the kdump key fails.
    ``host_key_alias``: the known_hosts name when ``host`` is an address the
    first kernel resolved a name to.
    """
    argv = ["ssh", "-F", "/dev/null", "-i", identity, "-o", "IdentitiesOnly=yes"]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    argv += [
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"ConnectTimeout={connect_timeout}",
    ]  # fmt: skip
    if host_key_alias:
        argv += ["-o", f"HostKeyAlias={host_key_alias}"]
    argv += ["-p", str(port), f"{user}@{host}"]
    return argv


def argv_for(spec: SshSpec) -> list[str]:
    """ssh to the plan's server, by address, checking the key under the name it was known by."""
    address = spec.address or spec.host
    alias = None
    if address != spec.host:
        alias = spec.host if spec.port == DEFAULT_PORT else f"[{spec.host}]:{spec.port}"
    return ssh_base_argv(
        user=spec.user,
        host=address,
        port=spec.port,
        identity=spec.identity,
        known_hosts=spec.known_hosts,
        host_key_alias=alias,
    )


def route_source(server: str) -> str | None:
    """The source address the kernel would use toward ``server``; None without a route yet."""
    try:
        done = proc.run(["ip", "-j", "route", "get", server], ok_codes=range(256), timeout=30)
    except proc.ProgramError:
        return None
    if done.returncode != 0:
        return None
    try:
        routes = json.loads(done.stdout or "[]")
    except ValueError:
        return None
    if routes and isinstance(routes[0], dict) and routes[0].get("prefsrc"):
        return str(routes[0]["prefsrc"])
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _quote(path: str) -> str:
    return shlex.quote(path)


@dataclass
class SshDump:
    """A dump directory on an ssh server."""

    target: TargetSpec
    network: NetworkSpec | None
    log: CaptureLog
    connect_retry: float = CONNECT_RETRY_SECONDS
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    directory: str | None = None
    address: str = field(default="", init=False)
    keeps_files: bool = field(default=True, init=False)
    vmcore_name: str = field(default=VMCORE_FLAT, init=False)

    @property
    def spec(self) -> SshSpec:
        if self.target.ssh is None:
            raise TargetError("the plan names an ssh target without ssh settings; rebuild")
        return self.target.ssh

    @property
    def location(self) -> str:
        spec = self.target.ssh
        where = self.directory or self.target.path
        return f"{spec.user}@{spec.host}:{where}" if spec else where

    def prepare(self, when: datetime) -> None:
        """Wait for a route to the server, then create the dump directory there."""
        spec = self.spec
        server = spec.address or spec.host
        self.address = self._wait_for_route(server)
        directory = posixpath.join(self.target.path, dump_dir_name(self.address, when))
        self.log.info(f"saving to {spec.user}@{spec.host}:{directory}")
        self._remote(f"mkdir -p -- {_quote(directory)}", f"create {directory}", retry=True)
        self.directory = directory

    def _wait_for_route(self, server: str) -> str:
        wait = float(self.network.wait_seconds) if self.network else 0.0
        start = self.clock()
        said = -1.0
        while True:
            source = route_source(server)
            if source:
                self.log.info(f"network ready: {source} reaches {server}")
                return source
            waited = self.clock() - start
            if waited >= wait:
                raise TargetError(
                    f"network: no route to the dump server {server} after {waited:.0f} s; "
                    "the capture kernel's network did not come up"
                )
            if said < 0 or waited - said >= 10:
                self.log.info(f"waiting for the network to reach {server} ({waited:.0f} s)")
                said = waited
            self.sleep(1.0)

    def _remote(self, command: str, doing: str, *, retry: bool = False) -> None:
        """Run a remote command; raise TargetError naming the failure kind."""
        argv = [*argv_for(self.spec), command]
        start = self.clock()
        while True:
            result = proc.run(argv, ok_codes=range(256), timeout=120)
            failure = classify(result.returncode, result.stderr)
            if failure is None:
                return
            waited = self.clock() - start
            if not (retry and failure is SshFailure.NETWORK and waited < self.connect_retry):
                raise TargetError(self._failure_text(failure, doing, result.stderr, waited))
            self.log.info(
                f"{self.spec.host} does not answer ({_last_line(result.stderr)}); retrying"
            )
            self.sleep(2.0)

    def _failure_text(self, failure: SshFailure, doing: str, stderr: str, waited: float) -> str:
        spec = self.spec
        who = f"{spec.user}@{spec.host}"
        said = _last_line(stderr)
        if failure is SshFailure.NETWORK:
            return (
                f"network: cannot reach {who} port {spec.port} to {doing} "
                f"({said}; tried for {waited:.0f} s)"
            )
        if failure is SshFailure.HOST_KEY:
            return (
                f"host key: the key of {spec.host} does not match the capture image's "
                f"known_hosts ({said}); rebuild with kdumpctl restart"
            )
        if failure is SshFailure.AUTHENTICATION:
            return (
                f"authentication: {who} refused the key {spec.identity} ({said}); "
                "run kdumpctl propagate"
            )
        return f"permission: {who} could not {doing} ({said})"

    def _path(self, name: str) -> str:
        if self.directory is None:
            raise TargetError("dump directory used before prepare()")
        return posixpath.join(self.directory, name)

    def save_stream(
        self,
        argv: Sequence[str],
        incomplete: str,
        final: str,
        *,
        on_output: Callable[[bytes], None] | None = None,
    ) -> None:
        """``argv | ssh "umask 0077 && dd bs=512 of=<incomplete>"``, then mv to ``final``."""
        out = self._path(incomplete)
        writer = [*argv_for(self.spec), f"umask 0077 && dd bs=512 of={_quote(out)}"]
        try:
            proc.run(argv, pipe_to=writer, timeout=None, on_output=on_output)
        except proc.ProgramError as exc:
            # The rightmost failing program is reported: ssh when the transfer broke
            # (the collector then only saw a closed pipe), else the collector itself.
            if exc.argv[:1] == ("ssh",):
                failure = classify(exc.returncode, exc.stderr) or SshFailure.NETWORK
                raise TargetError(
                    self._failure_text(failure, f"write {out}", exc.stderr, 0.0)
                ) from exc
            raise
        self._remote(f"mv -f -- {_quote(out)} {_quote(self._path(final))}", f"complete {final}")

    def write_small_file(self, name: str, data: bytes) -> None:
        """Write a record file through ``dd`` and rename it into place."""
        temporary, final = self._path(f".{name}.incomplete"), self._path(name)
        command = (
            f"umask 0077 && dd of={_quote(temporary)} 2>/dev/null && "
            f"mv -f -- {_quote(temporary)} {_quote(final)}"
        )
        try:
            proc.run(
                [*argv_for(self.spec), command],
                input=data.decode(errors="replace"),
                timeout=120,
            )
        except proc.ProgramError as exc:
            raise TargetError(f"cannot write {name} on {self.spec.host}: {exc}") from exc

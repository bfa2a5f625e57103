"""The ssh target, capture side: wait for the network, then stream the dump into dd on the server.

Layout on the server, as kdump-utils (§5.5): ``<path>/<address>-<date>/`` with
``vmcore-dmesg.txt``, ``vmcore.flat`` (``vmcore-incomplete`` until complete),
``kexec-dmesg.log`` and ``kdumpd-metadata.json``; ``<address>`` is the capture
kernel's source address toward the server. The server needs nothing but sshd
and a POSIX shell with ``mkdir``, ``dd`` and ``mv``: every remote command
below is built from those, with every path quoted for the remote shell.

The ssh options and the failure kinds (:mod:`kdumpd.contract.ssh`) are shared
with the first kernel's preflight (:mod:`kdumpd.targets.ssh`), so that what
was proven before arming is what runs after the crash.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kdumpd import proc
from kdumpd.capture.log import CaptureLog
from kdumpd.contract.layout import VMCORE_FLAT, dump_dir_name
from kdumpd.contract.plan import SshSpec, SshTarget
from kdumpd.contract.ssh import SshFailure, argv_for, classify, explain, last_line
from kdumpd.errors import TargetError

#: How long a server that does not answer is retried before failure_action.
CONNECT_RETRY_SECONDS = 30.0


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


def _quote(path: str) -> str:
    return shlex.quote(path)


@dataclass
class SshDump:
    """A dump directory on an ssh server."""

    target: SshTarget
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
        return self.target.ssh

    @property
    def location(self) -> str:
        spec = self.target.ssh
        return f"{spec.user}@{spec.host}:{self.directory or self.target.path}"

    @property
    def ready(self) -> bool:
        """The dump directory exists on the server once prepare() succeeded."""
        return self.directory is not None

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
        network = self.target.network
        wait = float(network.wait_seconds) if network else 0.0
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
                f"{self.spec.host} does not answer ({last_line(result.stderr)}); retrying"
            )
            self.sleep(2.0)

    def _failure_text(self, failure: SshFailure, doing: str, stderr: str, waited: float) -> str:
        spec = self.spec
        return explain(
            failure,
            user=spec.user,
            host=spec.host,
            port=spec.port,
            identity=spec.identity,
            known_hosts=spec.known_hosts,
            path=self.target.path,
            doing=doing,
            said=last_line(stderr),
            waited=waited,
        )

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

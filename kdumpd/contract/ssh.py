"""The ssh command line both kernels run, and how an ssh failure is told apart.

The first kernel's preflight (:mod:`kdumpd.targets.ssh`) runs exactly the
options the capture kernel will use (:mod:`kdumpd.capture.ssh`), so that what
was proven before arming is what runs after the crash; both classify a failed
run with :func:`classify` by kdumpctl's rules (§3.3).
"""

from __future__ import annotations

import enum

from kdumpd.contract.plan import SshSpec

DEFAULT_PORT = 22
#: ssh's own bound on connecting (TCP and key exchange), per attempt.
CONNECT_TIMEOUT_SECONDS = 10
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


def last_line(text: str) -> str:
    """The last non-blank line of a program's stderr: what ssh said last."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def explain(
    failure: SshFailure,
    *,
    user: str,
    host: str,
    port: int,
    identity: str,
    known_hosts: str,
    path: str,
    doing: str,
    said: str,
    waited: float | None = None,
) -> str:
    """The one wording of an ssh failure, for the preflight and for the capture alike.

    Which of the four kinds it is, what ssh said (``said``: its last line), and
    what to do about it. ``doing`` is what the run was for ("create /var/crash").
    """
    who = f"{user}@{host}"
    if failure is SshFailure.NETWORK:
        tried = f"; tried for {waited:.0f} s" if waited is not None else ""
        return (
            f"network: cannot reach {who} port {port} to {doing} ({said}{tried}); "
            "check the network between this machine and the server"
        )
    if failure is SshFailure.HOST_KEY:
        return (
            f"host key: the key of {known_hosts_name(host, port)} is unknown or changed in "
            f"{known_hosts} ({said}); connect once with 'ssh -p {port} {who}' to check and "
            "accept it, or remove a stale line with 'ssh-keygen -R', then run kdumpctl restart"
        )
    if failure is SshFailure.AUTHENTICATION:
        return (
            f"authentication: {who} refused the key {identity} ({said}); "
            f"'kdumpctl propagate' installs it in ~{user}/.ssh/authorized_keys on {host}"
        )
    return f"permission: {who} could not {doing} ({said}); {user} needs write access to {path}"


def known_hosts_name(host: str, port: int) -> str:
    """The name a known_hosts line carries for this host: ``host`` or ``[host]:port``."""
    return host if port == DEFAULT_PORT else f"[{host}]:{port}"


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
        alias = known_hosts_name(spec.host, spec.port)
    return ssh_base_argv(
        user=spec.user,
        host=address,
        port=spec.port,
        identity=spec.identity,
        known_hosts=spec.known_hosts,
        host_key_alias=alias,
    )

"""The ssh dump target, first-kernel side: destination, reachability, keys, host key.

The capture kernel streams the dump through ``ssh user@host "dd of=..."``
with ``BatchMode=yes`` and ``StrictHostKeyChecking=yes`` (§5.5), so before
arming, the first kernel must prove that exactly that will work:

* :func:`resolve_destination` reads ``ssh -G`` like kdumpctl: the host part of
  ``ssh user@host`` must be what ssh itself resolves it to (ssh_config ``Host``
  aliases are refused, since the capture kernel has no ssh_config). kdump.conf
  has no port directive; the port ssh_config gives the host is taken from
  ``ssh -G`` and written into the plan, so ``Host 10.0.0.5 / Port 2222`` works.
* :func:`preflight` runs, with the options the capture kernel will use (and
  ``-F /dev/null`` so the user's ssh_config cannot make it pass where the
  capture kernel would fail), ``mkdir -p <path>`` and creates and removes a
  probe file, waiting up to 180 s for the network like §3.3 step 6. Failures
  are classified (:class:`SshFailure`) and worded as kdumpctl words them, plus
  what to do.
* :func:`propagate` is ``kdumpctl propagate`` (§3.9).
* :func:`known_hosts_entry` finds the server's host key line that the capture
  image must carry.

The server needs nothing but sshd and a POSIX shell with mkdir and rm
(preflight), dd and mv (capture), and df (the optional size check).
"""

from __future__ import annotations

import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdumpd import proc
from kdumpd.config.checks import effective_sshkey
from kdumpd.config.kdumpconf import DumpTarget, KdumpConfig
from kdumpd.contract.plan import CapturePlan, NetworkSpec, SshSpec, SshTarget
from kdumpd.contract.ssh import (
    CONNECT_TIMEOUT_SECONDS,
    DEFAULT_PORT,
    SshFailure,
    classify,
    explain,
    known_hosts_name,
    last_line,
    ssh_base_argv,
)
from kdumpd.errors import BuildError, ConfigError, Problem, TargetError
from kdumpd.host import meminfo_total_kib
from kdumpd.messages import Messages
from kdumpd.paths import KDUMP_CONF, Paths
from kdumpd.targets import network
from kdumpd.targets.base import CompiledTarget, ImageFile, ImageNeeds
from kdumpd.targets.fs import normalize_path

#: How long kdumpctl waits for a network target to become usable (§3.3 step 6).
DEFAULT_WAIT_SECONDS = 180.0
DEFAULT_POLL_SECONDS = 1.0
#: Where the capture image keeps the server's known_hosts lines.
IMAGE_KNOWN_HOSTS = "/etc/kdumpd/ssh/known_hosts"
#: dracut module that brings the capture kernel's network up (package dracut-network).
NETWORK_DRACUT_MODULE = "systemd-networkd"
NETWORK_DRACUT_DIR = "01systemd-networkd"


def require_network_module(paths: Paths, why: str) -> None:
    """Refuse to plan an image that needs dracut's systemd-networkd module when it is missing.

    Only dracut's systemd initrd needs it (``why`` says why that initrd): kdumpd's
    small init brings an IPv4 network up itself.
    """
    if not (paths.dracut_modules / NETWORK_DRACUT_DIR).is_dir():
        raise SshTargetError(
            f"this ssh dump target needs dracut's systemd initrd ({why}), which brings the "
            "capture kernel's network up with dracut's systemd-networkd module; install it "
            "with 'apt install dracut-network'"
        )


# kdump-utils generates RSA keys, and so do we: the default key file is named
# kdump_id_rsa, and servers in FIPS mode (RHEL, a common dump server) refuse
# ed25519. ssh-keygen's default RSA size (3072 bits) and rsa-sha2 signatures
# are accepted everywhere OpenSSH >= 7.2 runs; the capture kernel signs once.
DEFAULT_KEY_TYPE = "rsa"
# Where ssh looks when ssh -G cannot tell (root's files: kdumpctl runs as root).
FALLBACK_KNOWN_HOSTS: tuple[str, ...] = ("/root/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
_PROBE_NAME = ".kdumpd-probe"


class SshTargetError(TargetError):
    """An ssh target is unusable; ``failure`` says which kind of fix it needs."""

    def __init__(self, message: str, failure: SshFailure | None = None) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True)
class SshDestination:
    """An ssh target as the capture kernel will reach it."""

    user: str
    host: str  # as kdump.conf writes it, and as ssh -G resolves it
    port: int = DEFAULT_PORT
    #: Known-hosts files ssh would read for this host (user's first), from ssh -G.
    known_hosts_files: tuple[str, ...] = FALLBACK_KNOWN_HOSTS

    @property
    def target(self) -> str:
        """``user@host``, as kdump.conf and kdumpctl's messages write it."""
        return f"{self.user}@{self.host}"

    @property
    def known_hosts_name(self) -> str:
        """The name a known_hosts line carries for this host: ``host`` or ``[host]:port``."""
        return known_hosts_name(self.host, self.port)


# -- destination ----------------------------------------------------------------


def parse_ssh_g(text: str) -> dict[str, str]:
    """``ssh -G`` output as {option: value}; the first occurrence of an option wins."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and key.lower() not in options:
            options[key.lower()] = value.strip()
    return options


def _format_hint(source: str) -> str:
    return (
        f"Please verify that {source} contains 'ssh <user>@<host>' "
        "and that it is properly formatted."
    )


def resolve_destination(
    target: DumpTarget,
    *,
    ssh_config: Path | None = None,
    source: str = KDUMP_CONF,
    line: int = 0,
) -> SshDestination:
    """Check ``ssh user@host`` against ``ssh -G`` and take the port from it.

    ``ssh_config`` replaces the user's ssh_config (``ssh -G -F``), for tests
    and for ``kdumpctl --root``. Raises ConfigError at ``source:line``.
    """
    user, host = target.user, target.host
    if not user or not host:
        raise ConfigError([Problem(source, line, _format_hint(source))])
    if host.startswith("-") or user.startswith("-") or any(c.isspace() for c in target.value):
        raise ConfigError(
            [Problem(source, line, f"Invalid ssh destination {target.value} provided.")]
        )
    argv = ["ssh", "-G"]
    if ssh_config is not None:
        argv += ["-F", str(ssh_config)]
    try:
        done = proc.run([*argv, target.value], timeout=30)
    except proc.ProgramError as exc:
        raise SshTargetError(
            f"cannot read the ssh client configuration for {target.value}: {exc}; "
            "check ~/.ssh/config and /etc/ssh/ssh_config (ssh -G must succeed)"
        ) from exc
    options = parse_ssh_g(done.stdout)
    resolved = options.get("hostname", "")
    # ssh lowercases host names before matching; DNS names are case-insensitive.
    if resolved.lower() != host.lower():
        raise ConfigError(
            [
                Problem(
                    source,
                    line,
                    f"Invalid ssh destination {target.value} provided. ssh resolves it to "
                    f"'{resolved}' through ssh_config; the capture kernel does not read "
                    "ssh_config, so write the real host name or address in kdump.conf.",
                )
            ]
        )
    try:
        port = int(options.get("port", str(DEFAULT_PORT)))
    except ValueError:
        port = DEFAULT_PORT
    files = tuple(options.get("userknownhostsfile", "").split()) + tuple(
        options.get("globalknownhostsfile", "").split()
    )
    return SshDestination(
        user=options.get("user", user) or user,
        host=host,
        port=port,
        known_hosts_files=files or FALLBACK_KNOWN_HOSTS,
    )


# -- commands ------------------------------------------------------------------


def probe_command(path: str) -> str:
    """Remote shell command: create ``path`` and prove a file can be written in it.

    ``set -C`` makes ``: >`` an exclusive create, so no mktemp is needed.
    """
    where = shlex.quote(path)
    probe = f"{where}/{_PROBE_NAME}.$$"
    return f"set -C && mkdir -p -- {where} && : > {probe} && rm -f -- {probe}"


#: kdumpctl's first sentence for each failure (§3.3), kept for scripts that grep it.
_KDUMPCTL_LEAD: dict[SshFailure, str] = {
    SshFailure.NETWORK: "ipaddr is not ready yet. You should check network connection.",
    SshFailure.HOST_KEY: 'you probably need to run "kdumpctl propagate".',
    SshFailure.AUTHENTICATION: 'you probably need to run "kdumpctl propagate".',
    SshFailure.PERMISSION: "you should check the privilege on server side.",
}


def failure_message(
    failure: SshFailure,
    dest: SshDestination,
    path: str,
    *,
    identity: str,
    known_hosts: str,
    stderr: str,
    waited: float = 0.0,
) -> str:
    """kdumpctl's sentence for the failure, then the shared explanation and what to do."""
    detail = explain(
        failure,
        user=dest.user,
        host=dest.host,
        port=dest.port,
        identity=identity,
        known_hosts=known_hosts,
        path=path,
        doing=f"create {path}",
        said=last_line(stderr),
        waited=waited if failure is SshFailure.NETWORK else None,
    )
    lead = f"Could not create {dest.target}:{path}, {_KDUMPCTL_LEAD[failure]}"
    return f"{lead} {detail[:1].upper()}{detail[1:]}."


def _attempt(argv: Sequence[str], timeout: float) -> tuple[int | None, str, str]:
    try:
        done = proc.run(argv, ok_codes=range(256), timeout=timeout)
    except proc.ProgramError as exc:
        if exc.returncode is None and "not found" in exc.reason:
            raise SshTargetError(
                "ssh is not installed; install the openssh-client package for ssh dump targets"
            ) from exc
        return exc.returncode, exc.stdout, exc.stderr
    return done.returncode, done.stdout, done.stderr


def run_preflight(
    dest: SshDestination,
    *,
    identity: str,
    known_hosts: str,
    path: str,
    messages: Messages,
    wait: float = DEFAULT_WAIT_SECONDS,
    poll: float = DEFAULT_POLL_SECONDS,
    connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Prove the server is reachable and ``path`` writable there, waiting for the network.

    ``identity`` and ``known_hosts`` are files of the machine running the
    check. Network failures are retried every ``poll`` seconds for up to
    ``wait`` seconds (one warning); other failures stop at once. Raises
    :class:`SshTargetError` with :attr:`SshTargetError.failure` set.
    """
    start = clock()
    warned = False
    while True:
        left = wait - (clock() - start)
        per_try = max(1, min(connect_timeout, int(left) if left >= 1 else 1))
        argv = ssh_base_argv(
            user=dest.user,
            host=dest.host,
            port=dest.port,
            identity=identity,
            known_hosts=known_hosts,
            connect_timeout=per_try,
        )
        code, _, err = _attempt([*argv, probe_command(path)], timeout=per_try + 60)
        failure = classify(code, err)
        if failure is None:
            return
        waited = clock() - start
        if failure is not SshFailure.NETWORK or waited + poll > wait:
            raise SshTargetError(
                failure_message(
                    failure,
                    dest,
                    path,
                    identity=identity,
                    known_hosts=known_hosts,
                    stderr=err,
                    waited=waited,
                ),
                failure,
            )
        if not warned:
            messages.warn("Network dump target is not usable, waiting for it to be ready...")
            warned = True
        sleep(poll)


def check_remote_size(
    dest: SshDestination,
    *,
    identity: str,
    known_hosts: str,
    path: str,
    mem_total_kib: int,
    messages: Messages,
) -> None:
    """Warn when the remote free space is below MemTotal (§5.1); never fails."""
    argv = ssh_base_argv(
        user=dest.user, host=dest.host, port=dest.port, identity=identity, known_hosts=known_hosts
    )
    code, out, _ = _attempt([*argv, f"df -P -k -- {shlex.quote(path)}"], timeout=60)
    words = out.strip().splitlines()[-1].split() if code == 0 and out.strip() else []
    if len(words) < 4 or not words[3].isdigit():
        messages.warn("checking remote ssh server available size failed.")
        return
    if int(words[3]) < mem_total_kib:
        messages.warn("There might not be enough space to save a vmcore.")
        messages.warn(
            f"The size of {dest.target}:{path} should be greater than "
            f"{mem_total_kib} kilo bytes."
        )


# -- keys ----------------------------------------------------------------------


def propagate(
    config: KdumpConfig,
    paths: Paths,
    messages: Messages,
    *,
    interactive: bool = True,
    ssh_options: Sequence[str] = (),
    key_type: str = DEFAULT_KEY_TYPE,
) -> Path:
    """``kdumpctl propagate``: make the kdump key and install it on the server (§3.9).

    Interactive (the default), ``ssh-copy-id`` asks for the password and for
    accepting the host key on the terminal. ``interactive=False`` runs it in
    batch mode with ``ssh_options`` (``-o``, ``-p``, ``-F`` for ssh-copy-id)
    that must already authenticate, e.g. an administrator's key; ``-f`` then
    skips ssh-copy-id's "already installed" test, which would log in with
    those options and wrongly conclude the new key works. Returns the key file.
    """
    target = config.target
    if target is None or target.kind != "ssh":
        raise SshTargetError(
            f"No ssh destination defined in {KDUMP_CONF}.\n{_format_hint(KDUMP_CONF)}"
        )
    if not target.user or not target.host:
        raise SshTargetError(_format_hint(KDUMP_CONF))
    key = effective_sshkey(config, paths)
    key_file = paths.under_root(key)
    if key_file.exists():
        messages.info("Using existing keys...")
    else:
        messages.info("Generating new ssh keys... ")
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            proc.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(key_file)])
        except proc.ProgramError as exc:
            raise SshTargetError(
                f"Generating the ssh key {key} failed: {exc}; check that "
                f"{key_file.parent} is writable."
            ) from exc
        messages.info("done.")
    # ssh-copy-id keeps its temporary files in ~/.ssh and gives up when that is missing
    # (a root account that never ran ssh): create it as ssh would.
    (Path.home() / ".ssh").mkdir(mode=0o700, exist_ok=True)
    argv = ["ssh-copy-id", "-i", str(key_file)]
    if not interactive:
        argv += ["-f", "-o", "BatchMode=yes"]
    argv += [*ssh_options, target.value]
    try:
        if interactive:
            proc.run(argv, interactive=True, timeout=None)
        else:
            proc.run(argv, timeout=120)
    except proc.ProgramError as exc:
        raise SshTargetError(
            f"Failed to propagate ssh key, could not transfer {key} to {target.host}. "
            f"({exc}) Check that {target.value} accepts a password or another key for "
            "this one-time copy.",
            SshFailure.AUTHENTICATION,
        ) from exc
    messages.info(f"{key} has been added to ~{target.user}/.ssh/authorized_keys on {target.host}")
    return key_file


def known_hosts_entry(paths: Paths, dest: SshDestination) -> str:
    """The known_hosts lines for ``dest`` the capture image must carry (may be hashed).

    Searched with ``ssh-keygen -F`` in the files ssh -G named. Raises
    SshTargetError (HOST_KEY) when no file knows the host.
    """
    name = dest.known_hosts_name
    found: list[str] = []
    searched: list[str] = []
    for shown in dest.known_hosts_files:
        if not shown.startswith("/"):
            continue
        location = paths.under_root(shown)
        if not location.is_file():
            continue
        searched.append(shown)
        done = proc.run(["ssh-keygen", "-F", name, "-f", str(location)], ok_codes=(0, 1))
        for line in done.stdout.splitlines():
            if line.strip() and not line.startswith("#") and line not in found:
                found.append(line)
    if not found:
        where = ", ".join(searched) if searched else " or ".join(dest.known_hosts_files)
        raise SshTargetError(
            f"The host key of {name} is not in {where}; the capture kernel checks it "
            f"strictly and would refuse to send the dump. Connect once with "
            f"'ssh -p {dest.port} {dest.target}' and accept the key, or run "
            "'kdumpctl propagate'.",
            SshFailure.HOST_KEY,
        )
    return "\n".join(found) + "\n"


# -- the plan --------------------------------------------------------------------


def compile_ssh_target(
    config: KdumpConfig, paths: Paths, *, where: tuple[str, int]
) -> tuple[SshSpec, NetworkSpec]:
    """The ssh part of the plan and the network the capture kernel needs for it.

    Checks, with errors at ``where``: the destination (``ssh -G``), the key
    exists, the server's host key is known (strict checking in the capture
    kernel), the route to the server can be mirrored, and dracut can bring the
    network up. Reachability is :func:`preflight`'s business, not this one's.
    """
    target = config.target
    assert target is not None and target.kind == "ssh"
    source, line = where
    dest = resolve_destination(target, source=source, line=line)
    key = effective_sshkey(config, paths)
    if not paths.under_root(key).is_file():
        raise ConfigError(
            [
                Problem(
                    source,
                    config.lines.get("sshkey", line),
                    f"the ssh key {key} does not exist; run 'kdumpctl propagate' to create "
                    f"it and install it on {dest.host}",
                )
            ]
        )
    known = known_hosts_entry(paths, dest)
    address = network.resolve_address(dest.host, where=where)
    spec = SshSpec(
        user=dest.user,
        host=dest.host,
        port=dest.port,
        identity=key,
        known_hosts=IMAGE_KNOWN_HOSTS,
        address=address,
        known_hosts_text=known,
    )
    return spec, network.network_for(paths, address)


# -- the kind -------------------------------------------------------------------

#: Where the generated network file goes in the image; it sorts before the host's own.
NETWORK_FILE_IN_IMAGE = "/etc/systemd/network/10-kdumpd.network"
#: What brings the network up in the capture initramfs (dracut's networkd module only
#: enables it for multi-user.target, which an initrd never reaches).
NETWORK_UNITS: tuple[str, ...] = ("systemd-networkd.service",)
#: Programs the capture side runs for an ssh target.
CAPTURE_PROGRAMS: tuple[str, ...] = ("ssh", "ip")


def compile(config: KdumpConfig, paths: Paths, *, where: tuple[str, int]) -> CompiledTarget:
    """``ssh user@host``: destination, key, host key and network (:func:`compile_ssh_target`)."""
    spec, net = compile_ssh_target(config, paths, where=where)
    return CompiledTarget(
        target=SshTarget(path=normalize_path(config.path), ssh=spec, network=net),
        dracut_modules=(NETWORK_DRACUT_MODULE,),
    )


def preflight(paths: Paths, messages: Messages, plan: CapturePlan) -> None:
    """Prove the capture kernel's ssh will work before arming (§3.3 step 6).

    Runs with the key and exactly the known_hosts lines the image will carry,
    waiting (bounded) for the network; raises SshTargetError naming whether
    the network, the host key, the authentication or the permission failed.
    Then warns when the server has less room than this machine has memory.
    """
    target = plan.target
    if not isinstance(target, SshTarget):
        return
    spec = target.ssh
    dest = SshDestination(user=spec.user, host=spec.host, port=spec.port)
    identity = str(paths.under_root(spec.identity))
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=paths.run_dir, prefix="known_hosts.", encoding="utf-8"
    ) as known:
        known.write(spec.known_hosts_text)
        known.flush()
        path = target.path
        run_preflight(dest, identity=identity, known_hosts=known.name, path=path, messages=messages)
        memory = meminfo_total_kib(paths)
        if memory is not None:
            check_remote_size(
                dest,
                identity=identity,
                known_hosts=known.name,
                path=path,
                mem_total_kib=memory,
                messages=messages,
            )


def image_needs(paths: Paths, plan: CapturePlan) -> ImageNeeds:
    """ssh and ip, the key (0600, as on the host), the server's known_hosts lines and the
    network file (0644: systemd-networkd reads it as the systemd-network user), and only
    the NIC toward the server.

    known_hosts and the network file come from the plan, so the manifest covers them.
    """
    target = plan.target
    if not isinstance(target, SshTarget):
        return ImageNeeds()
    spec = target.ssh
    key = paths.under_root(spec.identity)
    try:
        key_bytes = key.read_bytes()
    except OSError as exc:
        raise BuildError(
            f"cannot read the ssh key {spec.identity}: {exc.strerror}; run kdumpctl propagate"
        ) from exc
    files = [
        ImageFile("ssh_identity", spec.identity, "0600", key_bytes),
        ImageFile("ssh_known_hosts", spec.known_hosts, "0644", spec.known_hosts_text.encode()),
    ]
    net = target.network
    if net is None:
        return ImageNeeds(
            programs=CAPTURE_PROGRAMS,
            files=tuple(files),
            inputs={f"ssh key {spec.identity}": key},
        )
    files.append(
        ImageFile(
            "kdumpd.network",
            NETWORK_FILE_IN_IMAGE,
            "0644",
            network.network_unit(net).encode(),
            systemd_only=True,
        )
    )
    return ImageNeeds(
        drivers=(net.driver,) if net.driver else (),
        programs=CAPTURE_PROGRAMS,
        files=tuple(files),
        inputs={f"ssh key {spec.identity}": key},
        start_units=NETWORK_UNITS,
        nics=(net.interface,),
        generic_drivers=True,
    )

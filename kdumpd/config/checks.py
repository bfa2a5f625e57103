"""kdump.conf checks that need the host: files the directives name, and the hostname.

Everything here reads the tree at ``paths.root`` and starts no program, so the
checks run the same against a live system and a test's fake root. Network and
device checks that need programs (ssh reachability, mounting, dd) belong to the
target preflight, not here.

Two lists come out: :func:`check_host` returns errors (kdumpctl refuses to
start on them), :func:`check_host_warnings` returns warnings (kdumpctl prints
them and carries on). Each problem carries the line of the directive it is
about, taken from ``KdumpConfig.lines``.
"""

from __future__ import annotations

import stat
from pathlib import Path, PurePosixPath

from kdumpd.config.kdumpconf import DEFAULT_SSHKEY, KdumpConfig
from kdumpd.errors import Problem
from kdumpd.paths import Paths

# Names every host answers to; a fence_kdump node with one of them would fence itself.
_ALWAYS_LOCAL = frozenset({"localhost", "localhost.localdomain", "127.0.0.1", "::1"})
_MAX_SYMLINKS = 40


def resolve_under_root(paths: Paths, absolute: str) -> Path | None:
    """Follow ``absolute`` through symlinks inside the tree at ``paths.root``.

    An absolute link target means a location of the managed system, not of the
    machine running the check, so it is mapped under the root again. Returns
    None for a relative path, a missing component or a symlink loop.
    """
    if not absolute.startswith("/"):
        return None
    pending = list(PurePosixPath(absolute).parts[1:])
    resolved = PurePosixPath("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / part
        real = paths.under_root(str(candidate))
        if real.is_symlink():
            hops += 1
            if hops > _MAX_SYMLINKS:
                return None
            target = PurePosixPath(real.readlink())
            if target.is_absolute():
                resolved = PurePosixPath("/")
                pending[:0] = list(target.parts[1:])
            else:
                pending[:0] = list(target.parts)
            continue
        if not real.exists():
            return None
        resolved = candidate
    return paths.under_root(str(resolved))


def _is_executable_file(location: Path) -> bool:
    # Mode bits, not os.access: root passes access(X_OK) for any file with one
    # x bit, and tests run as root, so the bits are the honest answer.
    info = location.stat()
    return stat.S_ISREG(info.st_mode) and bool(info.st_mode & 0o111)


def _check_programs(paths: Paths, files: tuple[str, ...], line: int, source: str) -> list[Problem]:
    problems: list[Problem] = []
    for name in files:
        location = resolve_under_root(paths, name)
        if location is None:
            hint = "" if name.startswith("/") else " (use an absolute path)"
            problems.append(Problem(source, line, f"Error: {name} not found.{hint}"))
        elif not _is_executable_file(location):
            problems.append(
                Problem(
                    source,
                    line,
                    f"Error: {name} is not executable. Make it an executable file (chmod +x).",
                )
            )
    return problems


#: Where a core_collector given by name is looked up, as the capture image's PATH has it.
PROGRAM_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _check_collector(config: KdumpConfig, paths: Paths, source: str) -> list[Problem]:
    """The collector program must exist and be executable: the image build copies it."""
    program = config.effective_core_collector.split()[0]
    line = config.lines.get("core_collector", 0)
    if program.startswith("/"):
        return _check_programs(paths, (program,), line, source)
    for directory in PROGRAM_DIRS:
        location = resolve_under_root(paths, f"{directory}/{program}")
        if location is not None and _is_executable_file(location):
            return []
    return [
        Problem(
            source,
            line,
            f"Error: core_collector program {program} not found in {', '.join(PROGRAM_DIRS)}. "
            "Install it (apt install makedumpfile) or name an existing program.",
        )
    ]


def _check_ssh_key(config: KdumpConfig, paths: Paths, source: str) -> list[Problem]:
    """ssh ignores a private key others may read; say so, naming the fix, before any preflight.

    Otherwise the server's refusal reads like a missing key and the advice
    (kdumpctl propagate) does not help.
    """
    key = effective_sshkey(config, paths)
    location = resolve_under_root(paths, key)
    if location is None:
        return []  # propagate creates it; the preflight names a missing key
    info = location.stat()
    line = config.lines.get("sshkey", config.lines.get("ssh", 0))
    if not stat.S_ISREG(info.st_mode):
        return [Problem(source, line, f"The ssh key {key} is not a regular file.")]
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        return [
            Problem(
                source,
                line,
                f"The ssh key {key} may be read by other users (mode {mode:04o}), so ssh "
                f"refuses to use it. Run: chmod 600 {key}",
            )
        ]
    return []


def local_hostname(paths: Paths) -> str | None:
    """The host's name from /etc/hostname (first word), or None if unset."""
    try:
        text = paths.hostname.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    words = text.split("#", 1)[0].split()
    return words[0] if words else None


def check_host(config: KdumpConfig, paths: Paths, source: str) -> list[Problem]:
    """Errors: what kdump.conf names but the host lacks. Empty list = the host is fine."""
    problems: list[Problem] = []
    lines = config.lines

    if config.target is None:
        location = resolve_under_root(paths, config.path)
        if location is None or not location.is_dir():
            problems.append(
                Problem(
                    source,
                    lines.get("path", 0),
                    f"Dump path {config.path} does not exist. Create the directory "
                    "or set 'path' to an existing one.",
                )
            )
    elif config.target.kind == "raw":
        device = config.target.value
        if resolve_under_root(paths, device) is None:
            problems.append(
                Problem(
                    source,
                    lines.get("raw", 0),
                    f"Bad raw disk {device}: no such device. Name the block device by a "
                    "persistent path such as /dev/disk/by-id/...",
                )
            )

    problems += _check_collector(config, paths, source)
    problems += _check_programs(paths, config.extra_bins, lines.get("extra_bins", 0), source)
    for hook in ("kdump_pre", "kdump_post", "kdump_emergency"):
        program = getattr(config, hook)
        if program is not None:
            problems += _check_programs(paths, (program,), lines.get(hook, 0), source)

    if config.target is not None and config.target.kind == "ssh":
        problems += _check_ssh_key(config, paths, source)

    if config.fence_kdump_nodes:
        local = set(_ALWAYS_LOCAL)
        hostname = local_hostname(paths)
        if hostname:
            local |= {hostname.lower(), hostname.split(".")[0].lower()}
        for node in config.fence_kdump_nodes:
            if node.lower() in local:
                problems.append(
                    Problem(
                        source,
                        lines.get("fence_kdump_nodes", 0),
                        f"Option fence_kdump_nodes cannot contain {node}. "
                        "List the other cluster nodes only.",
                    )
                )
    return problems


def _writable_by_others(paths: Paths, absolute: str) -> str | None:
    """The first directory from / down to ``absolute`` that users other than root may change."""
    current = PurePosixPath("/")
    for part in (*PurePosixPath(absolute).parts[1:], None):
        location = resolve_under_root(paths, str(current))
        if location is None:
            return None
        info = location.stat()
        sticky = bool(info.st_mode & stat.S_ISVTX)
        if info.st_uid != 0 or (info.st_mode & 0o022 and not sticky):
            return str(current)
        if part is None:
            return None
        current = current / part
    return None


def check_host_warnings(config: KdumpConfig, paths: Paths, source: str) -> list[Problem]:
    """Warnings: kdumpctl prints these and carries on."""
    warnings: list[Problem] = []
    if config.target is None:
        loose = _writable_by_others(paths, config.path)
        if loose is not None:
            warnings.append(
                Problem(
                    source,
                    config.lines.get("path", 0),
                    f"the dump path {config.path} can be changed by users other than root "
                    f"({loose} is not root's alone); they could prepare what a capture writes "
                    f"into. Make it root-owned and not group/other-writable: "
                    f"chown root: {loose} && chmod go-w {loose}",
                )
            )
    if "sshkey" in config.lines and resolve_under_root(paths, config.sshkey) is None:
        warnings.append(
            Problem(
                source,
                config.lines["sshkey"],
                f"'{config.sshkey}' doesn't exist, using default value '{DEFAULT_SSHKEY}'",
            )
        )
    return warnings


def effective_sshkey(config: KdumpConfig, paths: Paths) -> str:
    """The key ssh dumps use: the configured one if it exists, else the default (§1.3)."""
    if resolve_under_root(paths, config.sshkey) is not None:
        return config.sshkey
    return DEFAULT_SSHKEY

"""The /etc/kdump.conf grammar: parse, validate and render, compatible with kdump-utils.

Owns the file syntax (comments, trailing comments, whole-value double quotes,
blank runs squeezed), the directive set and every check that needs nothing but
the file itself. Checks that look at the host (does the path exist, is the hook
executable) live in :mod:`kdumpd.config.checks`.

Unlike kdumpctl, which stops at the first mistake, :func:`parse_kdump_conf`
collects every problem of the file and raises them together, each located by
file and line and worded as kdumpctl words it, so that documentation and
habits written for Fedora/RHEL still apply.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from kdumpd.contract.actions import FAILURE_ACTIONS, FINAL_ACTIONS
from kdumpd.errors import ConfigError, Problem
from kdumpd.paths import KDUMP_CONF, Paths

DEFAULT_PATH = "/var/crash"
DEFAULT_SSHKEY = "/root/.ssh/kdump_id_rsa"
DEFAULT_CORE_COLLECTOR = "makedumpfile -l --message-level 7 -d 31"

#: Directives that name the dump target; at most one may appear.
#: Filesystem directives (``ext4 UUID=...``): a local filesystem target.
FS_KINDS: tuple[str, ...] = ("ext2", "ext3", "ext4", "xfs", "btrfs", "minix")
TARGET_KINDS: tuple[str, ...] = ("raw", *FS_KINDS, "virtiofs", "nfs", "ssh")
#: The target kind of ``dracut_args --mount "<dev> <mnt> <fstype> <opts>"``.
MOUNT_TARGET = "mount"


#: Directives that are not targets, in the order :func:`render_kdump_conf` writes them.
OPTION_DIRECTIVES: tuple[str, ...] = (
    "auto_reset_crashkernel",
    "path",
    "core_collector",
    "sshkey",
    "kdump_pre",
    "kdump_post",
    "kdump_emergency",
    "extra_bins",
    "extra_modules",
    "failure_action",
    "final_action",
    "force_rebuild",
    "force_no_rebuild",
    "dracut_args",
    "fence_kdump_args",
    "fence_kdump_nodes",
)
#: Renamed to failure_action; still accepted with a warning.
DEPRECATED_ALIAS = "default"
#: Removed directives: kdumpctl refuses to start when it sees one.
REMOVED_DIRECTIVES: tuple[str, ...] = (
    "net",
    "options",
    "link_delay",
    "disk_timeout",
    "debug_mem_level",
    "blacklist",
)
KNOWN_DIRECTIVES: frozenset[str] = frozenset((*TARGET_KINDS, *OPTION_DIRECTIVES, DEPRECATED_ALIAS))

# Spaces and tabs separate words like the shell's [:blank:] class; a carriage
# return counts as one too, so that a file saved with CRLF line ends still works.
_BLANKS = " \t\r"


@dataclass(frozen=True)
class DumpTarget:
    """Where the vmcore goes: the one target directive of kdump.conf.

    ``kind`` is a target directive (:data:`TARGET_KINDS`) or ``"mount"`` for a
    ``dracut_args --mount`` target, whose ``value`` is the mount specification
    ``"<dev> <mnt> <fstype> [<opts>]"``.
    """

    kind: str
    value: str

    @property
    def user(self) -> str:
        """The user of an ssh target (``user@host``)."""
        return self._ssh_parts()[0]

    @property
    def host(self) -> str:
        """The host of an ssh target: a name, an IPv4 or a bare IPv6 address."""
        return self._ssh_parts()[1]

    @property
    def mount_fields(self) -> tuple[str, str, str, str]:
        """(device, mountpoint, fstype, options) of a ``dracut_args --mount`` target."""
        if self.kind != MOUNT_TARGET:
            raise ValueError(f"a {self.kind} target has no mount specification")
        words = self.value.split()
        options = words[3] if len(words) > 3 else "defaults"
        return (words[0], words[1], words[2], options)

    def _ssh_parts(self) -> tuple[str, str]:
        if self.kind != "ssh":
            raise ValueError(f"a {self.kind} target has no ssh user or host")
        user, _, host = self.value.partition("@")
        return user, host


@dataclass(frozen=True)
class KdumpConfig:
    """A validated kdump.conf. Absent directives keep kdump-utils' defaults.

    ``lines`` maps each directive written in the file to its line number (the
    target directive is also recorded under ``"target"``, the ``default`` alias
    also under ``"failure_action"``); it is left out of equality so that two
    files saying the same thing compare equal.
    """

    target: DumpTarget | None = None
    path: str = DEFAULT_PATH
    core_collector: str | None = None
    sshkey: str = DEFAULT_SSHKEY
    kdump_pre: str | None = None
    kdump_post: str | None = None
    kdump_emergency: str | None = None
    extra_bins: tuple[str, ...] = ()
    extra_modules: tuple[str, ...] = ()
    failure_action: str = "reboot"
    final_action: str = "reboot"
    force_rebuild: bool = False
    force_no_rebuild: bool = False
    dracut_args: str | None = None
    fence_kdump_args: str | None = None
    fence_kdump_nodes: tuple[str, ...] = ()
    auto_reset_crashkernel: bool = True
    lines: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, hash=False, repr=False
    )

    @property
    def effective_core_collector(self) -> str:
        """The collector the capture side runs, before its -F/--num-threads rewriting (§1.4)."""
        return self.core_collector if self.core_collector is not None else DEFAULT_CORE_COLLECTOR

    @property
    def is_default_target(self) -> bool:
        """No target directive: ``path`` names a directory of the running system."""
        return self.target is None


@dataclass(frozen=True)
class ParsedConfig:
    """A configuration that passed every check, with the warnings it produced."""

    config: KdumpConfig
    warnings: tuple[Problem, ...] = ()


# -- syntax ---------------------------------------------------------------


@dataclass(frozen=True)
class Directive:
    """One meaningful line of kdump.conf, split the way kdump-utils splits it."""

    line: int
    option: str
    value: str


def read_directives(text: str) -> list[Directive]:
    """Split kdump.conf text into directives, following kdump_get_conf_val.

    Blank runs are squeezed to one space, lines whose first non-blank is ``#``
    are skipped, everything from the first ``#`` on is a comment, and a value
    wrapped whole in double quotes loses the outer pair. A directive without a
    value comes back with ``value == ""``.
    """
    directives: list[Directive] = []
    # Only "\n" ends a line, as for the shell's read; other line separators that
    # str.splitlines() knows would shift line numbers away from what editors show.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = " ".join(_split_blanks(raw.partition("#")[0]))
        if not line:
            continue
        option, _, value = line.partition(" ")
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            value = " ".join(_split_blanks(value[1:-1]))
        directives.append(Directive(number, option, value))
    return directives


def _split_blanks(text: str) -> list[str]:
    # Other control characters are part of a word, as they are for the shell.
    words: list[str] = []
    current: list[str] = []
    for char in text:
        if char in _BLANKS:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


# -- validation -----------------------------------------------------------


class _Collector:
    """Accumulates errors and warnings of one file."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, line: int, message: str) -> None:
        self.errors.append(Problem(self.source, line, message))

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(Problem(self.source, line, message))


def parse_kdump_conf(text: str, source: str = KDUMP_CONF) -> ParsedConfig:
    """Parse and validate kdump.conf text.

    Raises :class:`~kdumpd.errors.ConfigError` carrying every problem found;
    warnings (the deprecated ``default`` alias, a non-makedumpfile collector
    with a raw target) come back in :attr:`ParsedConfig.warnings`.
    """
    out = _Collector(source)
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    target: DumpTarget | None = None

    for directive in read_directives(text):
        option, value, number = directive.option, directive.value, directive.line
        if option in REMOVED_DIRECTIVES:
            out.error(
                number,
                f"Deprecated kdump config option: {option}. "
                "Refer to kdump.conf manpage for alternatives.",
            )
            continue
        if option not in KNOWN_DIRECTIVES:
            out.error(number, f"Invalid kdump config option {option}")
            continue
        if not value:
            out.error(number, f"Invalid kdump config value for option '{option}'")
            continue

        key = option
        if option == DEPRECATED_ALIAS:
            out.warn(
                number,
                "Option 'default' was renamed 'failure_action' and will be removed in the "
                f"future. Please update {source} to use option 'failure_action' instead.",
            )
            key = "failure_action"

        if option in TARGET_KINDS:
            if target is not None:
                out.error(number, "More than one dump targets specified")
                continue
            target = DumpTarget(option, value)
            lines[option] = lines["target"] = number
            continue

        if key in values:
            out.error(number, f"Duplicated kdump config value of option {key}")
            continue

        if option == "dracut_args":
            mount = _mount_target(value, number, out)
            if mount is not None:
                if target is not None:
                    out.error(number, "More than one dump targets specified")
                else:
                    target = mount
                    lines["target"] = number
        values[key] = value
        lines[option] = number
        lines.setdefault(key, number)

    config = _build_config(target, values, lines, out)
    if out.errors:
        raise ConfigError(sorted(out.errors, key=lambda problem: problem.line))
    return ParsedConfig(config, tuple(sorted(out.warnings, key=lambda problem: problem.line)))


def _mount_target(value: str, line: int, out: _Collector) -> DumpTarget | None:
    """The ``--mount`` target inside dracut_args, if any (§1.3)."""
    if "--mount" not in value:
        return None
    # kdumpctl counts the substring, so "--mount=" and a second "--mount" both count.
    if value.count("--mount") != 1:
        out.error(line, 'Multiple mount targets specified in one "dracut_args".')
        return None
    try:
        words = shlex.split(value)
    except ValueError as exc:
        out.error(
            line,
            f"Invalid kdump config value for option 'dracut_args': {exc}; "
            "close every quote of the dracut arguments.",
        )
        return None
    spec: str | None = None
    for index, word in enumerate(words):
        if word == "--mount":
            spec = words[index + 1] if index + 1 < len(words) else None
            break
        if word.startswith("--mount="):
            spec = word.removeprefix("--mount=")
            break
    if spec is None:
        # "--mount" appears inside another word (e.g. "--mounts"): not a mount target.
        return None
    fields = spec.split()
    if len(fields) < 3:
        out.error(
            line,
            "Invalid kdump config value for option 'dracut_args': --mount needs "
            '"<device> <mountpoint> <fstype> [<options>]".',
        )
        return None
    if not fields[1].startswith("/"):
        out.error(
            line,
            "Invalid kdump config value for option 'dracut_args': "
            f'the --mount point "{fields[1]}" must be an absolute path.',
        )
        return None
    return DumpTarget(MOUNT_TARGET, " ".join(fields))


def _flag_set(value: str | None, option: str, line: int, out: _Collector) -> bool:
    if value is None:
        return False
    if value not in ("0", "1"):
        out.error(line, f"Error: {option} value is invalid")
        return False
    return value == "1"


def _has_flatten_option(collector: str) -> bool:
    """Whether makedumpfile's -F appears, alone or in a short-option cluster like -lF."""
    return any(
        word.startswith("-") and not word.startswith("--") and "F" in word
        for word in collector.split()
    )


def _build_config(
    target: DumpTarget | None,
    values: Mapping[str, str],
    lines: Mapping[str, int],
    out: _Collector,
) -> KdumpConfig:
    """Check the values that have a grammar of their own and assemble the config."""

    def line_of(option: str) -> int:
        return lines.get(option, 0)

    failure_action = values.get("failure_action", "reboot")
    if failure_action not in FAILURE_ACTIONS:
        out.error(
            line_of("failure_action"),
            "Usage kdump.conf: failure_action {reboot|halt|poweroff|shell|dump_to_rootfs}",
        )
    final_action = values.get("final_action", "reboot")
    if final_action not in FINAL_ACTIONS:
        out.error(line_of("final_action"), "Usage kdump.conf: final_action {reboot|halt|poweroff}")

    force_rebuild = _flag_set(
        values.get("force_rebuild"), "force_rebuild", line_of("force_rebuild"), out
    )
    force_no_rebuild = _flag_set(
        values.get("force_no_rebuild"), "force_no_rebuild", line_of("force_no_rebuild"), out
    )
    if force_rebuild and force_no_rebuild:
        out.error(
            max(line_of("force_rebuild"), line_of("force_no_rebuild")),
            "Error: force_rebuild and force_no_rebuild are enabled simultaneously in kdump.conf",
        )

    if target is not None and target.kind == "ssh" and not (target.user and target.host):
        out.error(
            line_of("ssh"),
            f"Please verify that {out.source} contains 'ssh <user>@<host>' "
            "and that it is properly formatted.",
        )

    collector = values.get("core_collector")
    if collector is not None and target is not None and target.kind in ("ssh", "raw"):
        if "makedumpfile" in collector:
            if not _has_flatten_option(collector):
                out.error(
                    line_of("core_collector"),
                    'The specified dump target needs makedumpfile "-F" option.',
                )
        elif target.kind == "raw":
            out.warn(
                line_of("core_collector"),
                "Specifying a non-makedumpfile core collector, "
                "you will have to recover the vmcore manually.",
            )

    return KdumpConfig(
        target=target,
        path=values.get("path", DEFAULT_PATH),
        core_collector=collector,
        sshkey=values.get("sshkey", DEFAULT_SSHKEY),
        kdump_pre=values.get("kdump_pre"),
        kdump_post=values.get("kdump_post"),
        kdump_emergency=values.get("kdump_emergency"),
        extra_bins=tuple(_split_blanks(values.get("extra_bins", ""))),
        extra_modules=tuple(_split_blanks(values.get("extra_modules", ""))),
        failure_action=failure_action,
        final_action=final_action,
        force_rebuild=force_rebuild,
        force_no_rebuild=force_no_rebuild,
        dracut_args=values.get("dracut_args"),
        fence_kdump_args=values.get("fence_kdump_args"),
        fence_kdump_nodes=tuple(_split_blanks(values.get("fence_kdump_nodes", ""))),
        auto_reset_crashkernel=values.get("auto_reset_crashkernel", "yes") != "no",
        lines=MappingProxyType(dict(lines)),
    )


# -- files ----------------------------------------------------------------


def load_kdump_conf(paths: Paths, override: Path | None = None) -> ParsedConfig:
    """Read and parse kdump.conf (``paths.kdump_conf`` unless ``override`` names another file)."""
    location = override if override is not None else paths.kdump_conf
    try:
        text = location.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise ConfigError(
            [
                Problem(
                    str(location),
                    0,
                    "Error: No kdump config file found! "
                    "Reinstall the package or create the file (an empty file means all defaults).",
                )
            ]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [Problem(str(location), 0, f"cannot read the kdump config file: {exc.strerror}")]
        ) from exc
    return parse_kdump_conf(text, source=paths.shown(location))


# -- rendering ------------------------------------------------------------


def _render_value(option: str, value: str) -> str:
    """A value as it must be written so that :func:`read_directives` gives it back."""
    if not value or "#" in value or "\n" in value:
        raise ValueError(f"{option}: {value!r} cannot be written to kdump.conf")
    if value != " ".join(_split_blanks(value)):
        raise ValueError(f"{option}: {value!r} has blank runs kdump.conf would squeeze")
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        # The parser strips one outer pair, so protect a value that is quoted itself.
        return f'"{value}"'
    return value


def render_kdump_conf(config: KdumpConfig) -> str:
    """Write ``config`` as kdump.conf text; ``parse_kdump_conf`` gives the same config back.

    Only directives that differ from the defaults are written, except ``path``
    and ``auto_reset_crashkernel``, which the shipped file always states.
    A ``mount`` target is expressed by ``config.dracut_args`` and must appear there.
    """
    out: list[str] = []

    def put(option: str, value: str) -> None:
        out.append(f"{option} {_render_value(option, value)}")

    written_mount = (
        _mount_target(config.dracut_args, 0, _Collector("")) if config.dracut_args else None
    )
    if written_mount is not None and written_mount != config.target:
        raise ValueError("dracut_args --mount names a different target than config.target")
    if config.target is not None:
        if config.target.kind == MOUNT_TARGET:
            if config.dracut_args is None or "--mount" not in config.dracut_args:
                raise ValueError("a mount target must be written as dracut_args --mount")
        elif config.target.kind in TARGET_KINDS:
            put(config.target.kind, config.target.value)
        else:
            raise ValueError(f"unknown dump target kind {config.target.kind!r}")

    put("auto_reset_crashkernel", "yes" if config.auto_reset_crashkernel else "no")
    put("path", config.path)
    optional: list[tuple[str, str | None]] = [
        ("core_collector", config.core_collector),
        ("sshkey", None if config.sshkey == DEFAULT_SSHKEY else config.sshkey),
        ("kdump_pre", config.kdump_pre),
        ("kdump_post", config.kdump_post),
        ("kdump_emergency", config.kdump_emergency),
        ("extra_bins", " ".join(config.extra_bins) or None),
        ("extra_modules", " ".join(config.extra_modules) or None),
        ("failure_action", None if config.failure_action == "reboot" else config.failure_action),
        ("final_action", None if config.final_action == "reboot" else config.final_action),
        ("force_rebuild", "1" if config.force_rebuild else None),
        ("force_no_rebuild", "1" if config.force_no_rebuild else None),
        ("dracut_args", config.dracut_args),
        ("fence_kdump_args", config.fence_kdump_args),
        ("fence_kdump_nodes", " ".join(config.fence_kdump_nodes) or None),
    ]
    for option, value in optional:
        if value is not None:
            put(option, value)
    return "\n".join(out) + "\n"

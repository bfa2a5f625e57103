"""The kdump variables file (/etc/sysconfig/kdump or Debian's /etc/default/kdump).

kdump-utils *sources* this file as shell. kdumpd never runs it: it reads the
plain ``VAR=value`` subset of shell a variables file uses (quotes, backslashes,
comments, ``export``, ``$VAR`` of variables already set) and refuses anything
that would need a shell to mean something (command substitution, commands).
Owns the per-architecture defaults of kdump-utils v1.0.61 (spec §2.1) and the
choice of which file applies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from kdumpd.arch import normalize_arch
from kdumpd.errors import ConfigError, Problem
from kdumpd.paths import DEFAULT_KDUMP, SYSCONFIG_KDUMP, Paths

# -- per-architecture defaults (§2.1) --------------------------------------

_REMOVE_COMMON = (
    "hugepages hugepagesz slub_debug quiet log_buf_len swiotlb hugetlb_cma ignition.firstboot"
)
_APPEND_COMMON = "novmcoredd hugetlb_cma=0 kfence.sample_interval=0 initramfs_options=size=90%"
_PPC64LE_APPEND = (
    "irqpoll nr_cpus=16 noirqdistrib reset_devices cgroup_disable=memory numa=off "
    "udev.children-max=2 ehea.use_mcs=0 panic=10 kvm_cma_resv_ratio=0 transparent_hugepage=never"
)
_ARCH_REMOVE: dict[str, str] = {
    "x86_64": f"{_REMOVE_COMMON} cma",
    "aarch64": f"{_REMOVE_COMMON} cma",
    "i386": f"{_REMOVE_COMMON} cma",
    "ppc64": _REMOVE_COMMON,
    "ppc64le": _REMOVE_COMMON,
    "s390x": f"{_REMOVE_COMMON} vmcp_cma cma prot_virt zfcp.allow_lun_scan",
    "other": f"{_REMOVE_COMMON} cma",
}
_ARCH_APPEND: dict[str, str] = {
    "x86_64": "irqpoll nr_cpus=1 reset_devices cgroup_disable=memory mce=off numa=off "
    "udev.children-max=2 panic=10 acpi_no_memhotplug transparent_hugepage=never nokaslr "
    "hest_disable cma=0 pcie_ports=compat",
    "aarch64": "irqpoll nr_cpus=1 reset_devices cgroup_disable=memory udev.children-max=2 "
    "panic=10 swiotlb=noforce cma=0",
    "ppc64le": _PPC64LE_APPEND,
    "ppc64": _PPC64LE_APPEND.replace("nr_cpus=16", "maxcpus=1"),
    "s390x": "nr_cpus=1 cgroup_disable=memory numa=off udev.children-max=2 panic=10 "
    "transparent_hugepage=never vmcp_cma=0 cma=0",
    "i386": "irqpoll nr_cpus=1 reset_devices numa=off udev.children-max=2 panic=10 "
    "transparent_hugepage=never cma=0",
    "other": "irqpoll maxcpus=1 reset_devices cma=0",
}
_ARCH_KEXEC_ARGS: dict[str, str] = {
    "x86_64": "-s",
    "aarch64": "-s",
    "ppc64le": "-s",
    "s390x": "-s",
    "ppc64": "--dt-no-old-root",
}
_FADUMP_APPEND_PPC64LE = (
    "nr_cpus=16 numa=off cgroup_disable=memory cma=0 kvm_cma_resv_ratio=0 hugetlb_cma=0 "
    "transparent_hugepage=never novmcoredd udev.children-max=2"
)
#: Variable name -> SysConfig field, for every variable kdump-utils reads from the file.
VARIABLES: dict[str, str] = {
    "KDUMP_KERNELVER": "kernelver",
    "KDUMP_COMMANDLINE": "commandline",
    "KDUMP_COMMANDLINE_REMOVE": "commandline_remove",
    "KDUMP_COMMANDLINE_APPEND": "commandline_append",
    "KEXEC_ARGS": "kexec_args",
    "KDUMP_BOOTDIR": "bootdir",
    "KDUMP_IMG": "img",
    "KDUMP_IMG_EXT": "img_ext",
    "FADUMP_COMMANDLINE_APPEND": "fadump_commandline_append",
    "VMCORE_CREATION_NOTIFICATION": "vmcore_creation_notification",
    "KDUMP_STDLOGLVL": "stdloglvl",
    "KDUMP_SYSLOGLVL": "sysloglvl",
    "KDUMP_KMSGLOGLVL": "kmsgloglvl",
    # retention of saved dumps (kdumpd; KDUMP_NUM_DUMPS is Debian kdump-tools' name)
    "KDUMPD_KEEP_DUMPS": "keep_dumps",
    "KDUMP_NUM_DUMPS": "keep_dumps",
    "KDUMPD_KEEP_BYTES": "keep_bytes",
}
_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_LOG_LEVELS = range(0, 5)


@dataclass(frozen=True)
class SysConfig:
    """The kdump variables, defaults applied. An empty string means "not set".

    ``bootdir == ""`` means: search the usual boot directories; ``kernelver ==
    ""`` means the running kernel; ``commandline == ""`` means /proc/cmdline.
    ``source`` names the file the values came from (None: built-in defaults).
    """

    kernelver: str = ""
    commandline: str = ""
    commandline_remove: str = _ARCH_REMOVE["other"]
    commandline_append: str = f"{_APPEND_COMMON} {_ARCH_APPEND['other']}"
    kexec_args: str = ""
    bootdir: str = ""
    img: str = "vmlinuz"
    img_ext: str = ""
    fadump_commandline_append: str = ""
    vmcore_creation_notification: bool = True
    stdloglvl: int = 3
    sysloglvl: int = 0
    kmsgloglvl: int = 0
    #: dumps to keep after a new one (0: all); bytes all dumps may use (0: no limit)
    keep_dumps: int = 0
    keep_bytes: int = 0
    source: str | None = None


def canonical_arch(arch: str) -> str:
    """The kdump-utils architecture name for a uname -m or Debian name; "other" if unknown."""
    name = normalize_arch(arch)
    return name if name in _ARCH_APPEND else "other"


def arch_defaults(arch: str) -> SysConfig:
    """The values kdump-utils ships for ``arch`` (uname -m or Debian spelling)."""
    name = canonical_arch(arch)
    return SysConfig(
        commandline_remove=_ARCH_REMOVE[name],
        commandline_append=f"{_APPEND_COMMON} {_ARCH_APPEND[name]}",
        kexec_args=_ARCH_KEXEC_ARGS.get(name, ""),
        fadump_commandline_append=_FADUMP_APPEND_PPC64LE if name == "ppc64le" else "",
    )


def as_variables(config: SysConfig) -> dict[str, str]:
    """The config as shell variable values (the inverse of what the file sets)."""
    out: dict[str, str] = {}
    for variable, attribute in VARIABLES.items():
        value = getattr(config, attribute)
        if isinstance(value, bool):
            out[variable] = "yes" if value else "no"
        else:
            out[variable] = str(value)
    return out


# -- the shell subset -----------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """One ``VAR=value`` of the file, value already unquoted and expanded."""

    name: str
    value: str
    line: int


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ASSIGNMENT_HEAD = re.compile(rf"(?:export[ \t]+)?({_NAME})=")
_PLAIN_HEAD = re.compile(rf"{_NAME}=")
_BARE_EXPORT = re.compile(rf"export(?:[ \t]+{_NAME})+[ \t]*(?=$|\n|#|;)")
_BRACED = re.compile(rf"\{{({_NAME})\}}")
_SHELL_SPECIAL = set(";&|<>()`")
_HINT = 'write VAR=value or VAR="value" (the file is read by kdumpd, never run by a shell)'


class _SyntaxProblem(Exception):
    """Internal: one statement the reader cannot take; carries the line it starts on."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Reader:
    """A cursor over the text that reads the plain-assignment subset of shell."""

    def __init__(self, text: str, env: dict[str, str]) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.env = env

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def advance(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        if char == "\n":
            self.line += 1
        return char

    def skip_blanks(self) -> None:
        while self.peek() in (" ", "\t", "\r") and self.peek():
            self.advance()

    def skip_line(self) -> None:
        while self.peek() and self.peek() != "\n":
            self.advance()

    def statements(self) -> tuple[list[Assignment], list[Problem]]:
        """Read everything; on a bad statement, note it and resume at the next line."""
        found: list[Assignment] = []
        problems: list[Problem] = []
        while True:
            self.skip_blanks()
            char = self.peek()
            if not char:
                return found, problems
            if char in ("\n", ";"):
                self.advance()
                continue
            if char == "#":
                self.skip_line()
                continue
            try:
                assignment = self.assignment()
            except _SyntaxProblem as problem:
                problems.append(Problem("", problem.line, problem.message))
                self.skip_line()
                continue
            if assignment is not None:
                found.append(assignment)

    def assignment(self) -> Assignment | None:
        """One ``[export] VAR=value``; None for a bare ``export VAR``, which sets nothing."""
        start = self.line
        bare = _BARE_EXPORT.match(self.text, self.pos)
        if bare:
            self.pos = bare.end()
            return None
        head = _ASSIGNMENT_HEAD.match(self.text, self.pos)
        if not head:
            snippet = self.text[self.pos :].split("\n", 1)[0].strip()
            raise _SyntaxProblem(start, f"cannot parse {snippet!r}; {_HINT}")
        self.pos = head.end()
        value = self.word(start)
        self.env[head.group(1)] = value
        self.skip_blanks()
        after = self.peek()
        # "A=1 B=2" sets both; "A=1 word" would run "word" in a shell.
        if after and after not in "\n;#" and not _PLAIN_HEAD.match(self.text, self.pos):
            raise _SyntaxProblem(
                start,
                f"{head.group(1)}: unquoted blank in the value (a shell would run the rest as a "
                f'command); quote the whole value: {head.group(1)}="..."',
            )
        return Assignment(head.group(1), value, start)

    def word(self, start: int) -> str:
        parts: list[str] = []
        while True:
            char = self.peek()
            if not char or char in " \t\r\n;":
                return "".join(parts)
            if char == "'":
                self.advance()
                end = self.text.find("'", self.pos)
                if end < 0:
                    raise _SyntaxProblem(start, f"unterminated single quote; {_HINT}")
                while self.pos < end:
                    parts.append(self.advance())
                self.advance()
            elif char == '"':
                self.advance()
                parts.append(self.double_quoted(start))
            elif char == "\\":
                self.advance()
                if not self.peek():
                    return "".join(parts)
                escaped = self.advance()
                if escaped != "\n":  # backslash-newline joins lines
                    parts.append(escaped)
            elif char == "$":
                parts.append(self.expansion(start))
            elif char in _SHELL_SPECIAL:
                raise _SyntaxProblem(
                    start, f"the shell character {char!r} needs quoting here; {_HINT}"
                )
            else:
                parts.append(self.advance())

    def double_quoted(self, start: int) -> str:
        parts: list[str] = []
        while True:
            char = self.peek()
            if not char:
                raise _SyntaxProblem(start, f"unterminated double quote; {_HINT}")
            if char == '"':
                self.advance()
                return "".join(parts)
            if char == "\\":
                self.advance()
                escaped = self.peek()
                if escaped in ("$", "`", '"', "\\"):
                    parts.append(self.advance())
                elif escaped == "\n":
                    self.advance()
                else:
                    parts.append("\\")
            elif char == "$":
                parts.append(self.expansion(start))
            elif char == "`":
                raise _SyntaxProblem(
                    start, "command substitution (`...`) is not supported; write the value itself"
                )
            else:
                parts.append(self.advance())

    def expansion(self, start: int) -> str:
        """``$NAME`` or ``${NAME}`` of a variable set earlier; a lone ``$`` is literal."""
        self.advance()  # the "$"
        rest = self.text[self.pos :]
        simple = re.match(_NAME, rest)
        if simple:
            self.pos += simple.end()
            return self.env.get(simple.group(0), "")
        braced = _BRACED.match(rest)
        if braced:
            self.pos += braced.end()
            return self.env.get(braced.group(1), "")
        nxt = rest[:1]
        if nxt == "(":
            raise _SyntaxProblem(
                start, "command substitution $(...) is not supported; write the value itself"
            )
        if nxt and (nxt == "{" or nxt.isdigit() or nxt in "@*#?$!-"):
            raise _SyntaxProblem(
                start, f"only $NAME and ${{NAME}} are expanded, not ${nxt}...; {_HINT}"
            )
        return "$"


def read_assignments(
    text: str, source: str, initial: Mapping[str, str] | None = None
) -> list[Assignment]:
    """Every assignment of the file in order, or ConfigError naming every bad line.

    ``initial`` gives the values ``$VAR`` expands to before the file sets VAR
    (kdumpd passes the architecture defaults, so ``APPEND="$APPEND x"`` extends them).
    """
    reader = _Reader(text, dict(initial or {}))
    found, problems = reader.statements()
    if problems:
        raise ConfigError([Problem(source, p.line, p.message) for p in problems])
    return found


def parse_assignments(
    text: str, source: str, initial: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables the file sets (last assignment wins); ConfigError on a line it cannot read."""
    return {a.name: a.value for a in read_assignments(text, source, initial)}


# -- loading --------------------------------------------------------------


def _apply(
    base: SysConfig, assignments: list[Assignment], source: str
) -> tuple[SysConfig, list[Problem], list[Problem]]:
    """Overlay the file's assignments on the defaults; (config, errors, warnings)."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    changes: dict[str, object] = {}
    for item in assignments:
        attribute = VARIABLES.get(item.name)
        if attribute is None:
            warnings.append(
                Problem(
                    source,
                    item.line,
                    f"unknown variable {item.name} is ignored; "
                    f"known variables are {', '.join(VARIABLES)}",
                )
            )
            continue
        if attribute == "vmcore_creation_notification":
            changes[attribute] = item.value == "yes"
        elif attribute.endswith("loglvl"):
            text = item.value.strip()
            if not (text.isascii() and text.isdigit() and int(text) in _LOG_LEVELS):
                errors.append(
                    Problem(
                        source,
                        item.line,
                        f"{item.name} must be a log level from 0 (none) to 4 (debug), "
                        f"not {item.value!r}",
                    )
                )
                continue
            changes[attribute] = int(text)
        elif attribute in ("keep_dumps", "keep_bytes"):
            number = _retention_value(item.value, sizes=attribute == "keep_bytes")
            if number is None:
                what = "a size such as 20G" if attribute == "keep_bytes" else "a whole number"
                errors.append(
                    Problem(
                        source,
                        item.line,
                        f"{item.name} must be {what} (0 for no limit), not {item.value!r}",
                    )
                )
                continue
            changes[attribute] = number
        else:
            changes[attribute] = item.value
    return replace(base, source=source, **changes), errors, warnings  # type: ignore[arg-type]


def variables_files(paths: Paths) -> list[tuple[Path, str]]:
    """The variables files present, as (location, shown name), the one in effect first.

    /etc/sysconfig/kdump (Fedora/RHEL) wins over Debian's /etc/default/kdump.
    """
    candidates = [(paths.sysconfig_kdump, SYSCONFIG_KDUMP), (paths.default_kdump, DEFAULT_KDUMP)]
    return [(location, shown) for location, shown in candidates if location.is_file()]


def _retention_value(text: str, *, sizes: bool) -> int | None:
    """A count, or with ``sizes`` a byte size with an optional K/M/G/T suffix; None if neither."""
    value = text.strip().upper().removesuffix("B") if sizes else text.strip()
    suffix = value[-1:] if sizes and value[-1:] in _SIZE_SUFFIXES else ""
    digits = value[: len(value) - len(suffix)]
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits) * _SIZE_SUFFIXES[suffix]


def load_sysconfig(paths: Paths, arch: str) -> tuple[SysConfig, tuple[Problem, ...]]:
    """The kdump variables for ``arch``, and the warnings reading them produced.

    /etc/sysconfig/kdump wins when it exists, else Debian's /etc/default/kdump,
    else the built-in defaults. A variable the file leaves unset keeps the arch
    default. Raises ConfigError for lines that cannot be read or bad values.
    """
    defaults = arch_defaults(arch)
    present = variables_files(paths)
    if not present:
        return defaults, ()
    location, source = present[0]
    warnings: list[Problem] = []
    if len(present) > 1:
        warnings.append(
            Problem(
                present[1][1],
                0,
                f"ignored because {source} exists and takes precedence; "
                "merge the settings into one file and remove the other",
            )
        )
    try:
        text = location.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(
            [Problem(source, 0, f"cannot read the kdump variables file: {exc.strerror}")]
        ) from exc
    assignments = read_assignments(text, source, initial=as_variables(defaults))
    config, errors, more_warnings = _apply(defaults, assignments, source)
    if errors:
        raise ConfigError(errors)
    return config, (*warnings, *more_warnings)

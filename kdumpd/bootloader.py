"""The kernel command line the machine boots with next: reading and editing its parameters.

Owns the places where ``crashkernel=`` (and ``fadump=``) live between boots, and how
kdumpd changes them without touching anything else:

* **Debian GRUB**: ``/etc/default/grub`` and ``/etc/default/grub.d/*.cfg``, turned into
  ``/boot/grub/grub.cfg`` by ``update-grub``. kdumpd's own values live in its drop-in
  ``/etc/default/grub.d/kdumpd.cfg``, which adds a parameter only when no file before it
  set one: a value the administrator wrote anywhere else always wins.
* **Boot Loader Specification entries** ``/boot/loader/entries/*.conf``: their
  ``options`` lines, changed through ``grubby`` when it is installed, else edited here.
* **``/etc/kernel/cmdline``**: the command line kernel-install gives new entries and UKIs.

What kdumpd itself set is recorded in ``/var/lib/kdumpd/boot-params`` (one
``kind<TAB>file<TAB>name=value`` line per setting). That record is how a later automatic
reset tells kdumpd's value from the administrator's, and how purging the package (a
shell script, when this code is already gone) removes exactly what was added.

Reading never runs the configuration: GRUB's files are shell, so their assignments of
``GRUB_CMDLINE_LINUX``/``GRUB_CMDLINE_LINUX_DEFAULT`` are parsed, not sourced.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kdumpd import durable, proc
from kdumpd.errors import KdumpError
from kdumpd.paths import Paths

GRUB = "grub"
BLS = "bls"
KERNEL_CMDLINE = "kernel-cmdline"

#: The parameters kdumpd manages on the boot command line.
MANAGED = ("crashkernel", "fadump")

DROP_IN_NAME = "kdumpd.cfg"
RECORD_NAME = "boot-params"
_GRUB_VARS = ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT")
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(.*)$")
_EXPANSION = re.compile(
    r"\$(?:\{(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)\}|(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)\b)"
)
# Parameter values kdumpd writes: sizes, ranges and fadump modes. Anything else is
# refused before it reaches a shell-sourced drop-in or an options line.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9@:,._+-]+$")


class BootConfigError(KdumpError):
    """The boot configuration cannot be read or changed as asked."""


# ---------------------------------------------------------------------------
# locations and the record


@dataclass(frozen=True)
class Location:
    """One place that decides boot parameters, with what it says now.

    ``kind`` is :data:`GRUB`, :data:`BLS` or :data:`KERNEL_CMDLINE`. ``file`` is the
    file that holds the values (for GRUB: the drop-in when kdumpd set them, else the
    file where the administrator did, else the drop-in to be). ``kernel`` is the kernel
    image the location boots (BLS) or ``None`` when it applies to every kernel.
    ``values`` maps each managed parameter to its current value (``None``: absent);
    ``source`` maps it to the file that set it.
    """

    kind: str
    file: Path
    kernel: str | None
    version: str | None
    values: Mapping[str, str | None]
    source: Mapping[str, Path | None]

    def value(self, name: str) -> str | None:
        return self.values.get(name)


@dataclass(frozen=True)
class Change:
    """One parameter of one location, from ``old`` to ``new`` (``None``: absent)."""

    location: Location
    name: str
    old: str | None
    new: str | None


def record_path(paths: Paths) -> Path:
    return paths.state_dir / RECORD_NAME


def drop_in_path(paths: Paths) -> Path:
    return paths.under_root("/etc/default/grub.d") / DROP_IN_NAME


def shown(paths: Paths, location: Path) -> str:
    """A tree path as the managed system names it."""
    return paths.shown(location)


def read_record(paths: Paths) -> dict[tuple[str, str, str], str]:
    """What kdumpd set: ``(kind, file as the system names it, name) -> value``."""
    try:
        text = record_path(paths).read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BootConfigError(f"cannot read {record_path(paths)}: {exc.strerror}") from exc
    record: dict[tuple[str, str, str], str] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 3 or "=" not in fields[2]:
            continue
        name, _, value = fields[2].partition("=")
        record[(fields[0], fields[1], name)] = value
    return record


def write_record(paths: Paths, record: Mapping[tuple[str, str, str], str]) -> None:
    lines = [
        f"{kind}\t{file}\t{name}={value}\n" for (kind, file, name), value in sorted(record.items())
    ]
    target = record_path(paths)
    if not lines:
        target.unlink(missing_ok=True)
        return
    write_atomic(target, "".join(lines))


def recorded_value(
    paths: Paths, record: Mapping[tuple[str, str, str], str], location: Location, name: str
) -> str | None:
    return record.get((location.kind, shown(paths, location.file), name))


# ---------------------------------------------------------------------------
# command-line words


def split_words(text: str) -> list[str]:
    return text.split()


def param_value(words: Sequence[str], name: str) -> str | None:
    """The value of the last ``name=`` word (the kernel uses the last one), else None."""
    found: str | None = None
    for word in words:
        key, sep, value = word.partition("=")
        if key == name and sep:
            found = value
    return found


def set_param(words: Sequence[str], name: str, value: str | None) -> list[str]:
    """``words`` with every ``name=`` word replaced by one ``name=value`` (or removed).

    The new word takes the place of the first old one, so the order of the other
    parameters is kept; with none before, it is appended.
    """
    out: list[str] = []
    placed = False
    for word in words:
        key, sep, _ = word.partition("=")
        if key == name and sep:
            if value is not None and not placed:
                out.append(f"{name}={value}")
                placed = True
            continue
        out.append(word)
    if value is not None and not placed:
        out.append(f"{name}={value}")
    return out


def check_value(name: str, value: str) -> None:
    if name not in MANAGED:
        raise BootConfigError(f"{name}= is not a parameter kdumpd manages")
    if not _SAFE_VALUE.match(value):
        raise BootConfigError(
            f"{name}={value!r}: not a valid value (letters, digits and @:,._+- only)"
        )


# ---------------------------------------------------------------------------
# Debian GRUB


def grub_in_use(paths: Paths) -> bool:
    """Debian's GRUB: /etc/default/grub and update-grub, and no BLS entries to edit."""
    return (
        paths.under_root("/etc/default/grub").is_file()
        and _program(paths, "update-grub") is not None
        and not bls_entries(paths)
    )


def grub_files(paths: Paths) -> list[Path]:
    """The files update-grub sources, in its order: /etc/default/grub, then grub.d/*.cfg."""
    files = [paths.under_root("/etc/default/grub")]
    directory = paths.under_root("/etc/default/grub.d")
    if directory.is_dir():
        files += sorted(p for p in directory.glob("*.cfg") if p.is_file())
    return [f for f in files if f.is_file()]


def _shell_words(text: str, where: str) -> str:
    """The value of an assignment's right-hand side, as the shell would join it."""
    try:
        parts = shlex.split(text, comments=True, posix=True)
    except ValueError as exc:
        raise BootConfigError(
            f"{where}: cannot parse the assignment ({exc}); fix the quoting"
        ) from exc
    return " ".join(parts)


def read_grub(paths: Paths) -> Location:
    """What update-grub would put on the command line for the managed parameters."""
    variables = {name: "" for name in _GRUB_VARS}
    source: dict[str, Path | None] = dict.fromkeys(MANAGED)
    drop_in = drop_in_path(paths)
    for path in grub_files(paths):
        if path == drop_in:
            for name, value in parse_drop_in(path.read_text()).items():
                words = split_words(
                    variables["GRUB_CMDLINE_LINUX"] + " " + variables["GRUB_CMDLINE_LINUX_DEFAULT"]
                )
                if param_value(words, name) is None:
                    variables["GRUB_CMDLINE_LINUX_DEFAULT"] += f" {name}={value}"
                    source[name] = path
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            match = _ASSIGNMENT.match(line)
            if match is None:
                continue
            rhs = _EXPANSION.sub(lambda m: variables[m.group(1) or m.group(2)], match.group(2))
            value = _shell_words(rhs, f"{shown(paths, path)}:{number}")
            variables[match.group(1)] = value
            for name in MANAGED:
                if param_value(split_words(value), name) is not None:
                    source[name] = path
    words = split_words(
        variables["GRUB_CMDLINE_LINUX"] + " " + variables["GRUB_CMDLINE_LINUX_DEFAULT"]
    )
    values = {name: param_value(words, name) for name in MANAGED}
    for name in MANAGED:
        if values[name] is None:
            source[name] = None
    held = {s for s in source.values() if s is not None}
    file = next(iter(held)) if len(held) == 1 else drop_in
    return Location(GRUB, file, None, None, values, source)


def parse_drop_in(text: str) -> dict[str, str]:
    """The parameters kdumpd's drop-in sets (from its ``# kdumpd-param`` lines)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# kdumpd-param "):
            name, sep, value = line[len("# kdumpd-param ") :].strip().partition("=")
            if sep and name in MANAGED:
                values[name] = value
    return values


def render_drop_in(values: Mapping[str, str]) -> str:
    """kdumpd's grub.d drop-in: each parameter added only where no file before set it."""
    lines = [
        "# Written by kdumpd (kdumpctl reset-crashkernel); purging kdumpd removes it.\n",
        "# A parameter set here is added only when /etc/default/grub or a drop-in read\n",
        "# before this one has not set it: to choose your own size, set crashkernel= there\n",
        "# and kdumpd leaves it alone. Run update-grub after editing.\n",
    ]
    for name, value in sorted(values.items()):
        check_value(name, value)
        lines.append(f"# kdumpd-param {name}={value}\n")
    for name, value in sorted(values.items()):
        lines += [
            'case " ${GRUB_CMDLINE_LINUX} ${GRUB_CMDLINE_LINUX_DEFAULT} " in\n',
            f'*" {name}="*) ;;\n',
            f'*) GRUB_CMDLINE_LINUX_DEFAULT="${{GRUB_CMDLINE_LINUX_DEFAULT}} {name}={value}" ;;\n',
            "esac\n",
        ]
    return "".join(lines)


def _edit_grub_file(path: Path, name: str, value: str | None) -> None:
    """Replace (or drop) ``name=`` inside the GRUB_CMDLINE assignments of an admin's file.

    Only the word itself changes; every other character of the file stays.
    """
    pattern = re.compile(rf"(?<![\w.-]){re.escape(name)}=[^\s\"']*")
    out: list[str] = []
    for line in path.read_text().splitlines(keepends=True):
        if _ASSIGNMENT.match(line):
            if value is None:
                line = re.sub(rf"\s?{pattern.pattern}", "", line)
            else:
                line = pattern.sub(f"{name}={value}", line)
        out.append(line)
    write_atomic(path, "".join(out), like=path)


def _apply_grub(paths: Paths, location: Location, changes: Sequence[Change]) -> None:
    drop_in = drop_in_path(paths)
    current = parse_drop_in(drop_in.read_text()) if drop_in.is_file() else {}
    for change in changes:
        origin = location.source.get(change.name)
        if origin is not None and origin != drop_in:
            _edit_grub_file(origin, change.name, change.new)
            # The administrator's value now says what was asked: ours would be ignored.
            current.pop(change.name, None)
        elif change.new is None:
            current.pop(change.name, None)
        else:
            current[change.name] = change.new
    if current:
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(drop_in, render_drop_in(current), mode=0o644)
    else:
        drop_in.unlink(missing_ok=True)


def update_grub(paths: Paths) -> None:
    """Regenerate /boot/grub/grub.cfg (inside the tree when the root is not /)."""
    program = _program(paths, "update-grub") or "update-grub"
    argv = [program] if paths.root == Path("/") else ["chroot", str(paths.root), "update-grub"]
    try:
        proc.run(argv, timeout=600)
    except proc.ProgramError as exc:
        raise BootConfigError(
            f"update-grub failed: {exc}. The files under /etc/default are changed; "
            "fix the problem and run update-grub"
        ) from exc


# ---------------------------------------------------------------------------
# BLS entries


def bls_dir(paths: Paths) -> Path:
    return paths.boot / "loader" / "entries"


def bls_entries(paths: Paths) -> list[Path]:
    directory = bls_dir(paths)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.conf") if p.is_file())


def _bls_fields(text: str) -> tuple[dict[str, str], list[str]]:
    fields: dict[str, str] = {}
    options: list[str] = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if not key or key.startswith("#"):
            continue
        if key == "options":
            options += split_words(value)
        else:
            fields.setdefault(key, value.strip())
    return fields, options


def read_bls(paths: Paths, entry: Path) -> Location:
    fields, options = _bls_fields(entry.read_text(errors="replace"))
    values = {name: param_value(options, name) for name in MANAGED}
    source = {name: (entry if values[name] is not None else None) for name in MANAGED}
    return Location(BLS, entry, fields.get("linux"), fields.get("version"), values, source)


def _edit_bls(entry: Path, name: str, value: str | None) -> None:
    """Change ``name=`` on the options lines; other lines and parameters stay as they are."""
    out: list[str] = []
    first_options = -1
    for line in entry.read_text().splitlines():
        key, _, rest = line.strip().partition(" ")
        if key == "options":
            words = set_param(split_words(rest), name, None)
            if first_options < 0:
                first_options = len(out)
            line = "options " + " ".join(words) if words else "options"
        out.append(line)
    if value is not None:
        if first_options < 0:
            out.append(f"options {name}={value}")
        else:
            out[first_options] = out[first_options].rstrip() + f" {name}={value}"
    write_atomic(entry, "\n".join(out) + "\n", like=entry)


def _apply_bls(paths: Paths, location: Location, changes: Sequence[Change]) -> None:
    grubby = _program(paths, "grubby")
    for change in changes:
        if grubby is None:
            _edit_bls(location.file, change.name, change.new)
            continue
        kernel = location.kernel or ""
        if not kernel.startswith("/boot/"):
            kernel = "/boot" + (kernel if kernel.startswith("/") else "/" + kernel)
        argv = [grubby, f"--update-kernel={kernel}", f"--bls-directory={bls_dir(paths)}"]
        argv.append(
            f"--args={change.name}={change.new}"
            if change.new is not None
            else f"--remove-args={change.name}"
        )
        try:
            proc.run(argv, timeout=120)
        except proc.ProgramError as exc:
            raise BootConfigError(
                f"grubby could not update {shown(paths, location.file)}: {exc}"
            ) from exc


# ---------------------------------------------------------------------------
# /etc/kernel/cmdline


def kernel_cmdline_file(paths: Paths) -> Path:
    return paths.under_root("/etc/kernel/cmdline")


def read_kernel_cmdline(paths: Paths) -> Location:
    path = kernel_cmdline_file(paths)
    words = split_words(path.read_text(errors="replace"))
    values = {name: param_value(words, name) for name in MANAGED}
    source = {name: (path if values[name] is not None else None) for name in MANAGED}
    return Location(KERNEL_CMDLINE, path, None, None, values, source)


def _apply_kernel_cmdline(location: Location, changes: Sequence[Change]) -> None:
    words = split_words(location.file.read_text())
    for change in changes:
        words = set_param(words, change.name, change.new)
    write_atomic(location.file, " ".join(words) + "\n", like=location.file)


# ---------------------------------------------------------------------------
# all of them


def locations(paths: Paths) -> list[Location]:
    """Every place that sets boot parameters on this system, in the order they are changed."""
    found: list[Location] = []
    entries = bls_entries(paths)
    found += [read_bls(paths, entry) for entry in entries]
    if not entries and grub_in_use(paths):
        found.append(read_grub(paths))
    if kernel_cmdline_file(paths).is_file():
        found.append(read_kernel_cmdline(paths))
    return found


def describe(paths: Paths, location: Location) -> str:
    """Where a change lands, as a message says it."""
    if location.kind == GRUB:
        return f"{shown(paths, location.file)} (every kernel GRUB boots)"
    if location.kind == BLS:
        kernel = location.kernel or location.version or "?"
        return f"{shown(paths, location.file)} (kernel {kernel})"
    return f"{shown(paths, location.file)} (kernels and UKIs kernel-install makes)"


def apply(paths: Paths, changes: Iterable[Change]) -> list[Change]:
    """Carry out ``changes``, record what kdumpd now sets, regenerate GRUB's config.

    A GRUB parameter that an administrator's file sets is changed in that file (only
    an explicit ``kdumpctl reset-crashkernel`` asks for that); every other GRUB value
    goes to kdumpd's drop-in. Returns the changes made, in order.
    """
    groups: dict[tuple[str, Path], list[Change]] = {}
    for change in changes:
        if change.new is not None:
            check_value(change.name, change.new)
        if change.old != change.new:
            groups.setdefault((change.location.kind, change.location.file), []).append(change)
    done: list[Change] = []
    if not groups:
        return done
    record = read_record(paths)
    drop_in = drop_in_path(paths)
    for (kind, _), items in groups.items():
        location = items[0].location
        try:
            if kind == GRUB:
                _apply_grub(paths, location, items)
            elif kind == BLS:
                _apply_bls(paths, location, items)
            else:
                _apply_kernel_cmdline(location, items)
        except OSError as exc:
            where = (
                shown(paths, Path(exc.filename)) if exc.filename else shown(paths, location.file)
            )
            raise BootConfigError(
                f"cannot change {where}: {exc.strerror}; run kdumpctl as root"
            ) from exc
        for change in items:
            origin = location.source.get(change.name) if kind == GRUB else None
            admins = origin is not None and origin != drop_in
            file = drop_in if kind == GRUB else location.file
            key = (kind, shown(paths, file), change.name)
            if change.new is not None and not admins:
                record[key] = change.new
            else:
                record.pop(key, None)
            done.append(change)
    try:
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        write_record(paths, record)
    except OSError as exc:
        raise BootConfigError(
            f"cannot record kdumpd's boot parameters in {shown(paths, record_path(paths))}: "
            f"{exc.strerror}; run kdumpctl as root"
        ) from exc
    if any(kind == GRUB for kind, _ in groups):
        update_grub(paths)
    return done


def with_value(location: Location, name: str, value: str | None) -> Location:
    values = dict(location.values)
    values[name] = value
    return replace(location, values=values)


# ---------------------------------------------------------------------------
# helpers


def _program(paths: Paths, name: str) -> str | None:
    """The program's path inside the tree (as the system names it), if installed."""
    for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        candidate = paths.under_root(f"{directory}/{name}")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return f"{directory}/{name}"
    return None


def write_atomic(
    path: Path, text: str, *, like: Path | None = None, mode: int | None = None
) -> None:
    """Replace ``path`` durably (:func:`kdumpd.durable.write_atomic`), keeping the mode of
    ``like`` when it exists (a boot entry or /etc/kernel/cmdline keeps its permissions)."""
    keep = mode if mode is not None else 0o644
    if like is not None and like.exists():
        keep = like.stat().st_mode & 0o7777
    durable.write_atomic(path, text.encode(), mode=keep)
    # The file's mode at creation is filtered by the umask; set it exactly.
    os.chmod(path, keep)

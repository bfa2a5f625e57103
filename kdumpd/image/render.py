"""Rendering the dracut module's files from dracut-module/templates (jinja2).

StrictUndefined, no autoescape; a template may print only values that went
through a quoting filter of the dialect it writes (:func:`shell_quote` for
bash), and the finalize hook fails any ``{{ }}`` that skipped it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

from kdumpd.contract.plan import PLAN_PATH_IN_IMAGE, MountSpec
from kdumpd.image.agent import AGENT_DIR_IN_IMAGE, AGENT_PROGRAMS, TARGET_PYTHON
from kdumpd.image.init import IPCONFIG, KDUMPD_INIT, SYSTEMD_INIT
from kdumpd.paths import Paths

_UNIT_SAFE = re.compile(r"^[A-Za-z0-9_./+-]+$")


class Quoted(str):
    """Text that went through :func:`shell_quote`: the only thing a bash template may print."""


class UnitQuoted(str):
    """Text that went through :func:`unit_quote` or :func:`unit_path`: what a unit file prints."""


def shell_quote(value: object) -> Quoted:
    """Quote a value as one shell word; a list or tuple becomes space-separated words.

    None and booleans are refused: a template printing them is a bug.
    """
    if isinstance(value, Quoted):
        return value
    if isinstance(value, list | tuple):
        return Quoted(" ".join(shlex.quote(_word(v)) for v in value))
    return Quoted(shlex.quote(_word(value)))


def comment_text(value: object) -> Quoted:
    """A value for a ``#`` comment line: quoted, and refused if it could end the comment.

    A newline (or any control character) would end the comment and turn the
    rest of the value into commands of a file that runs as root.
    """
    text = shell_quote(value)
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise ValueError(f"refusing to render {str(value)!r} into a comment: control character")
    return text


# Characters a word of a unit file may hold as they are (systemd.syntax(7), systemd.service(5)
# "Command lines"): no quotes, backslashes, blanks, specifiers (%) or variables ($).
_UNIT_PLAIN = re.compile(r"^[A-Za-z0-9_./+:@=,-]+$")
_UNIT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "%": "%%", "$": "$$"}


def _unit_word(text: str) -> str:
    if _UNIT_PLAIN.match(text):
        return text
    out = []
    for char in text:
        if char in _UNIT_ESCAPES:
            out.append(_UNIT_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def unit_quote(value: object) -> UnitQuoted:
    """Quote a value as one word of a unit file's command line (or comment), by systemd's rules.

    Double quotes with C-style escapes, ``%%`` for a literal ``%`` (specifiers) and
    ``$$`` for a literal ``$`` (variables); a list or tuple becomes words separated
    by spaces. What comes out never spans lines.
    """
    if isinstance(value, UnitQuoted):
        return value
    if isinstance(value, list | tuple):
        return UnitQuoted(" ".join(_unit_word(_word(v)) for v in value))
    return UnitQuoted(_unit_word(_word(value)))


def unit_path(value: object) -> UnitQuoted:
    """An absolute path for a unit setting that takes a path (``WorkingDirectory=``).

    Such settings do not unquote, so only paths that need no quoting are accepted.
    """
    text = _word(value)
    if not text.startswith("/") or not _UNIT_PLAIN.match(text):
        raise ValueError(f"{text!r} cannot be written as a path in a unit file")
    return UnitQuoted(text)


def _word(value: object) -> str:
    import jinja2  # loaded already: only a render calls this

    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # StrictUndefined: name the missing variable
    if value is None or isinstance(value, bool):
        raise ValueError(f"refusing to render {value!r} into generated text")
    if isinstance(value, str | int | Path):
        return str(value)
    raise ValueError(f"refusing to render a {type(value).__name__} into generated text")


#: The dialect of each generated file, by its name's ending: how values are quoted in it.
DIALECTS: dict[str, tuple[type[str], str]] = {
    ".sh": (Quoted, "shell_quote"),
    ".service": (UnitQuoted, "unit_quote"),
    ".target": (UnitQuoted, "unit_quote"),
    ".conf": (UnitQuoted, "unit_quote"),  # systemd drop-ins and journald.conf.d
}


def dialect_of(name: str) -> str:
    """The dialect (a key of :data:`DIALECTS`) of a template: ``kdumpd-setup.sh.j2`` is ``.sh``."""
    for suffix in DIALECTS:
        if name.removesuffix(".j2").endswith(suffix):
            return suffix
    raise ValueError(f"template {name}: no quoting dialect for this kind of file")


def template_environment(template_dir: Path, dialect: str = ".sh") -> jinja2.Environment:
    """The jinja2 environment for dracut-module/templates of one dialect.

    Any ``{{ }}`` that did not go through that dialect's filter fails the render.
    """
    allowed, name = DIALECTS[dialect]

    def only_quoted(value: object) -> object:
        if isinstance(value, allowed):
            return value
        raise ValueError(f"template printed {value!r} without the {name} filter")

    # Imported here: jinja2 costs the long-running daemon about 3 MB of RSS, and
    # only an image build renders templates.
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=only_quoted,
    )
    if allowed is Quoted:
        env.filters["shell_quote"] = shell_quote
        env.filters["comment"] = comment_text
    else:
        env.filters["unit_quote"] = unit_quote
        env.filters["unit_path"] = unit_path
    return env


def default_template_dir(paths: Paths) -> Path:
    """The templates: next to the source tree when run from it, else the installed copy."""
    source_tree = Path(__file__).resolve().parents[2] / "dracut-module" / "templates"
    if source_tree.is_dir():
        return source_tree
    return paths.under_root("/usr/share/kdumpd/dracut-module/templates")


def template_files(template_dir: Path) -> list[Path]:
    return sorted(p for p in template_dir.glob("*.j2") if p.is_file())


@dataclass(frozen=True)
class ModuleContext:
    """Every value the templates interpolate."""

    kernel_release: str
    build_dir: str
    agent_files: tuple[str, ...]
    python_files: tuple[str, ...]
    python_extensions: tuple[str, ...]
    collector: str
    vmcore_dmesg: str
    user_programs: tuple[str, ...]
    failure_action: str
    #: Whose /init the image runs (:mod:`kdumpd.image.init`): "kdumpd" or "systemd".
    init: str = SYSTEMD_INIT
    #: For the small init: the plan's devices, flattened triples: path, blkid tag, value.
    wait_devices: tuple[str, ...] = ()
    agent_dir: str = AGENT_DIR_IN_IMAGE
    python: str = TARGET_PYTHON
    plan_path: str = PLAN_PATH_IN_IMAGE
    agent_programs: tuple[str, ...] = AGENT_PROGRAMS
    self_check_modules: tuple[str, ...] = ("kdumpd.capture",)
    #: Programs the target needs (ssh: ssh and ip).
    target_programs: tuple[str, ...] = ()
    #: Files staged in the build dir for the image, flattened triples: build name, image path, mode.
    image_files: tuple[str, ...] = ()
    #: Units started with initrd.target (dracut's networkd module only enables it for
    #: multi-user.target, which an initrd never reaches).
    start_units: tuple[str, ...] = ()
    #: None: python3 and the stdlib the agent needs are in the image. Else the target
    #: filesystem is the root filesystem: the agent's starter mounts it first and runs
    #: python from there (see :func:`kdumpd.image.agent.agent_root_mount`).
    root_mount: MountSpec | None = None
    #: The interpreter's real file (python3 is a relative symlink) for agent_from="root".
    python_real: str = TARGET_PYTHON
    device_wait_seconds: int = 300
    #: For the small init: NICs whose driver chain (the NIC's and its bus parents')
    #: 99kdumpd's installkernel installs, as the first kernel names them.
    nics: tuple[str, ...] = ()
    #: For the small init: the MAC of the NIC ipconfig brings up ("" for none), its static
    #: IPv4 address, netmask and gateway (all "" for DHCP), and how long to wait for it.
    network_mac: str = ""
    network_address: str = ""
    network_netmask: str = ""
    network_gateway: str = ""
    network_wait_seconds: int = 180
    ipconfig: str = IPCONFIG

    @property
    def agent_from(self) -> str:
        """Where the agent's python comes from: "root" (the root filesystem) or "image"."""
        return "root" if self.root_mount is not None else "image"

    @property
    def dracut_depends(self) -> tuple[str, ...]:
        """The dracut modules 99kdumpd depends on: only bash for the small init."""
        if self.init == KDUMPD_INIT:
            return ("bash", "kernel-modules")
        return ("base", "systemd", "systemd-initrd", "udev-rules")

    @property
    def fallback_action(self) -> str:
        """What the init does when even the agent's error handler cannot run."""
        return self.failure_action if self.failure_action in ("halt", "poweroff") else "reboot"

    def values(self) -> dict[str, Any]:
        for name in ("agent_dir", "python", "python_real"):
            if not _UNIT_SAFE.match(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)!r} cannot go into a unit file")
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["agent_from"] = self.agent_from
        data["fallback_action"] = self.fallback_action
        data["dracut_depends"] = self.dracut_depends
        data["self_check"] = SELF_CHECK
        return data


#: Run by the module inside the staged image: import the agent and every module it needs.
SELF_CHECK = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "for name in sys.argv[2:]:\n"
    "    __import__(name)\n"
)


def render_module(context: ModuleContext, *, template_dir: Path, out_dir: Path) -> list[Path]:
    """Render every template into ``out_dir`` (name without .j2); return the files written."""
    values = context.values()
    written: list[Path] = []
    for template in template_files(template_dir):
        env = template_environment(template_dir, dialect_of(template.name))
        text = env.get_template(template.name).render(**values)
        target = out_dir / template.name.removesuffix(".j2")
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written

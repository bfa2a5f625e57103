"""The capture initramfs: render the dracut module, run dracut, record what went in.

How the module reaches dracut: the package installs the static shim
``dracut-module/99kdumpd/module-setup.sh`` into dracut's modules.d; before each
build :func:`build` renders ``dracut-module/templates/*.j2`` (jinja2,
StrictUndefined, no autoescape, every value through :func:`shell_quote`) into
a fresh build directory together with the plan JSON and a copy of the capture
agent, and runs dracut with ``KDUMPD_BUILD_DIR`` naming that directory.

What the image holds (memory is a feature: all of it lives in the crash
reservation): dracut's systemd initrd base, the drivers of the target device
(``--add-device``, strict host-only) and filesystem (``--add-drivers``),
python3 with exactly the stdlib files the agent imports (computed by running
the target python), makedumpfile, vmcore-dmesg, hooks and extra_bins. When
the target is the root filesystem (the default), python3 and its stdlib stay
out: the units start ``kdumpd-agent.sh``, which mounts the target and runs the
root's python from it (:func:`agent_root_mount`; measured with
tests/vm/bench_capture.py). The
agent mounts the target itself from the plan: no fstab entry, no
``--mount``, because a mount unit failing would send the boot to emergency
mode before the agent could choose failure_action (dump_to_rootfs needs the
agent in control), and the agent can wait for the device with its own,
reported, timeout.

Rebuilds are decided by a manifest of content hashes of every input
(:func:`compute_manifest`, :func:`rebuild_reason`), not by mtimes: touching a
file rebuilds nothing, changing a byte rebuilds.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

import kdumpd
from kdumpd import proc
from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.errors import ConfigError, KdumpError, Problem
from kdumpd.paths import Paths
from kdumpd.plan import CONFIG_FILE, PLAN_PATH_IN_IMAGE, CapturePlan, MountSpec

#: Where the agent package lives inside the image (the unit's working directory).
AGENT_DIR_IN_IMAGE = "/usr/lib/kdumpd"
#: The interpreter of the capture side (Debian's; the agent is stdlib-only).
TARGET_PYTHON = "/usr/bin/python3"
#: The script both capture units start (kdumpd-agent.sh.j2): it runs the agent.
AGENT_STARTER = "kdumpd-agent.sh"
#: Files of our package the agent needs, relative to the package directory.
AGENT_MODULES: tuple[str, ...] = ("__init__.py", "proc.py", "errors.py", "plan.py")
AGENT_SUBPACKAGES: tuple[str, ...] = ("capture",)
#: Programs the agent runs besides the collector and vmcore-dmesg.
AGENT_PROGRAMS: tuple[str, ...] = ("mount", "umount", "sync", "dmesg", "sh")
#: dracut modules of every capture image; device stacks (lvm, dm, ...) are added per target.
BASE_DRACUT_MODULES: tuple[str, ...] = (
    "bash",
    "systemd",
    "systemd-initrd",
    "kernel-modules",
    "udev-rules",
    "base",
    "kdumpd",
)
#: ~38 MB of GPU firmware nobody needs to write a dump (kdump-utils omits them too).
OMIT_DRIVERS: tuple[str, ...] = ("nouveau", "amdgpu")
#: Debian's dracut-network ships /etc/dracut.conf.d/11-ifcfg.conf (add_dracutmodules+=ifcfg),
#: which drags network, dbus and NetworkManager/networkd into every image, local
#: targets too (about 1 MB more compressed, and networkd started in every capture).
OMIT_DRACUT_MODULES: tuple[str, ...] = ("ifcfg",)
#: dracut flags that choose the compression; when the user gives one we add none.
COMPRESSION_FLAGS = frozenset(
    {
        "--gzip",
        "--bzip2",
        "--lzma",
        "--xz",
        "--lzo",
        "--lz4",
        "--zstd",
        "--no-compress",
        "--compress",
        "--squash-compressor",
    }
)
DRACUT_TIMEOUT = 600.0
PROGRAM_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
MODULE_SUFFIXES: tuple[str, ...] = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_UNIT_SAFE = re.compile(r"^[A-Za-z0-9_./+-]+$")


class BuildError(KdumpError):
    """The capture initramfs could not be built."""

    dbus_name = "org.kdumpd.Error.BuildFailed"


# -- rendering ----------------------------------------------------------------


class Quoted(str):
    """Text that went through :func:`shell_quote`; the only thing templates may print."""


def shell_quote(value: object) -> Quoted:
    """Quote a value as one shell word; a list or tuple becomes space-separated words.

    None and booleans are refused: a template printing them is a bug.
    """
    if isinstance(value, Quoted):
        return value
    if isinstance(value, list | tuple):
        return Quoted(" ".join(shlex.quote(_word(v)) for v in value))
    return Quoted(shlex.quote(_word(value)))


def _word(value: object) -> str:
    import jinja2  # loaded already: only a render calls this

    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # StrictUndefined: name the missing variable
    if value is None or isinstance(value, bool):
        raise ValueError(f"refusing to render {value!r} into shell text")
    if isinstance(value, str | int | Path):
        return str(value)
    raise ValueError(f"refusing to render a {type(value).__name__} into shell text")


def _only_quoted(value: object) -> object:
    """jinja2 finalize hook: any ``{{ }}`` that skipped shell_quote fails the render."""
    if isinstance(value, Quoted):
        return value
    raise ValueError(f"template printed {value!r} without the shell_quote filter")


def template_environment(template_dir: Path) -> jinja2.Environment:
    """The jinja2 environment for dracut-module/templates."""
    # Imported here: jinja2 costs the long-running daemon about 3 MB of RSS, and
    # only an image build renders templates.
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_only_quoted,
    )
    env.filters["shell_quote"] = shell_quote
    return env


def default_template_dir(paths: Paths) -> Path:
    """The templates: next to the source tree when run from it, else the installed copy."""
    source_tree = Path(__file__).resolve().parent.parent / "dracut-module" / "templates"
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
    dracut_depends: tuple[str, ...] = ("base", "systemd", "systemd-initrd", "udev-rules")
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
    #: "image": python3 and the stdlib the agent needs are in the image. "root": the
    #: target filesystem is the root filesystem, so the agent's starter mounts it first
    #: and runs python from there (see :func:`agent_root_mount`).
    agent_from: str = "image"
    root_device: str = ""
    root_mountpoint: str = ""
    root_fstype: str = ""
    root_options: str = ""
    #: The interpreter's real file (python3 is a relative symlink) for agent_from="root".
    python_real: str = TARGET_PYTHON
    device_wait_seconds: int = 300

    @property
    def fallback_action(self) -> str:
        """What systemd does when even the agent's error handler cannot run."""
        return self.failure_action if self.failure_action in ("halt", "poweroff") else "reboot"

    def values(self) -> dict[str, Any]:
        for name in ("agent_dir", "python", "python_real"):
            if not _UNIT_SAFE.match(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)!r} cannot go into a unit file")
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["fallback_action"] = self.fallback_action
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
    env = template_environment(template_dir)
    values = context.values()
    written: list[Path] = []
    for template in template_files(template_dir):
        text = env.get_template(template.name).render(**values)
        target = out_dir / template.name.removesuffix(".j2")
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


# -- the capture agent and the stdlib it needs -----------------------------------


def agent_sources(package_dir: Path | None = None) -> dict[str, Path]:
    """The agent's files, keyed by path relative to the image's agent dir (``kdumpd/...``).

    kdumpd/capture/ and every module of our package it imports at module level
    (transitively, ``if TYPE_CHECKING:`` blocks excepted), with the packages'
    ``__init__.py``. Lazy imports of our package inside functions are not
    followed: plan.py's first-kernel compile functions must not drag the
    config and target code into the image.
    """
    base = package_dir if package_dir is not None else Path(kdumpd.__file__).parent
    files: dict[str, Path] = {}
    pending: list[Path] = [base / name for name in AGENT_MODULES]
    for sub in AGENT_SUBPACKAGES:
        pending += sorted(p for p in (base / sub).rglob("*.py") if "__pycache__" not in p.parts)
    while pending:
        path = pending.pop()
        relative = f"kdumpd/{path.relative_to(base).as_posix()}"
        if relative in files or not path.is_file():
            continue
        files[relative] = path
        parent = path.parent
        while parent != base and base in parent.parents:
            pending.append(parent / "__init__.py")
            parent = parent.parent
        for name in _module_level_imports(path.read_text(encoding="utf-8")):
            if name == "kdumpd" or name.startswith("kdumpd."):
                pending += _module_files(base, name.split(".")[1:])
    return dict(sorted(files.items()))


def _module_files(base: Path, parts: Sequence[str]) -> list[Path]:
    """The file of module kdumpd.<parts> (a .py or a package's __init__.py), if any."""
    if not parts:
        return [base / "__init__.py"]
    as_module = base.joinpath(*parts[:-1], parts[-1] + ".py")
    as_package = base.joinpath(*parts, "__init__.py")
    return [p for p in (as_module, as_package) if p.is_file()]


def _module_level_imports(text: str) -> list[str]:
    """Absolute names imported by statements outside functions and TYPE_CHECKING blocks."""
    names: list[str] = []

    def visit(statements: Iterable[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.append(node.module)
                names.extend(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    visit(block)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(ast.parse(text).body)
    return names


def agent_import_names(sources: Mapping[str, str]) -> list[str]:
    """Every absolute module name the agent's sources import, lazily or not.

    Top-level imports alone would miss ``import shutil`` inside a function; the
    image must hold those too. ``from a import b`` also yields ``a.b`` (it may
    be a submodule; the lister ignores it when it is not). ``kdumpd.*`` names
    are the agent's own files and are left out.
    """
    names: set[str] = {"runpy"}  # python -m imports it
    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return sorted(n for n in names if n != "kdumpd" and not n.startswith("kdumpd."))


#: Runs in the target python (-E -s -S like the unit): import the names, print module files.
#: It imports nothing itself, so sys.modules holds startup modules plus the agent's needs.
LISTER = (
    "import sys\n"
    "for name in sys.argv[1:]:\n"
    "    try:\n"
    "        __import__(name)\n"
    "    except ImportError:\n"
    "        pass\n"
    "for module in list(sys.modules.values()):\n"
    "    path = getattr(module, '__file__', None)\n"
    "    if path:\n"
    "        sys.stdout.write(path + '\\n')\n"
)


@dataclass(frozen=True)
class PythonFiles:
    """Stdlib files the agent needs: sources, and extension modules (with their libraries)."""

    sources: tuple[str, ...]
    extensions: tuple[str, ...]


def list_python_files(names: Sequence[str], *, python: str = TARGET_PYTHON) -> PythonFiles:
    """Ask the target python which files importing ``names`` loads (plus os.py, its landmark)."""
    done = proc.run([python, "-E", "-s", "-S", "-B", "-c", LISTER, *names], timeout=60)
    return parse_python_files(done.stdout)


def parse_python_files(text: str) -> PythonFiles:
    sources: set[str] = set()
    extensions: set[str] = set()
    for line in text.splitlines():
        path = line.strip()
        if not path.startswith("/"):
            continue
        if path.endswith(".so"):
            extensions.add(path)
        elif path.endswith(".py"):
            sources.add(path)
    return PythonFiles(tuple(sorted(sources)), tuple(sorted(extensions)))


# -- inputs that live on the host -------------------------------------------------


def find_program(paths: Paths, name: str) -> str | None:
    """The absolute path of a program of the managed system (names with / are taken as given)."""
    if "/" in name:
        return name if paths.under_root(name).is_file() else None
    for directory in PROGRAM_DIRS:
        candidate = f"{directory}/{name}"
        if paths.under_root(candidate).is_file():
            return candidate
    return None


def collector_program(paths: Paths, plan: CapturePlan, config: KdumpConfig) -> str:
    name = plan.core_collector[0] if plan.core_collector else "makedumpfile"
    found = find_program(paths, name)
    if found is None:
        raise ConfigError(
            [
                Problem(
                    CONFIG_FILE,
                    config.lines.get("core_collector", 0),
                    f"core_collector program {name} not found; install it "
                    "(apt install makedumpfile) or correct core_collector",
                )
            ]
        )
    return found


def vmcore_dmesg_program(paths: Paths) -> str:
    found = find_program(paths, "vmcore-dmesg")
    if found is None:
        raise BuildError("vmcore-dmesg not found; install kexec-tools")
    return found


def module_files(
    paths: Paths, kernel_release: str, names: Iterable[str]
) -> tuple[dict[str, list[Path]], list[str]]:
    """The .ko files (with dependencies) of each module name, and the names not found.

    Resolved with ``modules.dep``; built-in modules (``modules.builtin``) have
    no file and are not reported missing.
    """
    base = paths.modules / kernel_release
    deps: dict[str, tuple[str, list[str]]] = {}
    try:
        dep_text = (base / "modules.dep").read_text(encoding="utf-8", errors="replace")
    except OSError:
        dep_text = ""
    for line in dep_text.splitlines():
        ko, _, rest = line.partition(":")
        if not ko:
            continue
        deps[_module_name(ko)] = (ko, rest.split())
    try:
        builtin = {
            _module_name(line)
            for line in (base / "modules.builtin").read_text(encoding="utf-8").splitlines()
        }
    except OSError:
        builtin = set()
    found: dict[str, list[Path]] = {}
    missing: list[str] = []
    for name in names:
        key = name.replace("-", "_")
        if key in deps:
            ko, needs = deps[key]
            found[name] = [base / ko, *(base / r for r in needs)]
        elif key not in builtin:
            missing.append(name)
    return found, missing


def _module_name(path: str) -> str:
    name = os.path.basename(path.strip())
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def sysconfig_file(paths: Paths) -> tuple[str, Path] | None:
    """The variables file in effect (Fedora's location wins), as (shown name, path)."""
    for path, shown in (
        (paths.sysconfig_kdump, "/etc/sysconfig/kdump"),
        (paths.default_kdump, "/etc/default/kdump"),
    ):
        if path.is_file():
            return shown, path
    return None


def dracut_version() -> str:
    """``dracut --version`` (part of the manifest: a new dracut builds a different image)."""
    # Debian's dracut 059 prints its version and then exits 1.
    result = proc.run(["dracut", "--version"], ok_codes=(0, 1), timeout=30)
    version = result.stdout.strip()
    if not version.startswith("dracut"):
        raise BuildError(f"dracut --version printed no version: {result.stderr.strip()!r}")
    return version


# -- the manifest ---------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """sha256 of every input of one capture image, keyed by a human name of the input."""

    kernel_release: str
    inputs: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"kernel_release": self.kernel_release, "inputs": dict(sorted(self.inputs.items()))}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(kernel_release=str(data["kernel_release"]), inputs=dict(data["inputs"]))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return digest.hexdigest()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()


def image_path(paths: Paths, kernel_release: str) -> Path:
    return paths.state_dir / f"initramfs-{kernel_release}kdump.img"


def manifest_path(paths: Paths, kernel_release: str) -> Path:
    return paths.state_dir / f"initramfs-{kernel_release}kdump.manifest.json"


def compute_manifest(
    paths: Paths,
    config: KdumpConfig,
    plan: CapturePlan,
    *,
    kernel_image: Path,
    template_dir: Path | None = None,
    dracut_version_text: str | None = None,
    agent_package: Path | None = None,
) -> Manifest:
    """Hash every input of the image for ``plan``: files by content, the plan by its JSON.

    Inputs: kdump.conf, the variables file, the plan, the kernel image, every
    template, the agent's sources, the collector and vmcore-dmesg binaries,
    the interpreter, hooks, extra_bins, extra_modules' .ko files (with their
    dependencies) and the dracut version.
    """
    templates = template_dir if template_dir is not None else default_template_dir(paths)
    inputs: dict[str, str] = {
        "kdump.conf": _sha256_file(paths.kdump_conf),
        "capture plan": _sha256_text(plan.to_json()),
        f"kernel {kernel_image.name}": _sha256_file(kernel_image),
        "dracut version": _sha256_text(
            dracut_version_text if dracut_version_text is not None else dracut_version()
        ),
    }
    variables = sysconfig_file(paths)
    if variables is not None:
        inputs[variables[0]] = _sha256_file(variables[1])
    for template in template_files(templates):
        inputs[f"template {template.name}"] = _sha256_file(template)
    for name, path in agent_sources(agent_package).items():
        inputs[f"agent {name}"] = _sha256_file(path)
    programs = {
        "core_collector": collector_program(paths, plan, config),
        "vmcore-dmesg": vmcore_dmesg_program(paths),
        "python": TARGET_PYTHON,
    }
    for label, program in programs.items():
        inputs[f"{label} {program}"] = _sha256_file(_resolve_program(paths, program))
    for hook in _user_programs(plan, config):
        inputs[f"program {hook}"] = _sha256_file(paths.under_root(hook))
    if plan.target.ssh is not None:
        inputs[f"ssh key {plan.target.ssh.identity}"] = _sha256_file(
            paths.under_root(plan.target.ssh.identity)
        )
    found, missing = module_files(paths, plan.kernel_release, config.extra_modules)
    for name, files in found.items():
        for ko in files:
            inputs[f"module {name}: {ko.name}"] = _sha256_file(ko)
    for name in missing:
        inputs[f"module {name}"] = "missing"
    return Manifest(kernel_release=plan.kernel_release, inputs=inputs)


def _resolve_program(paths: Paths, program: str) -> Path:
    """The file behind a program path (python3 is a symlink to python3.11)."""
    host = paths.under_root(program)
    try:
        return host.resolve() if paths.root == Path("/") else host
    except OSError:
        return host


def _user_programs(plan: CapturePlan, config: KdumpConfig) -> tuple[str, ...]:
    """Hooks and extra_bins, in the order they are installed."""
    out: list[str] = []
    for item in (
        plan.kdump_pre,
        *plan.pre_d,
        *plan.post_d,
        plan.kdump_post,
        *plan.emergency_d,
        plan.kdump_emergency,
        *config.extra_bins,
    ):
        if item and item not in out:
            out.append(item)
    return tuple(out)


def _describe(name: str, old: Mapping[str, str], new: Mapping[str, str]) -> str | None:
    if name not in old:
        return f"{name} added"
    if name not in new:
        return f"{name} removed"
    if old[name] != new[name]:
        return f"{name} changed"
    return None


def changed_inputs(old: Manifest, new: Manifest) -> list[str]:
    """One phrase per input that differs ("kdump.conf changed", "hook ... added")."""
    names = sorted(set(old.inputs) | set(new.inputs))
    phrases = [_describe(n, old.inputs, new.inputs) for n in names]
    return [p for p in phrases if p]


def rebuild_reason(paths: Paths, config: KdumpConfig, new_manifest: Manifest) -> str | None:
    """Why the image for ``new_manifest.kernel_release`` must be rebuilt; None if it need not.

    Order as kdump-utils (§3.11): force_no_rebuild keeps an existing image,
    force_rebuild always rebuilds, a missing image is built, then inputs are
    compared by content hash.
    """
    image = image_path(paths, new_manifest.kernel_release)
    exists = image.is_file() and image.stat().st_size > 0
    if config.force_no_rebuild and exists:
        return None
    if config.force_rebuild:
        return f"Force rebuild {image}"
    if not exists:
        return "No kdump initial ramdisk found."
    try:
        old = Manifest.from_json(
            manifest_path(paths, new_manifest.kernel_release).read_text(encoding="utf-8")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"No record of the inputs of {image}; rebuilding to know what it holds."
    changes = changed_inputs(old, new_manifest)
    if not changes:
        return None
    return "Detected change(s): " + ", ".join(changes)


# -- dracut -------------------------------------------------------------------------


def _has_compression_flag(args: Sequence[str]) -> bool:
    return any(a.split("=", 1)[0] in COMPRESSION_FLAGS for a in args)


def split_dracut_args(config: KdumpConfig) -> list[str]:
    """dracut_args split as a shell would (quotes honoured); errors name the line."""
    if not config.dracut_args:
        return []
    try:
        return shlex.split(config.dracut_args)
    except ValueError as exc:
        raise ConfigError(
            [
                Problem(
                    CONFIG_FILE,
                    config.lines.get("dracut_args", 0),
                    f"dracut_args cannot be split: {exc}; balance the quotes",
                )
            ]
        ) from exc


def dracut_argv(
    plan: CapturePlan,
    config: KdumpConfig,
    *,
    image: Path,
    kernel_release: str,
    build_dir: Path,
    extra_dracut_modules: Sequence[str] = (),
    zstd: bool = True,
) -> list[str]:
    """The dracut command that builds the capture image for ``plan`` into ``image``.

    Strict host-only with no default device: only the target's devices
    (``--add-device``) bring drivers in; no root= or mount on the image's
    command line (the agent mounts); an explicit module list; zstd unless
    dracut_args choose a compression; dracut_args last, verbatim.
    """
    user = split_dracut_args(config)
    modules = list(BASE_DRACUT_MODULES)
    for module in extra_dracut_modules:
        if module not in modules:
            modules.insert(-1, module)
    drivers: list[str] = []
    devices: list[str] = []
    for mount in (plan.target.mount, plan.rootfs):
        if mount is None:
            continue
        if mount.fstype not in drivers:
            drivers.append(mount.fstype)
        if mount.device not in devices:
            devices.append(mount.device)
    if plan.target.raw_device and plan.target.raw_device not in devices:
        devices.append(plan.target.raw_device)
    if plan.network is not None and plan.network.driver:
        drivers.append(plan.network.driver)
    for name in config.extra_modules:
        if name not in drivers:
            drivers.append(name)
    argv = [
        "dracut",
        "--force",
        "--hostonly",
        "--hostonly-mode",
        "strict",
        "--no-hostonly-cmdline",
        "--no-hostonly-default-device",
        "--modules",
        " ".join(modules),
        "--omit-drivers",
        " ".join(OMIT_DRIVERS),
        "--omit",
        " ".join(OMIT_DRACUT_MODULES),
        "--nofscks",
        "--no-early-microcode",
        "--tmpdir",
        str(build_dir),
    ]
    if drivers:
        argv += ["--add-drivers", " ".join(drivers)]
        if plan.network is None and plan.failure_action != "shell":
            # A non-empty --drivers turns off 90kernel-modules' generic set, which even in
            # strict host-only mode brings every crypto module, hid, usb, ata and serial
            # driver (~6 MB unpacked, measured by tests/vm/bench_capture.py). The block
            # drivers of the --add-device devices then come from 99kdumpd's installkernel.
            # failure_action shell keeps the set: a console needs its keyboard. So do
            # network targets for now: the NIC's bus driver (virtio_pci) is not a
            # dependency of its driver, and only that set brings it.
            argv += ["--drivers", " ".join(drivers)]
    for device in devices:
        argv += ["--add-device", device]
    if plan.network is not None:
        # Only the NIC that reaches the dump server gets its driver in (strict host-only).
        argv += ["--hostonly-nics", plan.network.interface]
    if zstd and not _has_compression_flag(user):
        argv.append("--zstd")
    argv += user
    argv += [str(image), kernel_release]
    return argv


# -- the build ----------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    image: Path
    manifest: Manifest
    warnings: tuple[Problem, ...] = ()


def stage(
    paths: Paths,
    config: KdumpConfig,
    plan: CapturePlan,
    *,
    build_dir: Path,
    template_dir: Path,
    python_files: PythonFiles,
    agent_package: Path | None = None,
) -> ModuleContext:
    """Fill ``build_dir``: agent copy, plan.json, rendered module. Return the render context."""
    agent_dir = build_dir / "agent"
    sources = agent_sources(agent_package)
    for relative, source in sources.items():
        target = agent_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (build_dir / "plan.json").write_text(plan.to_json(), encoding="utf-8")
    context = ModuleContext(
        kernel_release=plan.kernel_release,
        build_dir=str(build_dir),
        agent_files=tuple(sources),
        python_files=python_files.sources,
        python_extensions=python_files.extensions,
        collector=collector_program(paths, plan, config),
        vmcore_dmesg=vmcore_dmesg_program(paths),
        user_programs=_user_programs(plan, config),
        failure_action=plan.failure_action,
        self_check_modules=("kdumpd.capture", *_module_names(python_files, sources)),
        target_programs=TARGET_PROGRAMS.get(plan.target.kind, ()),
        image_files=stage_target_files(paths, plan, build_dir),
        start_units=NETWORK_UNITS if plan.network is not None else (),
        **_agent_from_fields(paths, plan),
    )
    render_module(context, template_dir=template_dir, out_dir=build_dir)
    (build_dir / AGENT_STARTER).chmod(0o755)
    return context


def agent_root_mount(
    paths: Paths, plan: CapturePlan, *, stat_file: Callable[[Path], os.stat_result] = os.stat
) -> MountSpec | None:
    """The target's mount when it is the host's root filesystem, else None.

    Memory is a feature: python3 and its stdlib are about 9 MB of the image
    unpacked (a third of it compressed), all held in the crash reservation.
    When the dump goes to the root filesystem the capture mounts it anyway, so
    the image carries no python: a starter script mounts the target first and
    runs the root's python from it (pages come from disk, and are reclaimable).
    Other targets (other disks, raw, ssh) keep python in the image so that a
    broken root disk costs no dump. A device that cannot be compared (btrfs
    subvolumes, a root under a fake tree) also keeps python in the image.
    """
    mount = plan.target.mount
    if plan.target.kind != "fs" or mount is None or not mount.device.startswith("/dev/"):
        return None
    try:
        device = stat_file(paths.under_root(mount.device))
        root = stat_file(paths.under_root("/"))
    except OSError:
        return None
    if not stat.S_ISBLK(device.st_mode) or device.st_rdev != root.st_dev:
        return None
    return mount


def _agent_from_fields(paths: Paths, plan: CapturePlan) -> dict[str, Any]:
    """ModuleContext fields that say where the agent's interpreter comes from."""
    mount = agent_root_mount(paths, plan)
    if mount is None:
        return {"agent_from": "image"}
    real = os.path.realpath(paths.under_root(TARGET_PYTHON))
    root = str(paths.root).rstrip("/")
    python_real = real[len(root) :] if root and real.startswith(root + "/") else real
    return {
        "agent_from": "root",
        "root_device": mount.device,
        "root_mountpoint": mount.mountpoint,
        "root_fstype": mount.fstype,
        "root_options": mount.options,
        "python_real": python_real,
    }


#: Where the generated network file goes in the image; it sorts before the host's own.
NETWORK_FILE_IN_IMAGE = "/etc/systemd/network/10-kdumpd.network"
#: What brings the network up in the capture initramfs.
NETWORK_UNITS: tuple[str, ...] = ("systemd-networkd.service",)
#: Programs a stream target runs in the capture kernel.
TARGET_PROGRAMS: dict[str, tuple[str, ...]] = {"ssh": ("ssh", "ip")}


def stage_target_files(paths: Paths, plan: CapturePlan, build_dir: Path) -> tuple[str, ...]:
    """Write the ssh key, known_hosts and network file for the image; return the triples.

    The key is copied as it is on the host and stays 0600; known_hosts and
    the network file come from the plan, so the manifest covers them, and are
    0644 (systemd-networkd reads its files as the systemd-network user).
    """
    from kdumpd.targets.network import network_unit

    files: list[str] = []
    ssh = plan.target.ssh
    if ssh is not None:
        key = build_dir / "ssh_identity"
        try:
            key.write_bytes(paths.under_root(ssh.identity).read_bytes())
        except OSError as exc:
            raise BuildError(
                f"cannot read the ssh key {ssh.identity}: {exc.strerror}; " "run kdumpctl propagate"
            ) from exc
        key.chmod(0o600)
        known = build_dir / "ssh_known_hosts"
        known.write_text(ssh.known_hosts_text, encoding="utf-8")
        files += [key.name, ssh.identity, "0600", known.name, ssh.known_hosts, "0644"]
    if plan.network is not None:
        unit = build_dir / "kdumpd.network"
        unit.write_text(network_unit(plan.network), encoding="utf-8")
        files += [unit.name, NETWORK_FILE_IN_IMAGE, "0644"]
    return tuple(files)


def _module_names(python_files: PythonFiles, sources: Mapping[str, Path]) -> tuple[str, ...]:
    """The agent's own submodules, for the in-image self check."""
    del python_files
    names = []
    for relative in sources:
        if not relative.endswith(".py") or relative.endswith("__main__.py"):
            continue
        name = relative.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        names.append(name)
    return tuple(sorted(set(names)))


def build(
    paths: Paths,
    config: KdumpConfig,
    plan: CapturePlan,
    *,
    kernel_release: str,
    manifest: Manifest,
    extra_dracut_modules: Sequence[str] = (),
    on_line: Callable[[str], None] | None = None,
    template_dir: Path | None = None,
    agent_package: Path | None = None,
    extra_dracut_args: Sequence[str] = (),
) -> BuildResult:
    """Build the capture image for ``plan``; replace the old one only when dracut succeeded.

    ``manifest`` (from :func:`compute_manifest`) is written next to the image
    on success. Raises BuildError with dracut's last lines on failure.
    ``agent_package`` (tests) replaces the installed kdumpd package as the
    agent's source; ``extra_dracut_args`` go before the image path (tests use
    ``--no-kernel``).
    """
    templates = template_dir if template_dir is not None else default_template_dir(paths)
    image = image_path(paths, kernel_release)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    found, missing = module_files(paths, kernel_release, config.extra_modules)
    del found
    warnings = tuple(
        Problem(CONFIG_FILE, config.lines.get("extra_modules", 0), f"Module {name} not found")
        for name in missing
    )
    build_dir = Path(tempfile.mkdtemp(prefix=f"build-{kernel_release}-", dir=paths.state_dir))
    temp_image = image.with_name(image.name + ".new")
    try:
        sources = {
            k: v.read_text(encoding="utf-8") for k, v in agent_sources(agent_package).items()
        }
        python_files = list_python_files(agent_import_names(sources))
        stage(
            paths,
            config,
            plan,
            build_dir=build_dir,
            template_dir=templates,
            python_files=python_files,
            agent_package=agent_package,
        )
        argv = dracut_argv(
            plan,
            config,
            image=temp_image,
            kernel_release=kernel_release,
            build_dir=build_dir,
            extra_dracut_modules=extra_dracut_modules,
            zstd=find_program(paths, "zstd") is not None,
        )
        if extra_dracut_args:
            argv[-2:-2] = list(extra_dracut_args)
        try:
            proc.run(
                argv,
                timeout=DRACUT_TIMEOUT,
                env={"KDUMPD_BUILD_DIR": str(build_dir)},
                on_line=on_line,
            )
        except proc.ProgramError as exc:
            raise BuildError(
                f"building the capture initramfs {image} failed; "
                "the previous image (if any) is kept"
            ) from exc
        if not temp_image.is_file() or temp_image.stat().st_size == 0:
            raise BuildError(f"dracut reported success but wrote no image at {temp_image}")
        os.replace(temp_image, image)
        _write_atomic(manifest_path(paths, kernel_release), manifest.to_json())
    finally:
        temp_image.unlink(missing_ok=True)
        shutil.rmtree(build_dir, ignore_errors=True)
    return BuildResult(image=image, manifest=manifest, warnings=warnings)


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)

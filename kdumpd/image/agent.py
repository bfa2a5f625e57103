"""The capture agent in the image: its files (an allow-list), the stdlib it needs, its python.

:data:`AGENT_FILES` pins every file of kdumpd the image carries; a unit test
proves that their imports stay within the list and, outside kdumpd, within
the standard library. The stdlib files come from asking the target python
which files importing the agent's modules loads (:func:`list_python_files`).
When the dump goes to the root filesystem the image carries no python at all
(:func:`agent_root_mount`).
"""

from __future__ import annotations

import ast
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kdumpd
from kdumpd import proc
from kdumpd.contract.plan import CapturePlan, FsTarget, MountSpec
from kdumpd.paths import Paths

#: Where the agent package lives inside the image (the unit's working directory).
AGENT_DIR_IN_IMAGE = "/usr/lib/kdumpd"
#: The interpreter of the capture side (Debian's; the agent is stdlib-only).
TARGET_PYTHON = "/usr/bin/python3"
#: The script both capture units start (kdumpd-agent.sh.j2): it runs the agent.
AGENT_STARTER = "kdumpd-agent.sh"
#: The image's /init when it has no systemd (kdumpd-init.sh.j2, :mod:`kdumpd.image.init`).
INIT_SCRIPT = "kdumpd-init.sh"
#: Every file of our package the image carries, relative to the package's parent.
#: tests/unit/test_agent_files.py proves the agent imports nothing else.
AGENT_FILES: tuple[str, ...] = (
    "kdumpd/__init__.py",
    "kdumpd/capture/__init__.py",
    "kdumpd/capture/__main__.py",
    "kdumpd/capture/actions.py",
    "kdumpd/capture/agent.py",
    "kdumpd/capture/base.py",
    "kdumpd/capture/collector.py",
    "kdumpd/capture/fs.py",
    "kdumpd/capture/hooks.py",
    "kdumpd/capture/log.py",
    "kdumpd/capture/memory.py",
    "kdumpd/capture/raw.py",
    "kdumpd/capture/sinks.py",
    "kdumpd/capture/ssh.py",
    "kdumpd/contract/__init__.py",
    "kdumpd/contract/actions.py",
    "kdumpd/contract/layout.py",
    "kdumpd/contract/plan.py",
    "kdumpd/contract/ssh.py",
    "kdumpd/durable.py",
    "kdumpd/errors.py",
    "kdumpd/mountinfo.py",
    "kdumpd/paths.py",
    "kdumpd/proc.py",
    "kdumpd/vmcore/__init__.py",
    "kdumpd/vmcore/dump.py",
    "kdumpd/vmcore/elf.py",
    "kdumpd/vmcore/flattened.py",
    "kdumpd/vmcore/kdump.py",
    "kdumpd/vmcore/pagecodecs.py",
    "kdumpd/vmcore/printk.py",
    "kdumpd/vmcore/vmcoreinfo.py",
)
#: Programs the agent runs besides the collector and vmcore-dmesg.
AGENT_PROGRAMS: tuple[str, ...] = ("mount", "umount", "sync", "dmesg", "sh")


def agent_sources(package_dir: Path | None = None) -> dict[str, Path]:
    """The agent's files (:data:`AGENT_FILES`), keyed by path relative to the image's agent dir.

    ``package_dir`` (tests) replaces the installed kdumpd package directory.
    """
    base = package_dir if package_dir is not None else Path(kdumpd.__file__).parent
    return {name: base / name.removeprefix("kdumpd/") for name in AGENT_FILES}


def imported_modules(text: str) -> set[str]:
    """Every absolute module name a source imports, at module level or inside functions.

    ``from a import b`` also yields ``a.b`` (it may be a submodule).
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def agent_import_names(sources: Mapping[str, str]) -> list[str]:
    """Every module name outside kdumpd that the agent's sources import, lazily or not.

    Top-level imports alone would miss ``import shutil`` inside a function; the
    image must hold those too.
    """
    names: set[str] = {"runpy"}  # python -m imports it
    for text in sources.values():
        names |= imported_modules(text)
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


def module_names(sources: Mapping[str, Path]) -> tuple[str, ...]:
    """The agent's own modules, for the in-image self check."""
    names = []
    for relative in sources:
        if not relative.endswith(".py") or relative.endswith("__main__.py"):
            continue
        name = relative.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        names.append(name)
    return tuple(sorted(set(names)))


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
    target = plan.target
    if not isinstance(target, FsTarget) or target.mount is None:
        return None
    mount = target.mount
    if not mount.device.startswith("/dev/"):
        return None
    try:
        device = stat_file(paths.under_root(mount.device))
        root = stat_file(paths.under_root("/"))
    except OSError:
        return None
    if not stat.S_ISBLK(device.st_mode) or device.st_rdev != root.st_dev:
        return None
    return mount


def agent_from_fields(paths: Paths, plan: CapturePlan) -> dict[str, Any]:
    """ModuleContext fields that say where the agent's interpreter comes from."""
    mount = agent_root_mount(paths, plan)
    if mount is None:
        return {}
    real = Path(os.path.realpath(paths.under_root(TARGET_PYTHON)))
    return {"root_mount": mount, "python_real": paths.shown(real)}

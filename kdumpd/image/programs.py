"""Inputs of the image that live on the host: programs, kernel modules, the dracut version."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from kdumpd import proc
from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.contract.plan import CapturePlan
from kdumpd.errors import BuildError, ConfigError, Problem
from kdumpd.paths import KDUMP_CONF, Paths

PROGRAM_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
MODULE_SUFFIXES: tuple[str, ...] = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


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
                    KDUMP_CONF,
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


def dracut_version() -> str:
    """``dracut --version`` (part of the manifest: a new dracut builds a different image)."""
    # Debian's dracut 059 prints its version and then exits 1.
    result = proc.run(["dracut", "--version"], ok_codes=(0, 1), timeout=30)
    version = result.stdout.strip()
    if not version.startswith("dracut"):
        raise BuildError(f"dracut --version printed no version: {result.stderr.strip()!r}")
    return version


def resolve_program(paths: Paths, program: str) -> Path:
    """The file behind a program path (python3 is a symlink to python3.11)."""
    host = paths.under_root(program)
    try:
        return host.resolve() if paths.root == Path("/") else host
    except OSError:
        return host


def user_programs(plan: CapturePlan, config: KdumpConfig) -> tuple[str, ...]:
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

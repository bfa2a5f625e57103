"""The plan compiler: kdump.conf and host facts -> :class:`~kdumpd.contract.plan.CapturePlan`.

First kernel only. The target is compiled by the module of its kind
(:mod:`kdumpd.targets`, through the registry); what is the same for every
kind is here: hooks, actions, the collector, the root filesystem that
``failure_action dump_to_rootfs`` writes to, and the device stacks (dm, lvm,
crypt, mdraid) the image needs to see the devices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kdumpd import targets
from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.config.values import text_problem
from kdumpd.contract.plan import CapturePlan, MountSpec, SshTarget
from kdumpd.errors import ConfigError, Problem
from kdumpd.image.init import choose_init, image_dracut_modules
from kdumpd.paths import KDUMP_CONF, Paths
from kdumpd.targets import fs, ssh
from kdumpd.targets.ssh import NETWORK_DRACUT_MODULE

HOOK_DIRS: tuple[str, ...] = ("pre.d", "post.d", "emergency.d")


@dataclass(frozen=True)
class CompiledPlan:
    """A plan, the warnings compiling it produced, and host facts the image build needs."""

    plan: CapturePlan
    warnings: tuple[Problem, ...] = ()
    #: Devices (first-kernel names) whose drivers the capture image needs.
    devices: tuple[str, ...] = ()
    #: dracut modules the devices need beyond the base set (dm, lvm, crypt, mdraid).
    dracut_modules: tuple[str, ...] = ()


def hook_scripts(paths: Paths, directory: str) -> tuple[tuple[str, ...], tuple[Problem, ...]]:
    """Executables of /etc/kdump/<directory> in lexical order, and a warning per file skipped.

    Names are as the managed system sees them (``/etc/kdump/pre.d/10-x``).
    """
    base = paths.hooks_dir / directory
    shown = paths.shown(base)
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return (), ()
    except OSError as exc:
        return (), (Problem(shown, 0, f"cannot list hook directory: {exc.strerror}"),)
    found: list[str] = []
    warnings: list[Problem] = []
    for name in names:
        entry = base / name
        if text_problem(name, allow_tab=False) is not None:
            # The name reaches plan.json, the dracut module and argv: only text may.
            safe = name.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            warnings.append(
                Problem(
                    f"{shown}/{safe}",
                    0,
                    "has a name that is not plain UTF-8 text; skipped. Rename it "
                    "(letters, digits, - _ .)",
                )
            )
            continue
        if entry.is_dir():
            warnings.append(Problem(f"{shown}/{name}", 0, "is a directory, not a hook; skipped"))
        elif not os.access(entry, os.X_OK) or not entry.is_file():
            warnings.append(
                Problem(
                    f"{shown}/{name}",
                    0,
                    f"is not executable, so it will not run; chmod +x {shown}/{name} "
                    "or remove it",
                )
            )
        else:
            found.append(f"{shown}/{name}")
    return tuple(found), tuple(warnings)


def compile_full(config: KdumpConfig, paths: Paths, *, kernel_release: str) -> CompiledPlan:
    """Compile kdump.conf and host facts into a plan plus what the image build needs.

    Raises ConfigError (with file:line of the directive at fault) when the
    target cannot be used, TargetError for host problems not tied to a line.
    """
    lines = config.lines
    target = config.target
    where = lines.get("target", lines.get(target.kind, 0)) if target else lines.get("path", 0)
    kind = targets.for_directive(target.kind if target else None)
    if kind is None:
        assert target is not None
        raise ConfigError(
            [
                Problem(
                    KDUMP_CONF,
                    where,
                    f"{target.kind} dump targets are not supported by kdumpd yet; "
                    "use a local filesystem, raw or ssh target (or no target directive "
                    "and a 'path').",
                )
            ]
        )
    compiled = kind.compile(config, paths, where=(KDUMP_CONF, where))
    devices = list(compiled.devices)
    stack = list(compiled.dracut_modules)

    warnings: list[Problem] = []
    hooks: dict[str, tuple[str, ...]] = {}
    for directory in HOOK_DIRS:
        found, skipped = hook_scripts(paths, directory)
        hooks[directory] = found
        warnings.extend(skipped)

    rootfs: MountSpec | None = None
    if config.failure_action == "dump_to_rootfs":
        root = fs.root_target(paths)
        rootfs = root.mount
        if root.host_device not in devices:
            devices.append(root.host_device)
    for device in devices:
        for module in fs.device_stack_modules(paths, device):
            if module not in stack:
                stack.append(module)

    plan = CapturePlan(
        kernel_release=kernel_release,
        target=compiled.target,
        core_collector=tuple(config.effective_core_collector.split()),
        failure_action=config.failure_action,
        final_action=config.final_action,
        kdump_pre=config.kdump_pre,
        pre_d=hooks["pre.d"],
        post_d=hooks["post.d"],
        kdump_post=config.kdump_post,
        emergency_d=hooks["emergency.d"],
        kdump_emergency=config.kdump_emergency,
        rootfs=rootfs,
        rootfs_path=fs.normalize_path(config.path),
    )
    if isinstance(plan.target, SshTarget) and plan.target.network is not None:
        # The same decision the image build takes: only dracut's systemd initrd needs
        # systemd-networkd, so only then must dracut-network be installed.
        choice = choose_init(plan, config, dracut_modules=tuple(stack))
        if NETWORK_DRACUT_MODULE in image_dracut_modules(choice, stack):
            ssh.require_network_module(paths, "; ".join(choice.reasons))
    return CompiledPlan(
        plan=plan, warnings=tuple(warnings), devices=tuple(devices), dracut_modules=tuple(stack)
    )

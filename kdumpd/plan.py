"""CapturePlan: everything the capture side needs, and nothing else.

The first kernel compiles kdump.conf and host facts into a plan; the capture
agent (``kdumpd/capture``) only executes it. The plan travels into the capture
initramfs as JSON at :data:`PLAN_PATH_IN_IMAGE`. The agent reads that JSON with
the stdlib alone, so this module must stay stdlib-only too and the JSON layout
below is a contract: bump :data:`PLAN_VERSION` on any incompatible change.

JSON layout (version 1)::

    {
      "version": 1,
      "kernel_release": "6.1.0-28-amd64",
      "target": {
        "kind": "fs" | "raw" | "ssh",
        "mount": {"device": "/dev/disk/by-uuid/...", "mountpoint": "/kdumproot",
                  "fstype": "ext4", "options": "defaults"} | null,   # fs only
        "path": "/var/crash",          # fs: directory below mount.mountpoint; ssh: remote dir
        "raw_device": "/dev/disk/by-id/..." | null,                  # raw only
        "ssh": {"user": "root", "host": "10.0.2.2", "port": 22,
                "identity": "/root/.ssh/kdump_id_rsa",   # same path in both kernels
                "known_hosts": "/etc/kdumpd/ssh/known_hosts",   # path in the image
                "known_hosts_text": "10.0.2.2 ssh-ed25519 AAAA...\n",
                "address": "10.0.2.2"}   # what ssh connects to (host resolved)
               | null                                                # ssh only
      },
      "network": {"interface": "ens3", "mac": "52:54:00:12:34:56", "driver": "virtio_net",
                  "dhcp": "ipv4" | "ipv6" | "no", "addresses": ["10.0.0.5/24"],
                  "gateway": "10.0.0.1" | null, "server": "10.0.2.2",
                  "wait_seconds": 180} | null,                       # ssh only
      "core_collector": ["makedumpfile", "-l", "--message-level", "7", "-d", "31"],
      "kdump_pre": "/path" | null,
      "pre_d": ["/etc/kdump/pre.d/10-x", ...],
      "post_d": [...],
      "kdump_post": "/path" | null,
      "emergency_d": [...],
      "kdump_emergency": "/path" | null,
      "failure_action": "reboot" | "halt" | "poweroff" | "shell" | "dump_to_rootfs",
      "final_action": "reboot" | "halt" | "poweroff",
      "rootfs": {"device": ..., "mountpoint": "/sysroot", "fstype": ..., "options": ...} | null,
      "rootfs_path": "/var/crash"      # where dump_to_rootfs writes, below rootfs.mountpoint
    }

``core_collector`` is the user's collector as configured; the agent adds the
output arguments (``<dir>/vmcore-incomplete`` for fs, stdout for raw and ssh).

The ssh known_hosts lines and the network settings travel in the plan although
the agent reads them only as files of the image: so the manifest (a hash of
the plan) notices a changed server key or address and rebuilds the image.

Compilation (:func:`compile_plan`, first kernel only) reads configuration and
host facts through :mod:`kdumpd.targets`; those imports happen inside the
compile functions so that the capture agent, which imports this module inside
the crash kernel, loads nothing beyond the stdlib and the dataclasses below.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # first-kernel types; never imported by the capture agent
    from kdumpd.config.kdumpconf import KdumpConfig
    from kdumpd.config.sysconfig import SysConfig
    from kdumpd.errors import Problem
    from kdumpd.paths import Paths

PLAN_VERSION = 1
PLAN_PATH_IN_IMAGE = "/etc/kdumpd/plan.json"


@dataclass(frozen=True)
class MountSpec:
    """A filesystem the capture agent mounts before writing."""

    device: str
    mountpoint: str
    fstype: str
    options: str = "defaults"


@dataclass(frozen=True)
class SshSpec:
    """Where and as whom an ssh target is reached, with paths inside the image."""

    user: str
    host: str
    identity: str
    known_hosts: str
    port: int = 22
    #: The address ssh connects to: ``host`` itself, or what the first kernel resolved it to.
    address: str = ""
    #: The server's known_hosts lines, written to ``known_hosts`` in the image.
    known_hosts_text: str = ""


@dataclass(frozen=True)
class NetworkSpec:
    """The NIC the capture kernel reaches the dump server through, configured as now."""

    interface: str
    mac: str
    driver: str  # kernel module of the NIC; "" when built in
    dhcp: str  # systemd.network DHCP=: "ipv4", "ipv6" or "no" (static addresses)
    server: str  # the address whose route the agent waits for
    addresses: tuple[str, ...] = ()  # static only: "10.0.0.5/24"
    gateway: str | None = None
    wait_seconds: int = 180


@dataclass(frozen=True)
class TargetSpec:
    kind: str  # "fs" | "raw" | "ssh"
    path: str
    mount: MountSpec | None = None
    raw_device: str | None = None
    ssh: SshSpec | None = None


@dataclass(frozen=True)
class CapturePlan:
    kernel_release: str
    target: TargetSpec
    core_collector: tuple[str, ...]
    failure_action: str = "reboot"
    final_action: str = "reboot"
    kdump_pre: str | None = None
    pre_d: tuple[str, ...] = ()
    post_d: tuple[str, ...] = ()
    kdump_post: str | None = None
    emergency_d: tuple[str, ...] = ()
    kdump_emergency: str | None = None
    rootfs: MountSpec | None = None
    rootfs_path: str = "/var/crash"
    network: NetworkSpec | None = None
    version: int = field(default=PLAN_VERSION)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """Stable text: sorted keys, so the manifest hash only moves when content does."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CapturePlan:
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"unsupported plan version {data.get('version')!r}")
        t = data["target"]
        target = TargetSpec(
            kind=t["kind"],
            path=t["path"],
            mount=MountSpec(**t["mount"]) if t.get("mount") else None,
            raw_device=t.get("raw_device"),
            ssh=SshSpec(**t["ssh"]) if t.get("ssh") else None,
        )
        return cls(
            kernel_release=data["kernel_release"],
            target=target,
            core_collector=tuple(data["core_collector"]),
            failure_action=data["failure_action"],
            final_action=data["final_action"],
            kdump_pre=data.get("kdump_pre"),
            pre_d=tuple(data.get("pre_d", ())),
            post_d=tuple(data.get("post_d", ())),
            kdump_post=data.get("kdump_post"),
            emergency_d=tuple(data.get("emergency_d", ())),
            kdump_emergency=data.get("kdump_emergency"),
            rootfs=MountSpec(**data["rootfs"]) if data.get("rootfs") else None,
            rootfs_path=data.get("rootfs_path", "/var/crash"),
            network=_network_from_dict(data.get("network")),
        )


def _network_from_dict(data: dict[str, Any] | None) -> NetworkSpec | None:
    if not data:
        return None
    return NetworkSpec(**{**data, "addresses": tuple(data.get("addresses", ()))})


# -- compilation (first kernel) ------------------------------------------------

#: The kdump.conf a plan comes from, as errors name it.
CONFIG_FILE = "/etc/kdump.conf"
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
    from kdumpd.config.values import text_problem
    from kdumpd.errors import Problem

    base = paths.hooks_dir / directory
    shown = f"/etc/kdump/{directory}"
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


def compile_full(
    config: KdumpConfig, sysconfig: SysConfig | None, paths: Paths, *, kernel_release: str
) -> CompiledPlan:
    """Compile kdump.conf and host facts into a plan plus what the image build needs.

    Raises ConfigError (with file:line of the directive at fault) when the
    target cannot be used, TargetError for host problems not tied to a line.
    """
    from kdumpd.errors import ConfigError, Problem
    from kdumpd.targets import fs

    del sysconfig  # nothing in it shapes the capture side yet (it shapes the cmdline)
    lines = config.lines
    warnings: list[Problem] = []
    target = config.target
    where = lines.get("target", lines.get(target.kind, 0)) if target else lines.get("path", 0)
    network: NetworkSpec | None = None
    stack: list[str] = []
    devices: list[str] = []
    if target is None or target.kind in fs.FS_KINDS:
        if target is None:
            resolved = fs.default_target(paths, config.path, where=(CONFIG_FILE, where))
        else:
            resolved = fs.explicit_target(
                paths, target.kind, target.value, config.path, where=(CONFIG_FILE, where)
            )
        spec = TargetSpec(kind="fs", path=resolved.path, mount=resolved.mount)
        devices.append(resolved.host_device)
    elif target.kind == "raw":
        from kdumpd.targets import raw

        device = raw.compile_raw_device(paths, target.value, where=(CONFIG_FILE, where))
        spec = TargetSpec(kind="raw", path=fs.normalize_path(config.path), raw_device=device)
        devices.append(device)
    elif target.kind == "ssh":
        from kdumpd.targets import ssh

        ssh_spec, network = ssh.compile_ssh_target(config, paths, where=(CONFIG_FILE, where))
        spec = TargetSpec(kind="ssh", path=fs.normalize_path(config.path), ssh=ssh_spec)
        stack.append(ssh.NETWORK_DRACUT_MODULE)
    else:
        raise ConfigError(
            [
                Problem(
                    CONFIG_FILE,
                    where,
                    f"{target.kind} dump targets are not supported by kdumpd yet; "
                    "use a local filesystem, raw or ssh target (or no target directive "
                    "and a 'path').",
                )
            ]
        )
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
        target=spec,
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
        network=network,
    )
    return CompiledPlan(
        plan=plan, warnings=tuple(warnings), devices=tuple(devices), dracut_modules=tuple(stack)
    )


def compile_plan(
    config: KdumpConfig, sysconfig: SysConfig | None, paths: Paths, *, kernel_release: str
) -> CapturePlan:
    """The CapturePlan for ``config`` on the host under ``paths`` (see :func:`compile_full`)."""
    return compile_full(config, sysconfig, paths, kernel_release=kernel_release).plan

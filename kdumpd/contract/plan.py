"""CapturePlan: everything the capture side needs, and nothing else.

The first kernel compiles kdump.conf and host facts into a plan
(:mod:`kdumpd.planner`); the capture agent (:mod:`kdumpd.capture`) only
executes it. The plan travels into the capture initramfs as JSON at
:data:`PLAN_PATH_IN_IMAGE` and is read there with the standard library alone.
The JSON layout below is a contract: bump :data:`PLAN_VERSION` on any
incompatible change.

The target is a tagged union, one dataclass per kind (:data:`Target`), so
that a ``match`` on it is checked by mypy for every kind.

JSON layout (version 2)::

    {
      "version": 2,
      "kernel_release": "6.1.0-28-amd64",
      "target": {"kind": "fs",
                 "mount": {"device": "/dev/disk/by-uuid/...", "mountpoint": "/kdumproot",
                           "fstype": "ext4", "options": "defaults"} | null,
                 "path": "/var/crash"}               # below mount.mountpoint
              | {"kind": "raw", "device": "/dev/disk/by-id/..."}
              | {"kind": "ssh", "path": "/var/crash",  # the remote directory
                 "ssh": {"user": "root", "host": "10.0.2.2", "port": 22,
                         "identity": "/root/.ssh/kdump_id_rsa",   # same path in both kernels
                         "known_hosts": "/etc/kdumpd/ssh/known_hosts",   # path in the image
                         "known_hosts_text": "10.0.2.2 ssh-ed25519 AAAA...\\n",
                         "address": "10.0.2.2"},   # what ssh connects to (host resolved)
                 "network": {"interface": "ens3", "mac": "52:54:00:12:34:56",
                             "driver": "virtio_net", "dhcp": "ipv4" | "ipv6" | "no",
                             "addresses": ["10.0.0.5/24"], "gateway": "10.0.0.1" | null,
                             "server": "10.0.2.2", "wait_seconds": 180} | null},
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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from kdumpd.contract.actions import DEFAULT_ACTION

PLAN_VERSION = 2
PLAN_PATH_IN_IMAGE = "/etc/kdumpd/plan.json"
DEFAULT_DUMP_PATH = "/var/crash"


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
class FsTarget:
    """A directory on a filesystem: ``mount`` (None: already mounted, e.g. tests) at ``path``."""

    path: str
    mount: MountSpec | None = None
    kind: Literal["fs"] = "fs"


@dataclass(frozen=True)
class RawTarget:
    """A block device that receives the flattened dump stream from offset 0."""

    device: str
    kind: Literal["raw"] = "raw"


@dataclass(frozen=True)
class SshTarget:
    """A directory on an ssh server, and the NIC that reaches it (None: the network is up)."""

    path: str
    ssh: SshSpec
    network: NetworkSpec | None = None
    kind: Literal["ssh"] = "ssh"


Target = FsTarget | RawTarget | SshTarget
TargetKind = Literal["fs", "raw", "ssh"]


@dataclass(frozen=True)
class CapturePlan:
    kernel_release: str
    target: Target
    core_collector: tuple[str, ...]
    failure_action: str = DEFAULT_ACTION
    final_action: str = DEFAULT_ACTION
    kdump_pre: str | None = None
    pre_d: tuple[str, ...] = ()
    post_d: tuple[str, ...] = ()
    kdump_post: str | None = None
    emergency_d: tuple[str, ...] = ()
    kdump_emergency: str | None = None
    rootfs: MountSpec | None = None
    rootfs_path: str = DEFAULT_DUMP_PATH
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
        return cls(
            kernel_release=data["kernel_release"],
            target=target_from_dict(data["target"]),
            core_collector=tuple(data["core_collector"]),
            failure_action=data["failure_action"],
            final_action=data["final_action"],
            kdump_pre=data.get("kdump_pre"),
            pre_d=tuple(data.get("pre_d", ())),
            post_d=tuple(data.get("post_d", ())),
            kdump_post=data.get("kdump_post"),
            emergency_d=tuple(data.get("emergency_d", ())),
            kdump_emergency=data.get("kdump_emergency"),
            rootfs=_mount(data.get("rootfs")),
            rootfs_path=data.get("rootfs_path", DEFAULT_DUMP_PATH),
        )


def target_from_dict(data: dict[str, Any]) -> Target:
    """The target of a plan's JSON, by its ``kind``; ValueError for a kind this side lacks."""
    kind = data.get("kind")
    if kind == "fs":
        return FsTarget(path=data["path"], mount=_mount(data.get("mount")))
    if kind == "raw":
        return RawTarget(device=data["device"])
    if kind == "ssh":
        return SshTarget(
            path=data["path"], ssh=SshSpec(**data["ssh"]), network=_network(data.get("network"))
        )
    raise ValueError(f"unknown dump target kind {kind!r}")


def _mount(data: dict[str, Any] | None) -> MountSpec | None:
    return MountSpec(**data) if data else None


def _network(data: dict[str, Any] | None) -> NetworkSpec | None:
    if not data:
        return None
    return NetworkSpec(**{**data, "addresses": tuple(data.get("addresses", ()))})

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
                "identity": "/etc/kdumpd/ssh/id", "known_hosts": "/etc/kdumpd/ssh/known_hosts"}
               | null                                                # ssh only
      },
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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

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
        )

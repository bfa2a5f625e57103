"""Configuration of kdumpd: /etc/kdump.conf and the kdump variables file.

Both are read, never executed; every problem names its file and line.
"""

from kdumpd.config.checks import check_host, check_host_warnings, effective_sshkey
from kdumpd.config.kdumpconf import (
    DEFAULT_CORE_COLLECTOR,
    DEFAULT_PATH,
    DEFAULT_SSHKEY,
    MOUNT_TARGET,
    TARGET_KINDS,
    DumpTarget,
    KdumpConfig,
    ParsedConfig,
    load_kdump_conf,
    parse_kdump_conf,
    render_kdump_conf,
)
from kdumpd.config.sysconfig import (
    SysConfig,
    arch_defaults,
    canonical_arch,
    load_sysconfig,
    parse_assignments,
)
from kdumpd.contract.actions import FAILURE_ACTIONS, FINAL_ACTIONS

__all__ = [
    "DEFAULT_CORE_COLLECTOR",
    "DEFAULT_PATH",
    "DEFAULT_SSHKEY",
    "FAILURE_ACTIONS",
    "FINAL_ACTIONS",
    "MOUNT_TARGET",
    "TARGET_KINDS",
    "DumpTarget",
    "KdumpConfig",
    "ParsedConfig",
    "SysConfig",
    "arch_defaults",
    "canonical_arch",
    "check_host",
    "check_host_warnings",
    "effective_sshkey",
    "load_kdump_conf",
    "load_sysconfig",
    "parse_assignments",
    "parse_kdump_conf",
    "render_kdump_conf",
]

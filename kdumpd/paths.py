"""Every system location kdumpd reads or writes, relative to one root.

Code never spells ``/etc/...`` itself: it asks a :class:`Paths`. Tests and
``kdumpctl --root DIR`` point the whole program at another tree by building
``Paths(root=DIR)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: The dump configuration, as the managed system (and every message) names it.
KDUMP_CONF = "/etc/kdump.conf"
#: The variables file: Fedora/RHEL's location wins over Debian's when both exist.
SYSCONFIG_KDUMP = "/etc/sysconfig/kdump"
DEFAULT_KDUMP = "/etc/default/kdump"


@dataclass(frozen=True)
class Paths:
    """System locations under ``root`` (``/`` on a live system)."""

    root: Path = field(default_factory=lambda: Path("/"))

    def under_root(self, absolute: str | Path) -> Path:
        """Map an absolute path of the managed system to this tree.

        Paths that come from configuration (``path /var/crash``, ``sshkey ...``)
        name locations of the managed system; this is how they are read.
        """
        text = str(absolute)
        if not text.startswith("/"):
            raise ValueError(f"not an absolute path: {text!r}")
        return self.root / text.lstrip("/")

    def shown(self, location: Path) -> str:
        """A path of this tree as the managed system names it (``/etc/kdump.conf``)."""
        try:
            return "/" + str(location.relative_to(self.root)).lstrip("/")
        except ValueError:
            return str(location)

    # /etc ---------------------------------------------------------------
    @property
    def kdump_conf(self) -> Path:
        return self.under_root(KDUMP_CONF)

    @property
    def sysconfig_kdump(self) -> Path:
        """Fedora/RHEL location of the variables file; wins when present."""
        return self.under_root(SYSCONFIG_KDUMP)

    @property
    def default_kdump(self) -> Path:
        """Debian location of the variables file; read when sysconfig is absent."""
        return self.under_root(DEFAULT_KDUMP)

    @property
    def hooks_dir(self) -> Path:
        """Holds pre.d, post.d and emergency.d."""
        return self.under_root("/etc/kdump")

    @property
    def fstab(self) -> Path:
        return self.under_root("/etc/fstab")

    @property
    def machine_id(self) -> Path:
        return self.under_root("/etc/machine-id")

    @property
    def hostname(self) -> Path:
        """/etc/hostname: fence_kdump_nodes must not name this host."""
        return self.under_root("/etc/hostname")

    # /proc --------------------------------------------------------------
    @property
    def proc_cmdline(self) -> Path:
        return self.under_root("/proc/cmdline")

    @property
    def proc_iomem(self) -> Path:
        return self.under_root("/proc/iomem")

    @property
    def proc_cpuinfo(self) -> Path:
        return self.under_root("/proc/cpuinfo")

    @property
    def proc_meminfo(self) -> Path:
        return self.under_root("/proc/meminfo")

    @property
    def proc_modules(self) -> Path:
        return self.under_root("/proc/modules")

    @property
    def proc_mounts(self) -> Path:
        return self.under_root("/proc/self/mountinfo")

    @property
    def proc_vmcore(self) -> Path:
        return self.under_root("/proc/vmcore")

    # /sys ---------------------------------------------------------------
    @property
    def kexec_crash_loaded(self) -> Path:
        return self.under_root("/sys/kernel/kexec_crash_loaded")

    @property
    def kexec_crash_size(self) -> Path:
        return self.under_root("/sys/kernel/kexec_crash_size")

    @property
    def fadump_enabled(self) -> Path:
        return self.under_root("/sys/kernel/fadump/enabled")

    @property
    def fadump_registered(self) -> Path:
        return self.under_root("/sys/kernel/fadump/registered")

    @property
    def fadump_mem_reserved(self) -> Path:
        return self.under_root("/sys/kernel/fadump/mem_reserved")

    @property
    def watchdog_class(self) -> Path:
        return self.under_root("/sys/class/watchdog")

    @property
    def efivars(self) -> Path:
        return self.under_root("/sys/firmware/efi/efivars")

    @property
    def dmi_entries(self) -> Path:
        """Raw SMBIOS structures, one directory per ``<type>-<instance>`` (root only)."""
        return self.under_root("/sys/firmware/dmi/entries")

    @property
    def ipl_secure(self) -> Path:
        """s390: 1 when the system was IPLed in secure mode."""
        return self.under_root("/sys/firmware/ipl/secure")

    @property
    def device_tree(self) -> Path:
        """PowerPC firmware device tree (Secure Boot properties live here)."""
        return self.under_root("/proc/device-tree")

    @property
    def sys_cpu(self) -> Path:
        """CPU hotplug state; ``crash_hotplug`` here says the kernel updates kdump itself."""
        return self.under_root("/sys/devices/system/cpu")

    @property
    def sys_memory(self) -> Path:
        """Memory blocks; ``crash_hotplug`` here says the kernel updates kdump itself."""
        return self.under_root("/sys/devices/system/memory")

    @property
    def sys_platform(self) -> Path:
        return self.under_root("/sys/devices/platform")

    @property
    def sys_pci_drivers(self) -> Path:
        return self.under_root("/sys/bus/pci/drivers")

    @property
    def kernel_lockdown(self) -> Path:
        """Kernel lockdown mode (``none [integrity] confidentiality``); explains kexec EPERM."""
        return self.under_root("/sys/kernel/security/lockdown")

    # boot, modules ----------------------------------------------------------
    @property
    def boot(self) -> Path:
        return self.under_root("/boot")

    @property
    def modules(self) -> Path:
        return self.under_root("/lib/modules")

    # state --------------------------------------------------------------
    @property
    def var_crash(self) -> Path:
        return self.under_root("/var/crash")

    @property
    def state_dir(self) -> Path:
        """kdumpd's persistent state: capture images, manifests, import records."""
        return self.under_root("/var/lib/kdumpd")

    @property
    def run_dir(self) -> Path:
        return self.under_root("/run/kdumpd")

    @property
    def kdumpctl_lock(self) -> Path:
        """flock(2) target that keeps arming use cases (start, stop, reload...) one at a time."""
        return self.run_dir / "kdumpctl.lock"

    @property
    def dracut_modules(self) -> Path:
        return self.under_root("/usr/lib/dracut/modules.d")

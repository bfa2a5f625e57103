"""A render context for kdumpd's small init, for tests that render dracut-module/templates."""

from __future__ import annotations

from typing import Any

from kdumpd.image.init import KDUMPD_INIT
from kdumpd.image.render import ModuleContext

KVER = "6.1.0-28-amd64"


def small_init_context(**values: Any) -> ModuleContext:
    """A small-init image's context with plain values; ``values`` replace or add fields."""
    fields: dict[str, Any] = {
        "kernel_release": KVER,
        "build_dir": "/b",
        "agent_files": (),
        "python_files": (),
        "python_extensions": (),
        "collector": "/usr/bin/makedumpfile",
        "vmcore_dmesg": "/usr/sbin/vmcore-dmesg",
        "user_programs": (),
        "failure_action": "reboot",
        "init": KDUMPD_INIT,
    }
    fields.update(values)
    return ModuleContext(**fields)

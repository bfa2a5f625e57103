"""Dump targets: one module per kind.

The first-kernel side of each target (discovery of the device, its filesystem
and mount options, the persistent name the capture kernel will see) lives
here; the capture side lives in :mod:`kdumpd.capture`. Filesystem targets
(the default path target and ``ext4 UUID=...`` style directives,
:mod:`kdumpd.targets.fs`), raw devices (:mod:`kdumpd.targets.raw`) and ssh
servers (:mod:`kdumpd.targets.ssh`, with :mod:`kdumpd.targets.network`).
"""

from __future__ import annotations

from kdumpd.errors import KdumpError


class TargetError(KdumpError):
    """The dump target cannot be used: it is missing, of the wrong type or unsupported."""

    dbus_name = "org.kdumpd.Error.InvalidTarget"

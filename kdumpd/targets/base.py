"""What every target kind offers the first kernel: compile, preflight, what the image needs.

One module per kind (:mod:`.fs`, :mod:`.raw`, :mod:`.ssh`) implements
:class:`TargetKind` with three functions; :mod:`kdumpd.targets` keeps the
registry. The planner, the manager and the image builder go through the
registry and never name a kind, so adding one is a module here, a sink in
:mod:`kdumpd.capture`, a dataclass in :mod:`kdumpd.contract.plan`, and their
tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.contract.plan import CapturePlan, Target
from kdumpd.messages import Messages
from kdumpd.paths import Paths


@dataclass(frozen=True)
class CompiledTarget:
    """The plan's target, and host facts the image build needs that the plan does not carry."""

    target: Target
    #: Devices (first-kernel names) whose drivers and device stacks the image needs.
    devices: tuple[str, ...] = ()
    #: dracut modules the kind needs beyond the base set (ssh: systemd-networkd).
    dracut_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageFile:
    """A file the kind puts into the capture image: its content, where, with which mode."""

    name: str  # file name in the build directory
    image_path: str
    mode: str  # "0600"
    content: bytes
    #: Read only by dracut's systemd initrd (a systemd.network file): the small init,
    #: which configures the network itself, leaves it out.
    systemd_only: bool = False


@dataclass(frozen=True)
class ImageNeeds:
    """What the capture image must hold for a target, beyond the agent and its collector."""

    #: Kernel modules (``--add-drivers``): the filesystem type, the NIC driver.
    drivers: tuple[str, ...] = ()
    #: Devices whose drivers come in by host-only rules (``--add-device``).
    devices: tuple[str, ...] = ()
    #: Programs the capture side runs for this kind (ssh: ssh and ip).
    programs: tuple[str, ...] = ()
    files: tuple[ImageFile, ...] = ()
    #: Host files copied into the image, by the manifest label of each (ssh: the key).
    inputs: Mapping[str, Path] = field(default_factory=dict)
    #: Units started with initrd.target.
    start_units: tuple[str, ...] = ()
    #: NICs whose drivers the image gets (``--hostonly-nics``).
    nics: tuple[str, ...] = ()
    #: Keep dracut's generic driver set (no ``--drivers``) on dracut's systemd initrd: a
    #: NIC's bus driver is not a dependency of its driver, and only that set brings it.
    #: kdumpd's small init ignores it (99kdumpd installs the NIC's driver chain).
    generic_drivers: bool = False


class TargetKind(Protocol):
    """The first-kernel side of one kind of dump target (a module of this package)."""

    def compile(
        self, config: KdumpConfig, paths: Paths, *, where: tuple[str, int]
    ) -> CompiledTarget:
        """The plan's target for ``config``; ConfigError at ``where`` (file, line) when unusable."""
        ...

    def preflight(self, paths: Paths, messages: Messages, plan: CapturePlan) -> None:
        """Prove, before arming, that the capture kernel will reach the target."""
        ...

    def image_needs(self, paths: Paths, plan: CapturePlan) -> ImageNeeds:
        """What the capture image must hold for ``plan.target``."""
        ...

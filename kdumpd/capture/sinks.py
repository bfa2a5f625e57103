"""The sink of each target kind: the one place the capture side chooses by kind."""

from __future__ import annotations

from typing import assert_never

from kdumpd.capture.base import Sink
from kdumpd.capture.fs import FsDump
from kdumpd.capture.log import CaptureLog
from kdumpd.capture.raw import RawDump
from kdumpd.capture.ssh import SshDump
from kdumpd.contract.plan import FsTarget, RawTarget, SshTarget, Target
from kdumpd.paths import Paths


def sink_for(paths: Paths, target: Target, log: CaptureLog) -> Sink:
    """The sink that saves a dump to ``target``."""
    match target:
        case FsTarget():
            return FsDump(paths, target, log)
        case RawTarget():
            return RawDump(paths, target, log)
        case SshTarget():
            return SshDump(target, log)
        case _:
            assert_never(target)

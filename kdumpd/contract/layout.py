"""The dump directory: its name and the files in it, as both kernels and the next boot see them.

Layout, as kdump-utils: ``<path>/<address>-<YYYY-MM-DD-HH:MM:SS>/`` holding
``vmcore-dmesg.txt``, ``vmcore`` (``vmcore-incomplete`` until complete; ssh
keeps the flattened stream as ``vmcore.flat``), ``kexec-dmesg.log`` and
kdumpd's ``kdumpd-metadata.json``. ``<address>`` is ``127.0.0.1`` for local
targets and the capture kernel's source address toward an ssh server.
"""

from __future__ import annotations

from datetime import datetime

LOCAL_ADDRESS = "127.0.0.1"

VMCORE = "vmcore"
VMCORE_INCOMPLETE = "vmcore-incomplete"
VMCORE_FLAT = "vmcore.flat"
DMESG = "vmcore-dmesg.txt"
DMESG_INCOMPLETE = "vmcore-dmesg-incomplete.txt"
LOG = "kexec-dmesg.log"
METADATA = "kdumpd-metadata.json"
METADATA_FORMAT = "kdumpd-capture-metadata"
METADATA_VERSION = 1

#: Room kept for the log and metadata before the vmcore may fill the target, so
#: that a full disk still leaves the record of why.
RESERVED_BYTES: dict[str, int] = {LOG: 512 * 1024, METADATA: 64 * 1024}


def dump_dir_name(address: str, when: datetime) -> str:
    """``127.0.0.1-2024-06-23-21:27:26``, as kdump-utils names dump directories."""
    return f"{address}-{when:%Y-%m-%d-%H:%M:%S}"

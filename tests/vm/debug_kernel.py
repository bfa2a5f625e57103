"""The crashed guest kernel's debug vmlinux, for ``kdumpctl analyze --report`` on the host.

``linux-image-<release>-dbg`` is about 860 MB; only its vmlinux (about 630 MB) is
kept, in ``.cache/debug/`` of the repository like the guest image, so later runs
skip the download. The package comes from the host's apt sources with
``apt-get download`` (no install); the rest of it is deleted at once.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from pathlib import Path

from kdumpd import proc

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "debug"


def debug_vmlinux(release: str, cache: Path = CACHE) -> Path:
    """Path of vmlinux-<release> with debug info, downloaded and extracted once."""
    target = cache / f"vmlinux-{release}"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        # pytest-xdist workers share the cache: one downloads, the others wait.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        package = f"linux-image-{release}-dbg"
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            proc.run(["apt-get", "download", package], cwd=tmp, timeout=3600)
            debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
            if len(debs) != 1:
                raise RuntimeError(f"apt-get download {package} left {debs} in {tmp}")
            member = f"./usr/lib/debug/boot/vmlinux-{release}"
            proc.run(
                ["dpkg-deb", "--fsys-tarfile", str(debs[0])],
                pipe_to=["tar", "-x", "-C", tmp, member],
                timeout=3600,
            )
            partial = cache / f".vmlinux-{release}.partial"
            shutil.move(str(Path(tmp) / member), partial)
            partial.rename(target)
    return target

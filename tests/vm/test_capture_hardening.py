"""Issue 8 in a real guest: rollback keeps the loaded kernel's files; hooks cannot lose a dump.

One guest, one crash, two proofs:

1. Hooks in the real capture image: a pre.d hook that prints bytes that are not
   UTF-8 and one without ``#!`` (exec fails). Both are recorded in the metadata
   and the dump is saved.
2. A restart whose new image cannot be loaded: the rebuild replaces the image
   (a third hook, ``30-new-image``, is only in the new one) and the load fails (a
   command line longer than the kernel takes). The previous kernel and image are
   put back, ``kdumpctl status`` says operational, and the crash is captured by
   the *previous* image: the metadata lists the first two hooks and not the third.
   Before the fix, "putting back" loaded the new image from the same path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harness import Guest
from scenario import (
    arm_guest,
    crash_and_check_local,
    kdumpctl,
)

PRE_D = "/etc/kdump/pre.d"
BYTES_HOOK = f"{PRE_D}/10-bytes"
NO_INTERPRETER = f"{PRE_D}/20-no-interpreter"
NEW_IMAGE_HOOK = f"{PRE_D}/30-new-image"
# x86 takes at most 2047 bytes of command line: this one fails kexec_file_load.
TOO_LONG = "x" * 3000


def test_rollback_and_hooks_in_the_capture_image(
    make_guest: Callable[..., Guest], kdumpd_deb: str
) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    guest = make_guest()
    guest.start()
    guest.wait_for_ssh()
    timings["boot"] = time.monotonic() - started
    # The hooks are in place before the package's first start builds the image.
    guest.ssh(
        f"mkdir -p {PRE_D} && "
        f"printf '#!/bin/sh\\nprintf \"caf\\\\351 \\\\377\\\\376\\\\n\"\\nexit 0\\n' "
        f"> {BYTES_HOOK} && "
        f"printf 'echo this hook has no interpreter line\\n' > {NO_INTERPRETER} && "
        f"chmod 755 {BYTES_HOOK} {NO_INTERPRETER}"
    )
    began = time.monotonic()
    arm_guest(guest, kdumpd_deb)
    timings["install_and_arm"] = time.monotonic() - began
    image_before = guest.ssh("sha256sum /var/lib/kdumpd/*kdump.img").stdout.split()[0]

    # The new image differs (one more hook); its load fails on the command line.
    guest.ssh(
        f"printf '#!/bin/sh\\necho new image\\n' > {NEW_IMAGE_HOOK} && chmod 755 {NEW_IMAGE_HOOK}"
        f" && echo 'KDUMP_COMMANDLINE_APPEND=\"$KDUMP_COMMANDLINE_APPEND {TOO_LONG}\"'"
        " >> /etc/default/kdump"
    )
    began = time.monotonic()
    failed = kdumpctl(guest, "restart")
    timings["failed_restart"] = time.monotonic() - began
    said = failed.stdout + failed.stderr
    assert failed.returncode != 0, said
    assert "put back the previous capture kernel" in said, said
    image_after = guest.ssh("sha256sum /var/lib/kdumpd/*kdump.img").stdout.split()[0]
    assert image_after != image_before, "the failed restart did not rebuild the image"
    assert guest.ssh("cat /sys/kernel/kexec_crash_loaded").stdout.strip() == "1"
    status = kdumpctl(guest, "status")
    assert status.returncode == 0, status
    assert "Kdump is operational" in status.stderr, status

    dump, meta = crash_and_check_local(guest, "/var/crash", timings)

    hooks = {hook["path"]: hook for hook in meta["hooks"]}
    # The image that captured is the one loaded before the failed restart.
    assert sorted(hooks) == [BYTES_HOOK, NO_INTERPRETER], meta["hooks"]
    assert hooks[BYTES_HOOK]["returncode"] == 0 or hooks[BYTES_HOOK]["error"], hooks
    assert hooks[NO_INTERPRETER]["returncode"] != 0, hooks
    assert hooks[NO_INTERPRETER]["error"], hooks

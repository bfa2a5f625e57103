"""Loading and unloading the capture kernel with kexec-tools (``kexec -p``).

This module owns the kexec command lines (§2.2 of the compatibility spec) and
the sentences a failed ``kexec`` turns into. It decides nothing else: which
kernel, initrd and command line to load is the manager's business.

The argv builders are pure so that tests can check them without running kexec.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from kdumpd import proc
from kdumpd.errors import KdumpError
from kdumpd.messages import Messages
from kdumpd.paths import Paths

KEXEC = "kexec"

# Both spellings select kexec_file_load(2); kexec-tools accepts either.
FILE_LOAD_FLAGS = frozenset({"-s", "--kexec-file-syscall"})

LOADED = "kexec: loaded kdump kernel"
LOAD_FAILED = "kexec: failed to load kdump kernel"
UNLOADED = "kexec: unloaded kdump kernel"
UNLOAD_FAILED = "kexec: failed to unload kdump kernel"


class KexecError(KdumpError):
    """kexec refused to load or unload the capture kernel."""

    dbus_name = "org.kdumpd.Error.KexecFailed"


def split_kexec_args(kexec_args: str | Sequence[str]) -> list[str]:
    """KEXEC_ARGS as a list: a string is split the way the shell would split it."""
    if isinstance(kexec_args, str):
        return shlex.split(kexec_args)
    return list(kexec_args)


def uses_file_load(kexec_args: str | Sequence[str], *, secure_boot: bool) -> bool:
    """True when kexec will use kexec_file_load: asked for in KEXEC_ARGS, or Secure Boot.

    Under Secure Boot the kernel is locked down and refuses the older kexec_load
    syscall, so kdump-utils adds ``-s`` on its own (logging it); so do we.
    """
    return secure_boot or any(arg in FILE_LOAD_FLAGS for arg in split_kexec_args(kexec_args))


def load_argv(
    *,
    kernel: Path | str,
    initrd: Path | str,
    cmdline: str,
    kexec_args: str | Sequence[str] = (),
    secure_boot: bool = False,
) -> list[str]:
    """``kexec [KEXEC_ARGS] [-s] -p --command-line=<cmdline> --initrd=<initrd> <kernel>``.

    ``-s`` is added after KEXEC_ARGS when Secure Boot is enforced and KEXEC_ARGS
    does not already select kexec_file_load (no duplicate flag).
    """
    args = split_kexec_args(kexec_args)
    argv = [KEXEC, *args]
    if secure_boot and not any(arg in FILE_LOAD_FLAGS for arg in args):
        argv.append("-s")
    argv += ["-p", f"--command-line={cmdline}", f"--initrd={initrd}", str(kernel)]
    return argv


def unload_argv(*, kexec_args: str | Sequence[str] = (), secure_boot: bool = False) -> list[str]:
    """``kexec [-s] -p -u``.

    Only the syscall choice is taken from KEXEC_ARGS: under lockdown the
    kexec_load syscall is refused even for unloading, so an image loaded with
    ``-s`` is unloaded with ``-s``. Other KEXEC_ARGS (load options) do not apply.
    """
    argv = [KEXEC]
    if uses_file_load(kexec_args, secure_boot=secure_boot):
        argv.append("-s")
    return [*argv, "-p", "-u"]


def lockdown_mode(paths: Paths) -> str | None:
    """The active kernel lockdown mode (none, integrity, confidentiality), or None if unknown.

    /sys/kernel/security/lockdown reads like ``none [integrity] confidentiality``.
    """
    try:
        text = paths.kernel_lockdown.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def explain_failure(
    stderr: str, argv: Sequence[str], *, kernel: str = "", lockdown: str | None = None
) -> str:
    """A hint for the common reasons kexec refuses a crash kernel, or "" if none applies.

    The kernel answers EPERM in two lockdown situations that look alike on stderr:
    kexec_load (no ``-s``) is never allowed under lockdown, and kexec_file_load
    (``-s``) is refused when the kernel image's signature is not trusted.
    """
    file_load = any(arg in FILE_LOAD_FLAGS for arg in argv)
    where = f" (lockdown: {lockdown})" if lockdown and lockdown != "none" else ""
    if "Operation not permitted" in stderr or "Key was rejected" in stderr:
        if file_load:
            return (
                f"the kernel refused kexec_file_load{where}: under lockdown or Secure Boot it "
                f"only loads a kernel image signed with a key it trusts; check that "
                f"{kernel or 'the capture kernel'} is the distribution's signed image"
            )
        return (
            f"the kernel refused kexec_load{where}: a locked-down kernel (Secure Boot) "
            f"only accepts kexec_file_load; add -s to KEXEC_ARGS in /etc/default/kdump"
        )
    if "Cannot assign requested address" in stderr or "Cannot allocate memory" in stderr:
        return (
            "the capture kernel and initrd do not fit the crashkernel= reservation; "
            "reserve more memory (kdumpctl estimate) or shrink the image"
        )
    if "syscall kexec_file_load not available" in stderr:
        return "this kernel lacks kexec_file_load; remove -s from KEXEC_ARGS in /etc/default/kdump"
    return ""


def _failure(
    headline: str, error: proc.ProgramError, *, kernel: str, lockdown: str | None
) -> KexecError:
    lines = [headline]
    detail = error.stderr.strip() or error.reason
    if detail:
        lines.append(detail)
    hint = explain_failure(error.stderr, error.argv, kernel=kernel, lockdown=lockdown)
    if hint:
        lines.append(hint)
    return KexecError("\n".join(lines))


def load(
    *,
    kernel: Path | str,
    initrd: Path | str,
    cmdline: str,
    kexec_args: str | Sequence[str] = (),
    secure_boot: bool = False,
    messages: Messages | None = None,
    lockdown: str | None = None,
) -> None:
    """Load ``kernel`` + ``initrd`` as the crash kernel; raise KexecError with kexec's stderr."""
    if messages is not None and secure_boot:
        messages.info("Secure Boot is enabled. Using kexec file based syscall.")
    argv = load_argv(
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        kexec_args=kexec_args,
        secure_boot=secure_boot,
    )
    try:
        proc.run(argv, timeout=120)
    except proc.ProgramError as exc:
        raise _failure(LOAD_FAILED, exc, kernel=str(kernel), lockdown=lockdown) from None
    if messages is not None:
        messages.info(LOADED)


def unload(
    *,
    kexec_args: str | Sequence[str] = (),
    secure_boot: bool = False,
    messages: Messages | None = None,
    lockdown: str | None = None,
) -> None:
    """Unload the crash kernel (a no-op for the kernel when none is loaded).

    Unloading is idempotent, so when the preferred syscall fails the other one
    is tried once: kernels without kexec_file_load reject ``-s`` (the x86
    default KEXEC_ARGS), locked-down kernels reject the plain syscall.
    """
    argv = unload_argv(kexec_args=kexec_args, secure_boot=secure_boot)
    try:
        proc.run(argv, timeout=60)
    except proc.ProgramError as first:
        other = [KEXEC, "-p", "-u"] if "-s" in argv else [KEXEC, "-s", "-p", "-u"]
        try:
            proc.run(other, timeout=60)
        except proc.ProgramError:
            raise _failure(UNLOAD_FAILED, first, kernel="", lockdown=lockdown) from None
    if messages is not None:
        messages.info(UNLOADED)

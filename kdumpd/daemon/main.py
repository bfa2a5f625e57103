"""``kdumpd``: the service's entry point; wires the core to GLib, D-Bus, monitors and udev.

Start-up order: publish on the bus (so status calls work while dracut runs),
arm (READY=1 only once the capture kernel is loaded; a failure exits non-zero
so the unit fails), then announce dumps saved since the last run, then follow
edits and hotplug until SIGTERM, which unloads the capture kernel.

``--root DIR`` runs against a tree: the loader then only moves the tree's
``kexec_crash_loaded`` and never touches the running kernel, and hotplug
events are not read (they belong to the running machine).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gi.repository import GLib

from kdumpd import host, manager
from kdumpd.daemon.core import Core, watched_dirs, watched_files
from kdumpd.daemon.debounce import Debouncer
from kdumpd.daemon.journal import ERR, WARNING, Journal
from kdumpd.daemon.notify import Notifier
from kdumpd.daemon.worker import Worker
from kdumpd.paths import Paths

#: Quiet time after the last file event before the inputs are compared.
EDIT_SETTLE_MS = 250
#: Quiet time after the last hotplug event: memory blocks come online one by one.
HOTPLUG_SETTLE_MS = 1500


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdumpd", description="Keeps kdump armed and answers on D-Bus (org.kdumpd1)."
    )
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="manage the system tree under DIR (tests): the running kernel is never touched",
    )
    parser.add_argument(
        "--no-hotplug", action="store_true", help="do not follow CPU/memory hotplug from udev"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths(root=Path(args.root).absolute())
    real = paths.root == Path("/")
    loader: manager.Loader = manager.KEXEC if real else manager.TreeLoader()
    journal = Journal()
    notifier = Notifier()
    core = Core(paths, journal=journal, notifier=notifier, loader=loader, arch=host.machine_arch())
    loop = GLib.MainLoop()
    worker = Worker()
    exit_code = 0

    service = None
    try:
        from kdumpd.daemon.bus import Service

        service = Service(core, worker)
    except Exception as exc:
        # Arming matters more than the API: keep kdump armed without D-Bus,
        # kdumpctl then acts directly.
        journal.line(f"kdumpd: D-Bus unavailable, running without it: {exc}", priority=WARNING)

    watch = None
    hotplug = None
    stopping = False

    def stop(*_: object) -> bool:
        # After the running job (a build finishes: a restart right after an edit
        # then finds the image current), unload and quit.
        nonlocal stopping
        if not stopping:
            stopping = True
            worker.submit(core.shutdown, lambda result, error: loop.quit())
        return True  # keep the handler: a second SIGTERM is ignored, not fatal

    def started(ok: object, error: BaseException | None) -> None:
        nonlocal exit_code, watch, hotplug
        if error is not None or not ok:
            if error is not None:
                journal.line(f"kdumpd: internal error while arming: {error!r}", priority=ERR)
            notifier.status(core.status_text())
            exit_code = 1
            loop.quit()
            return
        notifier.ready(core.status_text())
        from kdumpd.daemon.watch import InputWatch

        edits = Debouncer(EDIT_SETTLE_MS, lambda count: worker.submit(core.inputs_changed))
        watch = InputWatch(watched_files(paths), watched_dirs(paths), edits)
        if real and not args.no_hotplug:
            try:
                from kdumpd.daemon.hotplug import HotplugWatch

                settled = Debouncer(
                    HOTPLUG_SETTLE_MS,
                    lambda count: worker.submit(lambda: core.hotplug_settled(count)),
                )
                hotplug = HotplugWatch.from_udev(settled)
            except (OSError, ImportError) as exc:
                journal.line(f"kdumpd: not following hotplug: {exc}", priority=WARNING)

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, stop)
    worker.submit(core.startup, started)
    try:
        loop.run()
    finally:
        if watch is not None:
            watch.close()
        if hotplug is not None:
            hotplug.close()
        worker.close(timeout=5)
        if service is not None:
            service.close()
    if exit_code:
        journal.line(f"kdumpd: {core.reason or 'arming failed'}", priority=ERR)
    return exit_code


def entry() -> None:
    """Console script: exit with main's code; no traceback for a signal at start."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    entry()

"""The capture agent: runs in the crash kernel's initramfs and saves /proc/vmcore.

It executes a :class:`kdumpd.plan.CapturePlan` and decides nothing the first
kernel could have decided. Stdlib only (plus kdumpd.proc, kdumpd.errors,
kdumpd.plan, kdumpd.paths and kdumpd.vmcore, which are stdlib-only too),
because the image carries exactly the modules it imports.

Modules: ``agent`` (the flow: hooks, dump, actions), ``fs`` (the filesystem
target; raw and ssh will be siblings implementing the same ``DumpSink``),
``collector`` (core_collector rewriting and the sparse-copy fallback),
``hooks``, ``actions``, ``log``.
"""

"""The capture agent: runs in the crash kernel's initramfs and saves /proc/vmcore.

It executes a :class:`kdumpd.contract.plan.CapturePlan` and decides nothing
the first kernel could have decided. Standard library only, and of kdumpd only
the contract (:mod:`kdumpd.contract`), the ground (:mod:`kdumpd.errors`,
:mod:`kdumpd.paths`, :mod:`kdumpd.proc`, :mod:`kdumpd.durable`,
:mod:`kdumpd.mountinfo`) and the vmcore readers, because the image carries
exactly the files of :data:`kdumpd.image.agent.AGENT_FILES`.

Modules: ``agent`` (the flow: hooks, dump, actions), one sink per target kind
(``fs``, ``raw``, ``ssh``, behind ``base``; ``sinks`` picks one), ``collector``
(core_collector rewriting and the sparse-copy fallback), ``hooks``,
``actions``, ``log``.
"""

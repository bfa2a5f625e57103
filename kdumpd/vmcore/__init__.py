"""Readers of crash dump files (stdlib only: the capture agent imports them).

``dump``: one entry point for every format (:func:`~kdumpd.vmcore.dump.open_dump`)
and kernel virtual memory (x86_64 translation); ``elf``: ELF cores (/proc/vmcore);
``kdump``: makedumpfile's kdump-compressed format; ``pagecodecs``: its page
decompressors; ``flattened``: makedumpfile's flattened stream (``-F``), as raw and
ssh targets keep it, walked or read in place; ``vmcoreinfo``: the VMCOREINFO text;
``printk``: the kernel log of every printk buffer layout. Synthetic dumps for tests
are written by ``tests/support/synth.py`` and ``tests/support/dumpbuilders.py``.
"""

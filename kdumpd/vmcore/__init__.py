"""Readers of crash dump files (stdlib only: the capture agent imports them).

``dump``: one entry point for every format (:func:`~kdumpd.vmcore.dump.open_dump`)
and kernel virtual memory (x86_64 translation); ``elf``: ELF cores (/proc/vmcore);
``kdump``: makedumpfile's kdump-compressed format; ``pagecodecs``: its page
decompressors; ``flattened``: random access to ``makedumpfile -F`` streams;
``vmcoreinfo``: the VMCOREINFO text; ``printk``: the kernel log of every printk
buffer layout. Synthetic dumps for tests are built by tests/synthcore.py and
tests/dumpbuilders.py.
"""

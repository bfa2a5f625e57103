"""Readers of crash dump files (stdlib only: the capture agent imports ``elf``).

``elf``: the ELF core of ``/proc/vmcore`` (headers, notes, VMCOREINFO).
``flattened``: makedumpfile's flattened stream (``-F``), as raw and ssh targets keep it.
Synthetic cores for tests are written by ``tests/support/synth.py``.
"""

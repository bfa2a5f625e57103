"""Readers and writers of crash dump files (stdlib only: the capture agent imports this).

``elf``: the ELF core of ``/proc/vmcore`` (headers, notes, VMCOREINFO).
``synth``: a generator of synthetic ELF cores that real tools accept, for tests.
"""

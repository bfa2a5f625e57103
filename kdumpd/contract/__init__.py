"""What the first kernel and the capture kernel agree on.

The plan (:mod:`.plan`, a tagged union per target kind), the dump directory
layout and file names (:mod:`.layout`), the ssh command line and the way an
ssh failure is told apart and worded (:mod:`.ssh`), and the action names
(:mod:`.actions`). Both sides import this package; it is standard library
only and imports nothing of kdumpd but :mod:`kdumpd.errors`, so the capture
image carries it as it is.
"""

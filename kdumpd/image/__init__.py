"""The capture initramfs, split by job.

``agent``: the agent's files (allow-listed), the stdlib it needs and where its
python comes from. ``render``: the dracut module's files from jinja2
templates, each output quoted in its own dialect. ``programs``: programs and
kernel modules of the host. ``manifest``: hashes of every input and the
rebuild decision. ``dracut``: the dracut command line. ``build``: staging and
running dracut.
"""

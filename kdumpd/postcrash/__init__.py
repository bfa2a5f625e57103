"""The next boot: what happens to a dump after the capture kernel rebooted.

``raw_import``: a raw device's flattened stream brought home into /var/crash.
``report``: what the saved kernel log says about the crash.
"""

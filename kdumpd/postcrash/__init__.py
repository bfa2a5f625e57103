"""The next boot: what happens to a dump after the capture kernel rebooted.

``raw_import``: a raw device's flattened stream brought home into /var/crash.
``report``: what the saved kernel log says about the crash.
``dumps``: the saved dumps this machine sees (listing, crash report).
``newdumps``: which dumps are new since the daemon's last run, their report files.
``retention``: which old dumps go when there are too many or they take too much room.
``analyze``: the debug kernel matching a dump, crash's command line, the drgn report.
"""

"""kdumpd, the long-running service: keeps kdump armed and answers on D-Bus.

``core`` holds the daemon's state and decisions (no D-Bus, no GLib sources),
``bus`` is the only module that imports dasbus, ``watch`` and ``hotplug`` turn
file and udev events into debounced calls, ``notify`` and ``journal`` speak to
systemd, and ``main`` wires them on one GLib main loop.
"""

"""One guest connection to one loopback port: the program behind a QEMU ``guestfwd`` rule.

QEMU (``guestfwd=tcp:<addr>:<port>-cmd:python3 tcp_bridge.py 127.0.0.1 <port>``)
starts this once per guest connection with the connection as stdin, stdout and
stderr. It connects to the host port and copies bytes both ways until both sides
are done. It never prints anything: its stderr is the guest's connection too.
When nothing listens on the port it exits at once, and the guest sees the
connection closed, as with a server that is down.

Only loopback addresses are accepted, so a test cannot use it to reach further.
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import sys

_CHUNK = 65536


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def bridge(host: str, port: int) -> int:
    if not ipaddress.ip_address(host).is_loopback:
        return 2
    try:
        server = socket.create_connection((host, port), timeout=10)
    except OSError:
        return 1
    server.settimeout(None)
    with selectors.DefaultSelector() as sel:
        sel.register(0, selectors.EVENT_READ, "guest")
        sel.register(server, selectors.EVENT_READ, "server")
        while sel.get_map():
            for key, _ in sel.select():
                if key.data == "guest":
                    data = os.read(0, _CHUNK)
                    if data:
                        server.sendall(data)
                        continue
                    sel.unregister(0)
                    server.shutdown(socket.SHUT_WR)
                else:
                    data = server.recv(_CHUNK)
                    if data:
                        _write_all(1, data)
                        continue
                    # The server is done: the guest's connection ends with us.
                    return 0
    return 0


def main() -> int:
    try:
        return bridge(sys.argv[1], int(sys.argv[2]))
    except (OSError, ValueError, IndexError):
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The capture kernel's network for ssh targets: which NIC, configured how, as the first kernel.

The first kernel knows how it reaches the dump server: ``ip route get`` names
the interface, the source address and the gateway, and ``ip addr`` says
whether that address came from DHCP (it is ``dynamic``) or was set statically.
:func:`network_for` turns that into a :class:`~kdumpd.contract.plan.NetworkSpec`, and
:func:`network_unit` into the systemd.network file that systemd-networkd
(dracut's ``systemd-networkd`` module) applies in the capture initramfs: the
same NIC, matched by its MAC address because names may change, brought up the
same way (DHCP again, or the same static address and gateway). Whatever
network manager the first kernel uses (ifupdown, NetworkManager, networkd),
what counts is the state it produced.

Bridges, bonds, VLANs and other virtual interfaces are refused with an error
that says so: their set-up is not mirrored yet.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

from kdumpd import proc
from kdumpd.contract.plan import NetworkSpec
from kdumpd.errors import ConfigError, Problem, TargetError
from kdumpd.paths import Paths

#: How long the capture agent waits for a route to the server (kdumpctl waits 180 s too).
ROUTE_WAIT_SECONDS = 180


class NetworkError(TargetError):
    """The first kernel's route to the dump server cannot be mirrored in the capture kernel."""


def resolve_address(host: str, *, where: tuple[str, int]) -> str:
    """``host`` when it is an IP address, else the address the first kernel resolves it to.

    IPv4 first, as kdump-utils prefers. Raises ConfigError at ``where``.
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(
            [
                Problem(
                    where[0],
                    where[1],
                    f"cannot resolve the dump server {host}: {exc}; write its address "
                    "or fix name resolution",
                )
            ]
        ) from exc
    found.sort(key=lambda item: 0 if item[0] == socket.AF_INET else 1)
    return str(found[0][4][0])


def _ip_json(argv: list[str], what: str) -> list[dict[str, Any]]:
    try:
        done = proc.run(argv, timeout=30)
        data = json.loads(done.stdout or "[]")
    except proc.ProgramError as exc:
        raise NetworkError(f"{what}: {exc}") from exc
    except ValueError as exc:
        raise NetworkError(f"{what}: ip printed no JSON ({exc})") from exc
    if not isinstance(data, list):
        raise NetworkError(f"{what}: unexpected output of {' '.join(argv)}")
    return [entry for entry in data if isinstance(entry, dict)]


def _driver(paths: Paths, interface: str) -> str | None:
    """The kernel module of a NIC; "" when built in; None for a virtual interface."""
    device = paths.under_root(f"/sys/class/net/{interface}/device")
    if not device.exists():
        return None
    module = device / "driver" / "module"
    try:
        return module.resolve(strict=True).name
    except OSError:
        return ""


def network_for(paths: Paths, server: str) -> NetworkSpec:
    """How the first kernel reaches ``server`` (an address), as a NetworkSpec."""
    routes = _ip_json(["ip", "-j", "route", "get", server], f"no route to the dump server {server}")
    if not routes or "dev" not in routes[0]:
        raise NetworkError(f"Bad kdump network destination: {server} (ip route get found no route)")
    route = routes[0]
    interface = str(route["dev"])
    source = str(route.get("prefsrc", ""))
    if interface == "lo" or route.get("type") == "local":
        raise NetworkError(
            f"the dump server {server} is this machine; a dump must leave the crashing "
            "machine: name another host"
        )
    driver = _driver(paths, interface)
    if driver is None:
        raise NetworkError(
            f"the route to the dump server {server} goes through {interface}, a virtual "
            "interface (bridge, bond, VLAN...); kdumpd mirrors only physical NICs so far. "
            "Reach the server through a physical interface, or use a local target."
        )
    links = _ip_json(
        ["ip", "-j", "addr", "show", "dev", interface], f"cannot read the addresses of {interface}"
    )
    if not links:
        raise NetworkError(f"ip addr printed nothing for {interface}")
    link = links[0]
    mac = str(link.get("address", ""))
    family = "inet6" if ":" in server else "inet"
    addresses = [a for a in link.get("addr_info", []) if a.get("family") == family]
    own = next((a for a in addresses if a.get("local") == source), None)
    if own is None:
        own = next((a for a in addresses if a.get("scope") == "global"), None)
    if own is None:
        raise NetworkError(
            f"{interface} has no {family} address to reach the dump server {server} from"
        )
    gateway = route.get("gateway")
    if own.get("dynamic"):
        return NetworkSpec(
            interface=interface,
            mac=mac,
            driver=driver,
            dhcp="ipv6" if family == "inet6" else "ipv4",
            server=server,
            wait_seconds=ROUTE_WAIT_SECONDS,
        )
    return NetworkSpec(
        interface=interface,
        mac=mac,
        driver=driver,
        dhcp="no",
        server=server,
        addresses=(f"{own['local']}/{own['prefixlen']}",),
        gateway=str(gateway) if gateway else None,
        wait_seconds=ROUTE_WAIT_SECONDS,
    )


def network_unit(spec: NetworkSpec) -> str:
    """The systemd.network file that brings ``spec``'s NIC up in the capture initramfs."""
    lines = [
        "# Written by kdumpd: the NIC that reaches the dump server, as the first kernel has it.",
        "[Match]",
        f"MACAddress={spec.mac}" if spec.mac else f"Name={spec.interface}",
        "",
        "[Link]",
        "RequiredForOnline=yes",
        "",
        "[Network]",
    ]
    if spec.dhcp != "no":
        lines.append(f"DHCP={spec.dhcp}")
    lines += [f"Address={address}" for address in spec.addresses]
    if spec.gateway:
        lines.append(f"Gateway={spec.gateway}")
    # The capture kernel needs one route to one server; no IPv6 autoconfiguration noise.
    if spec.dhcp != "ipv6" and ":" not in spec.server:
        lines.append("IPv6AcceptRA=no")
        lines.append("LinkLocalAddressing=no")
    return "\n".join(lines) + "\n"

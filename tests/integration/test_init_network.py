"""The small init's network (kdumpd-network.sh) with klibc's real ipconfig, in a private netns.

A veth pair joins this machine's namespace to a throw-away network namespace;
the capture side's end moves into it, and the rendered script runs there as the
init would run it: find the NIC by its MAC, configure it. Static IPv4 here (the
VM scenarios prove DHCP against QEMU's server). Nothing is sent anywhere: a
static configuration needs no packet, and the test reads the result with ``ip``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kdumpd.image import render
from kdumpd.image.init import IPCONFIG
from tests.support.module_context import small_init_context

pytestmark = [pytest.mark.integration, pytest.mark.requires("ip", IPCONFIG, root=True)]

TEMPLATES = Path(__file__).resolve().parents[2] / "dracut-module" / "templates"


@dataclass(frozen=True)
class Netns:
    name: str
    nic: str  # the capture side's end, inside the namespace
    mac: str

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )


@pytest.fixture
def netns() -> Iterator[Netns]:
    tag = uuid.uuid4().hex[:6]
    name, host_end, nic = f"kdumpd-{tag}", f"kdh{tag}", f"kdc{tag}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "link", "add", host_end, "type", "veth", "peer", "name", nic], check=True
        )
        subprocess.run(["ip", "link", "set", nic, "netns", name], check=True)
        mac = subprocess.run(
            ["ip", "netns", "exec", name, "cat", f"/sys/class/net/{nic}/address"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        yield Netns(name, nic, mac)
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)


def network_script(tmp_path: Path, **values: object) -> Path:
    context = small_init_context(**values)
    render.render_module(context, template_dir=TEMPLATES, out_dir=tmp_path)
    return tmp_path / "kdumpd-network.sh"


def bring_up(netns: Netns, script: Path) -> subprocess.CompletedProcess[str]:
    """Source the script as the init does (with its say) and run network_up."""
    bash = shutil.which("bash")
    assert bash is not None
    program = f'say() {{ echo "kdumpd-init: $*"; }}\n. "{script}"\nnetwork_up'
    return netns.run(bash, "-c", program, check=False)


def test_a_static_address_is_set_on_the_nic_with_that_mac(tmp_path: Path, netns: Netns) -> None:
    script = network_script(
        tmp_path,
        network_mac=netns.mac.upper(),  # the MAC is compared without regard to case
        network_address="10.199.0.2",
        network_netmask="255.255.255.0",
        network_gateway="10.199.0.1",
        network_wait_seconds=20,
    )
    done = bring_up(netns, script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"kdumpd-init: {netns.nic} is up" in done.stdout
    addresses = json.loads(netns.run("ip", "-j", "addr", "show", "dev", netns.nic).stdout)
    local = [(a["local"], a["prefixlen"]) for a in addresses[0]["addr_info"]]
    assert ("10.199.0.2", 24) in local, addresses
    route = json.loads(netns.run("ip", "-j", "route", "get", "10.199.0.1").stdout)
    assert route[0]["prefsrc"] == "10.199.0.2" and route[0]["dev"] == netns.nic, route
    default = json.loads(netns.run("ip", "-j", "route", "show", "default").stdout)
    assert [r.get("gateway") for r in default] == ["10.199.0.1"], default


def test_a_missing_nic_is_named_and_the_init_goes_on(tmp_path: Path, netns: Netns) -> None:
    script = network_script(
        tmp_path,
        network_mac="02:00:00:00:00:01",
        network_address="10.199.0.2",
        network_netmask="255.255.255.0",
        network_wait_seconds=1,
    )
    done = bring_up(netns, script)
    assert done.returncode == 1
    assert "no network interface with MAC 02:00:00:00:00:01 appeared within 1 s" in done.stdout

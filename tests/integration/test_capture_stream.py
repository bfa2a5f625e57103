"""The stream targets' capture side with real programs: ssh into a loopback sshd, raw into a file.

The agent runs the real makedumpfile (``-F``) on a generated core. ssh: the stream
goes through the real ssh client into ``dd`` on a throw-away loopback sshd; the
result must reassemble with ``makedumpfile -R`` into exactly what makedumpfile
writes directly. raw: the stream goes into a plain file standing in for the device,
and the first kernel's import brings it home and erases it.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sshd import LoopbackSshd, running_sshd

from kdumpd.capture.agent import CaptureContext, run_capture
from kdumpd.capture.log import CaptureLog
from kdumpd.capture.ssh import SshDump
from kdumpd.contract.plan import CapturePlan, RawTarget, SshSpec, SshTarget, Target
from kdumpd.messages import RecordedMessages
from kdumpd.paths import Paths
from kdumpd.postcrash import raw_import
from kdumpd.targets import raw
from kdumpd.vmcore import flattened
from tests.support.synth import CoreSpec, generate_core

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("makedumpfile"),
]

WHEN = datetime(2024, 6, 23, 21, 27, 26)
COLLECTOR = ("makedumpfile", "-l", "--message-level", "7", "-d", "31")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackSshd]:
    yield from running_sshd(tmp_path)


@pytest.fixture
def core(tmp_path: Path) -> Path:
    return generate_core(tmp_path / "vmcore", CoreSpec(data_pages=64, zero_pages=64)).path


def direct_dump(core: Path, out: Path) -> bytes:
    subprocess.run([*COLLECTOR, str(core), str(out)], check=True, capture_output=True)
    return out.read_bytes()


def agent(root: Paths, core: Path, target: Target) -> tuple[CaptureContext, list[str]]:
    actions: list[str] = []
    plan = CapturePlan(
        kernel_release="6.1.0-synthetic-amd64",
        target=target,
        core_collector=COLLECTOR,
        final_action="poweroff",
    )
    ctx = CaptureContext(
        paths=root,
        plan=plan,
        vmcore=core,
        execute=actions.append,
        log=CaptureLog(console=io.StringIO()),
        now=lambda: WHEN,
        kernel_log=lambda: "crash kernel dmesg\n",
    )
    return ctx, actions


def test_ssh_capture_streams_into_dd_on_the_server(
    server: LoopbackSshd, core: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "server" / "crash"
    spec = SshSpec(
        user=server.user,
        host=server.host,
        port=server.port,
        identity=str(server.user_key),
        known_hosts=str(server.known_hosts),
        address=server.host,
    )
    ctx, actions = agent(Paths(root=tmp_path), core, SshTarget(path=str(remote), ssh=spec))
    assert run_capture(ctx) == 0, ctx.log.text()
    assert actions == ["poweroff"]

    dump = remote / "127.0.0.1-2024-06-23-21:27:26"
    names = sorted(p.name for p in dump.iterdir())
    assert names == sorted(
        ["vmcore.flat", "vmcore-dmesg.txt", "kexec-dmesg.log", "kdumpd-metadata.json"]
    ), names
    for name in names:
        assert (dump / name).stat().st_mode & 0o077 == 0, name
    with (dump / "vmcore.flat").open("rb") as f:
        assert flattened.scan(f).complete
    rebuilt = tmp_path / "rebuilt"
    with (dump / "vmcore.flat").open("rb") as f:
        subprocess.run(["makedumpfile", "-R", str(rebuilt)], stdin=f, check=True)
    assert rebuilt.read_bytes() == direct_dump(core, tmp_path / "direct")
    meta = json.loads((dump / "kdumpd-metadata.json").read_text())
    assert meta["result"] == "success"
    assert meta["collector"]["argv"][-2:] == ["-F", str(core)]
    # makedumpfile 1.7.2 does not know the synthetic 6.1 kernel and says so on stderr,
    # which streams through to the console: the metadata still keeps the line.
    assert "The kernel version is not supported." in meta["collector"]["warnings"]
    assert "saving vmcore complete" in (dump / "kexec-dmesg.log").read_text()


def test_ssh_capture_with_the_server_down_says_network(
    server: LoopbackSshd, core: Path, tmp_path: Path
) -> None:
    server.stop()
    spec = SshSpec(
        user=server.user,
        host=server.host,
        port=server.port,
        identity=str(server.user_key),
        known_hosts=str(server.known_hosts),
    )
    ctx, actions = agent(
        Paths(root=tmp_path), core, SshTarget(path=str(tmp_path / "crash"), ssh=spec)
    )

    # No retrying: the server stays down.
    def make_sink(target: Target) -> SshDump:
        assert isinstance(target, SshTarget)
        return SshDump(target, ctx.log, connect_retry=0.0)

    ctx.make_sink = make_sink
    assert run_capture(ctx) == 1
    assert actions == ["reboot"]
    assert "network: cannot reach" in ctx.log.text()
    assert "Connection refused" in ctx.log.text()


def test_raw_capture_then_import_brings_the_dump_home(core: Path, tmp_path: Path) -> None:
    root = Paths(root=tmp_path / "root")
    device = "/dev/disk/by-id/virtio-kdumpraw"
    image = root.under_root(device)
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\xaa" * (8 << 20))  # old contents: the stream must not need them gone
    ctx, actions = agent(root, core, RawTarget(device=device))
    assert run_capture(ctx) == 0, ctx.log.text()
    assert actions == ["poweroff"]
    assert raw.find_pending_dump(image)

    messages = RecordedMessages()
    imported = raw_import.import_raw_dump(root, device, messages=messages, now=WHEN)
    assert imported is not None
    assert imported.vmcore.read_bytes() == direct_dump(core, tmp_path / "direct")
    assert not raw.find_pending_dump(image)
    assert raw_import.import_raw_dump(root, device, messages=messages, now=WHEN) is None

"""start with a raw or ssh target: the pending raw dump and the ssh preflight come first."""

from __future__ import annotations

from typing import Any

import pytest

from kdumpd import manager
from kdumpd.contract import ssh as wire
from kdumpd.contract.plan import NetworkSpec, SshSpec
from kdumpd.messages import RecordedMessages
from kdumpd.paths import Paths
from kdumpd.postcrash import raw_import
from kdumpd.targets import ssh
from tests.conftest import ProgramStub, write

# The fixtures of the manager tests: a bootable fake host and a dracut stand-in.
from tests.unit.test_manager import (  # noqa: F401
    FakeDracut,
    dracut,
    kexec_kernel_tracking,
    load_calls,
    system,
)

RAW_CONF = "raw /dev/vdb\ncore_collector makedumpfile -F -l -d 31\n"
SSH_CONF = "ssh root@192.0.2.7\ncore_collector makedumpfile -F -l -d 31\n"


def test_start_refuses_to_arm_over_a_dump_it_cannot_import(
    system: Paths,  # noqa: F811
    dracut: FakeDracut,  # noqa: F811
    programs: ProgramStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(system.kdump_conf, RAW_CONF)
    seen: list[tuple[str, Any]] = []

    def failing_import(paths: Paths, device: str, **options: Any) -> None:
        seen.append((device, options["crash_dir"]))
        raise raw_import.RawImportError("not enough space in /var/crash for the dump on /dev/vdb")

    monkeypatch.setattr(raw_import, "import_raw_dump", failing_import)
    kexec_kernel_tracking(system, programs, 0)
    messages = RecordedMessages()
    with pytest.raises(manager.ArmingFailed):
        manager.start(system, messages)
    assert seen == [("/dev/vdb", system.var_crash)]
    assert load_calls(programs) == []
    assert dracut.builds == []
    assert ("error", "Starting kdump: [FAILED]") in messages.entries
    assert any("not enough space" in text for _, text in messages.entries)


def test_start_stops_when_the_ssh_preflight_fails(
    system: Paths,  # noqa: F811
    dracut: FakeDracut,  # noqa: F811
    programs: ProgramStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(system.kdump_conf, SSH_CONF)
    spec = SshSpec("root", "192.0.2.7", "/root/.ssh/kdump_id_rsa", ssh.IMAGE_KNOWN_HOSTS)
    spec = SshSpec(**{**spec.__dict__, "known_hosts_text": "192.0.2.7 ssh-ed25519 AAAA\n"})
    net = NetworkSpec("ens3", "52:54:00:12:34:56", "virtio_net", "ipv4", "192.0.2.7")
    monkeypatch.setattr(ssh, "compile_ssh_target", lambda *a, **k: (spec, net))
    known: list[str] = []

    def refuse(dest: ssh.SshDestination, **options: Any) -> None:
        with open(options["known_hosts"]) as f:
            known.append(f.read())
        raise ssh.SshTargetError(
            'Could not create root@192.0.2.7:/var/crash, you probably need to run "kdumpctl '
            'propagate".',
            wire.SshFailure.AUTHENTICATION,
        )

    monkeypatch.setattr(ssh, "run_preflight", refuse)
    messages = RecordedMessages()
    with pytest.raises(manager.ArmingFailed) as caught:
        manager.start(system, messages)
    assert isinstance(caught.value.reason, ssh.SshTargetError)
    assert known == ["192.0.2.7 ssh-ed25519 AAAA\n"]  # exactly what the image will carry
    assert dracut.builds == [] and load_calls(programs) == []
    assert any("kdumpctl propagate" in text for _, text in messages.entries)

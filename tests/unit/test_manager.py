"""The arming use cases (kdumpd.manager) over fake root trees, kexec answered by the stub.

The configuration parser, host readings, command line and plan are the real
ones; only the capture image build (dracut, tested on its own) is replaced by
a recorder, so these tests see exactly when the manager decides to rebuild.
"""

from __future__ import annotations

import fcntl
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kdumpd import cli, host, manager, proc
from kdumpd.errors import ConfigError, ExitCode
from kdumpd.image import build
from kdumpd.image.build import BuildResult
from kdumpd.image.init import choose_init
from kdumpd.image.manifest import Manifest, image_path, manifest_path
from kdumpd.messages import RecordedMessages
from kdumpd.paths import Paths
from tests.conftest import ProgramStub, write

KVER = "6.1.0-test-amd64"
GOOD_CONF = "path /var/crash\ncore_collector makedumpfile -l --message-level 7 -d 31\n"
# line 3 is the mistake; the file:line must reach the user
BROKEN_CONF = "path /var/crash\ncore_collector makedumpfile -l -d 31\nbogus_option 1\n"
PROC_CMDLINE = (
    f"BOOT_IMAGE=/boot/vmlinuz-{KVER} root=UUID=1234 ro quiet crashkernel=256M console=ttyS0\n"
)


@dataclass
class FakeDracut:
    """Stands in for kdumpd.image.build.build (dracut): writes image and manifest, records it."""

    builds: list[str] = field(default_factory=list)

    def build(
        self,
        paths: Paths,
        config: Any,
        plan: Any,
        *,
        kernel_release: str,
        manifest: Manifest,
        **kwargs: Any,
    ) -> BuildResult:
        self.builds.append(kernel_release)
        # A new file renamed over the old one, as dracut's output is.
        fresh = write(paths.state_dir / "fresh.img", f"image {len(self.builds)}")
        image = image_path(paths, kernel_release)
        fresh.replace(image)
        write(manifest_path(paths, kernel_release), manifest.to_json())
        modules = tuple(kwargs.get("extra_dracut_modules", ()))
        init = choose_init(plan, config, dracut_modules=modules)
        return BuildResult(image=image, manifest=manifest, init=init)


@pytest.fixture
def system(fake_root: Paths, programs: ProgramStub, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A bootable x86 host with 256 MiB reserved, nothing loaded, a valid kdump.conf."""
    write(fake_root.kexec_crash_loaded, "0\n")
    write(fake_root.kexec_crash_size, "268435456\n")
    write(fake_root.kdump_conf, GOOD_CONF)
    write(fake_root.default_kdump, f'KDUMP_KERNELVER="{KVER}"\nKEXEC_ARGS=""\n')
    write(fake_root.boot / f"vmlinuz-{KVER}", "kernel")
    write(fake_root.proc_cmdline, PROC_CMDLINE)
    write(fake_root.proc_mounts, "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    for program in ("usr/sbin/makedumpfile", "usr/sbin/vmcore-dmesg", "usr/bin/python3"):
        write(fake_root.root / program, program).chmod(0o755)
    fake_root.var_crash.mkdir(parents=True)
    programs.expect("dracut", stdout="dracut 059\n")  # dracut --version, for the manifest
    monkeypatch.setattr(host, "machine_arch", lambda: "x86_64")
    return fake_root


@pytest.fixture
def dracut(system: Paths, monkeypatch: pytest.MonkeyPatch) -> FakeDracut:
    fake = FakeDracut()
    monkeypatch.setattr(build, "build", fake.build)
    return fake


def image_of(paths: Paths) -> Path:
    return image_path(paths, KVER)


def set_loaded(paths: Paths, loaded: bool) -> None:
    paths.kexec_crash_loaded.write_text("1\n" if loaded else "0\n")


def kexec_kernel_tracking(paths: Paths, programs: ProgramStub, *results: int) -> None:
    """Answer kexec calls in order with ``results``, moving kexec_crash_loaded like the kernel."""

    def answer(code: int) -> Any:
        def run(argv: Sequence[str]) -> proc.Completed:
            if code == 0:
                set_loaded(paths, "-u" not in argv)
            elif "-u" not in argv:
                set_loaded(paths, False)  # a failed kexec -p leaves nothing loaded
            err = "" if code == 0 else "kexec_file_load failed: Cannot allocate memory\n"
            return proc.Completed(tuple(argv), code, "", err)

        return run

    for code in results:
        programs.expect_call("kexec", answer(code))


def texts(messages: RecordedMessages) -> list[str]:
    return [text for _, text in messages.entries]


def kexec_calls(programs: ProgramStub) -> list[tuple[str, ...]]:
    return [call for call in programs.calls if call[0] == "kexec"]


def load_calls(programs: ProgramStub) -> list[tuple[str, ...]]:
    return [call for call in kexec_calls(programs) if "-u" not in call]


def build_current_image(paths: Paths, dracut: FakeDracut) -> None:
    """An image whose manifest matches the configuration (as after an earlier build)."""
    manager.rebuild(paths, RecordedMessages())
    dracut.builds.clear()


def unload_calls(programs: ProgramStub) -> list[tuple[str, ...]]:
    return [call for call in programs.calls if call[-2:] == ("-p", "-u")]


# -- start ------------------------------------------------------------------------


def test_start_builds_then_loads_with_capture_cmdline(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    kexec_kernel_tracking(system, programs, 0)
    messages = RecordedMessages()

    manager.start(system, messages)

    assert dracut.builds == [KVER]
    [call] = kexec_calls(programs)
    assert call[:2] == ("kexec", "-p")
    cmdline = call[2].removeprefix("--command-line=")
    assert call[2].startswith("--command-line=")
    assert call[3] == f"--initrd={system.state_dir / f'initramfs-{KVER}kdump.img'}"
    assert call[4] == str(system.boot / f"vmlinuz-{KVER}")
    # §2.2: crashkernel and root removed, quiet removed by the x86 default, defaults appended
    params = cmdline.split()
    assert "console=ttyS0" in params
    assert not any(p.startswith(("crashkernel=", "root=")) or p == "quiet" for p in params)
    assert "irqpoll" in params and params[-1] == "rd.systemd.gpt_auto=no"
    assert texts(messages)[-4:] == [
        f"Rebuilding /var/lib/kdumpd/initramfs-{KVER}kdump.img",
        "The capture image runs kdumpd's small init (no systemd, no udev)",
        "kexec: loaded kdump kernel",
        "Starting kdump: [OK]",
    ]


def test_start_honours_kexec_args_and_secure_boot(
    system: Paths, dracut: FakeDracut, programs: ProgramStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(system.default_kdump, f'KDUMP_KERNELVER="{KVER}"\nKEXEC_ARGS="-s -d"\n')
    monkeypatch.setattr(host, "secure_boot_enforced", lambda paths: True)
    kexec_kernel_tracking(system, programs, 0)

    manager.start(system, RecordedMessages())

    assert kexec_calls(programs)[0][:4] == ("kexec", "-s", "-d", "-p")


def test_start_without_rebuild_when_image_is_current(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    build_current_image(system, dracut)
    kexec_kernel_tracking(system, programs, 0)
    messages = RecordedMessages()
    manager.start(system, messages)
    assert dracut.builds == []
    assert not any(t.startswith("Rebuilding") for t in texts(messages))


def test_start_when_already_loaded_warns_and_succeeds(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    set_loaded(system, True)
    messages = RecordedMessages()
    manager.start(system, messages)
    assert kexec_calls(programs) == []
    assert dracut.builds == []  # kdumpctl: no rebuild check when already running
    assert messages.entries == [("warning", "Kdump already running: [WARNING]")]


def test_start_without_reservation_fails(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    write(system.kexec_crash_size, "0\n")
    messages = RecordedMessages()
    with pytest.raises(manager.ArmingFailed) as caught:
        manager.start(system, messages)
    assert caught.value.exit_code == ExitCode.FAILURE
    assert caught.value.reported
    assert kexec_calls(programs) == [] and dracut.builds == []
    first, last = texts(messages)[0], texts(messages)[-1]
    assert first.startswith("No memory reserved for crash kernel")
    assert last == "Starting kdump: [FAILED]"


def test_start_on_kernel_without_kexec_support_fails(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    system.kexec_crash_loaded.unlink()
    messages = RecordedMessages()
    with pytest.raises(manager.ArmingFailed):
        manager.start(system, messages)
    assert texts(messages)[0].startswith("Kdump is not supported on this kernel")
    assert kexec_calls(programs) == []


def test_start_reports_every_config_problem_with_file_and_line(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    write(system.kdump_conf, BROKEN_CONF)
    messages = RecordedMessages()
    with pytest.raises(manager.ArmingFailed) as caught:
        manager.start(system, messages)
    assert isinstance(caught.value.reason, ConfigError)
    assert "/etc/kdump.conf:3" in texts(messages)[0]
    assert kexec_calls(programs) == []


def test_kexec_failure_fails_start(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    kexec_kernel_tracking(system, programs, 1)
    messages = RecordedMessages()
    with pytest.raises(manager.ArmingFailed) as caught:
        manager.start(system, messages)
    assert "kexec: failed to load kdump kernel" in str(caught.value)
    assert "Cannot allocate memory" in str(caught.value)
    assert texts(messages)[-1] == "Starting kdump: [FAILED]"


# -- stop -------------------------------------------------------------------------


def test_stop_unloads(system: Paths, dracut: FakeDracut, programs: ProgramStub) -> None:
    set_loaded(system, True)
    kexec_kernel_tracking(system, programs, 0)
    messages = RecordedMessages()
    manager.stop(system, messages)
    assert kexec_calls(programs) == [("kexec", "-p", "-u")]
    assert texts(messages) == ["kexec: unloaded kdump kernel", "Stopping kdump: [OK]"]
    assert system.kexec_crash_loaded.read_text() == "0\n"


def test_stop_works_with_broken_variables_file(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    write(system.default_kdump, "KEXEC_ARGS=$(reboot)\n")
    kexec_kernel_tracking(system, programs, 0)
    manager.stop(system, RecordedMessages())
    assert kexec_calls(programs) == [("kexec", "-p", "-u")]


def test_stop_failure(system: Paths, dracut: FakeDracut, programs: ProgramStub) -> None:
    programs.expect("kexec", returncode=1, stderr="kexec unload failed: Invalid argument\n")
    messages = RecordedMessages()
    with pytest.raises(manager.ArmingFailed):
        manager.stop(system, messages)
    assert texts(messages)[-1] == "Stopping kdump: [FAILED]"
    assert "kexec: failed to unload kdump kernel" in texts(messages)[0]


# -- restart / reload: a broken config never disarms ----------------------------------


@pytest.mark.parametrize("use_case", [manager.restart, manager.reload])
def test_broken_config_keeps_the_loaded_kernel(
    system: Paths, dracut: FakeDracut, programs: ProgramStub, use_case: Any
) -> None:
    set_loaded(system, True)
    write(system.kdump_conf, BROKEN_CONF)
    messages = RecordedMessages()

    with pytest.raises(manager.ArmingFailed) as caught:
        use_case(system, messages)

    assert kexec_calls(programs) == []  # no kexec -p -u, no kexec -p
    assert dracut.builds == []
    assert caught.value.exit_code != 0
    assert "/etc/kdump.conf:3: Invalid kdump config option bogus_option" in str(caught.value)
    assert system.kexec_crash_loaded.read_text() == "1\n"
    assert "Starting kdump: [FAILED]" in texts(messages)
    assert any("still armed" in t for t in texts(messages))


def test_broken_config_through_kdumpctl_exits_1_naming_file_and_line(
    system: Paths,
    dracut: FakeDracut,
    programs: ProgramStub,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_loaded(system, True)
    write(system.kdump_conf, BROKEN_CONF)
    # The tree's kexec is the test's stand-in, as for the manager calls above.
    monkeypatch.setattr(cli, "Paths", functools.partial(Paths, kernel_standin=True))

    code = cli.main(["--root", str(system.root), "restart"])

    err = capsys.readouterr().err
    assert code == 1
    assert kexec_calls(programs) == []
    assert err.count("/etc/kdump.conf:3: Invalid kdump config option bogus_option") == 1
    assert err.splitlines().index("kdump: Starting kdump: [FAILED]") > 0


def test_restart_prepares_first_then_unloads_and_loads(
    system: Paths, dracut: FakeDracut, programs: ProgramStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_loaded(system, True)
    build_current_image(system, dracut)
    write(system.kdump_conf, "path /var/crash\ncore_collector makedumpfile -c -d 31\n")
    order: list[str] = []

    def recorded_build(*args: Any, **kwargs: Any) -> BuildResult:
        order.append("build")
        return dracut.build(*args, **kwargs)

    monkeypatch.setattr(build, "build", recorded_build)

    def kexec_answer(argv: Sequence[str]) -> proc.Completed:
        order.append("unload" if "-u" in argv else "load")
        set_loaded(system, "-u" not in argv)
        return proc.Completed(tuple(argv), 0, "", "")

    programs.expect_call("kexec", kexec_answer)
    messages = RecordedMessages()

    manager.restart(system, messages)

    assert order == ["build", "unload", "load"]
    assert texts(messages)[-4:] == [
        "kexec: unloaded kdump kernel",
        "Stopping kdump: [OK]",
        "kexec: loaded kdump kernel",
        "Starting kdump: [OK]",
    ]


def test_reload_does_not_rebuild_a_stale_image(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    build_current_image(system, dracut)
    write(system.kdump_conf, "path /var/crash\ncore_collector makedumpfile -c -d 31\n")
    set_loaded(system, True)
    kexec_kernel_tracking(system, programs, 0, 0)
    messages = RecordedMessages()

    manager.reload(system, messages)

    assert dracut.builds == []
    assert [c[-2:] for c in unload_calls(programs)] == [("-p", "-u")]
    assert len(load_calls(programs)) == 1
    [stale] = [t for t in texts(messages) if "out of date" in t]
    assert "kdump.conf changed" in stale and "kdumpctl restart" in stale
    assert texts(messages)[-1] == "Starting kdump: [OK]"


def test_reload_builds_a_missing_image_and_warns_when_not_running(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    kexec_kernel_tracking(system, programs, 0, 0)
    messages = RecordedMessages()
    manager.reload(system, messages)
    assert dracut.builds == [KVER]
    assert messages.entries[0] == ("warning", "Kdump was not running: [WARNING]")


def test_failed_load_after_unload_puts_the_previous_kernel_back(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    # start (load ok), restart: unload ok, new load fails, previous load ok
    kexec_kernel_tracking(system, programs, 0, 0, 1, 0)
    manager.start(system, RecordedMessages())
    write(system.default_kdump, f'KDUMP_KERNELVER="{KVER}"\nKDUMP_COMMANDLINE_APPEND="huge"\n')
    messages = RecordedMessages()

    with pytest.raises(manager.ArmingFailed):
        manager.restart(system, messages)

    loads = load_calls(programs)
    assert len(loads) == 3
    # The first load's command line, and the first image (the rebuild replaced the file
    # at the image path, so the previous one must have been kept elsewhere).
    assert command_line(loads[2]) == command_line(loads[0])
    assert "--command-line=huge rd.systemd.gpt_auto=no" not in loads[2]
    assert Path(option_value(loads[2], "--initrd")).read_text() == "image 1"
    assert Path(option_value(loads[1], "--initrd")).read_text() == "image 2"
    assert system.kexec_crash_loaded.read_text() == "1\n"
    assert any("put back the previous capture kernel" in t for t in texts(messages))

    # The next successful load frees the kept copy; stop needs no configuration at all.
    kexec_kernel_tracking(system, programs, 0, 0, 0)
    write(system.default_kdump, f'KDUMP_KERNELVER="{KVER}"\n')
    manager.restart(system, RecordedMessages())
    assert not (system.state_dir / "loaded").exists()
    write(system.default_kdump, 'KEXEC_ARGS="-s --unbalanced\n')
    write(system.kdump_conf, BROKEN_CONF)
    manager.stop(system, RecordedMessages())
    assert kexec_calls(programs)[-1][-2:] == ("-p", "-u")


def option_value(argv: Sequence[str], name: str) -> str:
    return next(arg.split("=", 1)[1] for arg in argv if arg.startswith(name + "="))


def command_line(argv: Sequence[str]) -> str:
    return option_value(argv, "--command-line")


# -- rebuild --------------------------------------------------------------------------


def test_rebuild_builds_unconditionally_and_loads_nothing(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    build_current_image(system, dracut)
    manager.rebuild(system, RecordedMessages())
    assert dracut.builds == [KVER]
    assert kexec_calls(programs) == []


def test_rebuild_with_broken_config_fails_without_building(
    system: Paths, dracut: FakeDracut, programs: ProgramStub
) -> None:
    write(system.kdump_conf, BROKEN_CONF)
    with pytest.raises(manager.ArmingFailed, match="kdump.conf:3"):
        manager.rebuild(system, RecordedMessages())
    assert dracut.builds == []


# -- single instance ---------------------------------------------------------------------


def test_second_instance_waits_and_says_so(fake_root: Paths) -> None:
    fake_root.kdumpctl_lock.parent.mkdir(parents=True)
    holder = os.open(fake_root.kdumpctl_lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            os.close(holder)  # the other instance exits

    messages = RecordedMessages()
    with manager.instance_lock(fake_root, messages, sleep=sleep):
        entered = True
    assert entered
    assert waits == [5.0, 5.0]
    assert texts(messages) == [manager.LOCK_WAIT] * 2

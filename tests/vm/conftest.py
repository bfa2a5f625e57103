"""Fixtures for the VM scenarios: the guest image, the accelerator, and guests per test.

Everything under tests/vm is marked ``vm`` here, so the root conftest lets real programs
run. The image is built (or reused) once per session and a missing qemu or debootstrap
fails the session loudly: the test command (tools/run-tests.sh) installs them.
When a test fails, its guests' journals are fetched and the artefact paths are added
to the failure report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/vm has no __init__.py: pytest puts this directory on sys.path, so the
# harness imports as a top-level module here and in the tests.
from harness import Guest, GuestImage, choose_accel, ensure_image, fresh_artifacts

from kdumpd import proc

VM_DIR = Path(__file__).resolve().parent
GUESTS = pytest.StashKey[list[Guest]]()


# The order in which the scenarios start. pytest-xdist (--dist load) hands each of the
# two workers two consecutive items at first and more as they finish, so the longest
# scenario goes first, paired with the short smoke tests, and the other long ones
# start at once on the second worker: the VM stage then ends close to the sum of the
# scenarios' times divided by two. Files not named here follow in collection order.
START_FIRST = (
    "test_install.py",
    "test_boot.py",
    "test_capture_hardening.py",
    "test_daemon.py",
    "test_capture_local.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if VM_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.vm)

    def rank(item: pytest.Item) -> int:
        name = Path(item.path).name
        return START_FIRST.index(name) if name in START_FIRST else len(START_FIRST)

    items.sort(key=rank)  # stable: the others keep their order


def _progress(config: pytest.Config) -> Callable[[str], None]:
    """Print a line past pytest's output capture: image builds take minutes."""
    capman = config.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        if capman is None:
            print(line, flush=True)
            return
        with capman.global_and_fixture_disabled():
            print(line, flush=True)

    return say


@pytest.fixture(scope="session")
def guest_image(pytestconfig: pytest.Config) -> GuestImage:
    """The cached guest image, built first if the recipe changed."""
    return ensure_image(on_line=_progress(pytestconfig))


@pytest.fixture(scope="session")
def guest_accel(guest_image: GuestImage, pytestconfig: pytest.Config) -> str:
    """kvm or tcg for this host (KDUMPD_VM_ACCEL overrides)."""
    return choose_accel(guest_image, on_line=_progress(pytestconfig))


@pytest.fixture
def vm_artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's artefact directory under .cache/vm/artifacts/, emptied first."""
    return fresh_artifacts(request.node.nodeid.split("::", 1)[-1])


@pytest.fixture
def make_guest(
    request: pytest.FixtureRequest, guest_image: GuestImage, guest_accel: str, vm_artifacts: Path
) -> Iterator[Callable[..., Guest]]:
    """A factory of guests for this test, each stopped at teardown.

    ``make_guest(memory=..., smp=..., crashkernel=..., append=[...])`` returns a Guest
    that is not started yet (add disks first if needed). The second guest of a test
    gets the sub-directory ``guest2`` of the artefact dir, and so on.
    """
    guests: list[Guest] = []
    request.node.stash[GUESTS] = guests

    def make(**options: Any) -> Guest:
        where = vm_artifacts if not guests else vm_artifacts / f"guest{len(guests) + 1}"
        guest = Guest(guest_image, where, accel=guest_accel, **options)
        guests.append(guest)
        return guest

    yield make
    for guest in guests:
        guest.stop()


@pytest.fixture
def guest(make_guest: Callable[..., Guest]) -> Guest:
    """A default guest (2048M, crashkernel=256M), booted and reachable by ssh."""
    booted = make_guest()
    booted.start()
    booted.wait_for_ssh()
    return booted


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    guests = item.stash.get(GUESTS, [])
    if report.failed and guests and report.when in ("setup", "call"):
        notes = []
        for guest in guests:
            guest.collect_journal()
            notes.append(guest.artefact_note())
        report.sections.append(("VM artefacts", "\n\n".join(notes)))


@pytest.fixture(scope="session")
def debug_vmlinux(guest_image: GuestImage, pytestconfig: pytest.Config) -> Path:
    """The guest kernel's debug vmlinux (from linux-image-<release>-dbg), cached."""
    from debug_kernel import debug_vmlinux as fetch

    _progress(pytestconfig)(f"debug kernel for {guest_image.kernel_release} (cached after once)")
    return fetch(guest_image.kernel_release)


@pytest.fixture(scope="session")
def kdumpd_deb(pytestconfig: pytest.Config) -> str:
    """The kdumpd .deb built from this tree (tools/build-deb.sh), once per session."""
    prebuilt = os.environ.get("KDUMPD_DEB")
    if prebuilt:
        # tools/run-tests.sh builds it once for all pytest-xdist workers.
        return prebuilt
    say = _progress(pytestconfig)
    say("building the kdumpd .deb")
    repo = VM_DIR.parent.parent
    built = proc.run(["bash", str(repo / "tools" / "build-deb.sh")], timeout=600)
    return built.stdout.strip().splitlines()[-1]

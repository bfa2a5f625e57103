"""The package scripts and kernel hooks, run by a real shell against trees.

* kdumpd's GRUB drop-in, sourced the way grub-mkconfig sources /etc/default/grub and
  /etc/default/grub.d/*.cfg: it adds crashkernel= only when no file before it did.
* postrm purge (DPKG_ROOT points it at a tree) removes exactly what kdumpd added.
* postinst, the kernel hooks and the kernel-install plugin never fail, whatever
  kdumpctl does, and call it with the arguments the hidden commands take.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kdumpd import bootloader
from kdumpd.bootloader import Change
from kdumpd.paths import Paths
from tests.conftest import write

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "debian"

# What grub-mkconfig does with the defaults files (grub2-common, util/grub-mkconfig.in).
GRUB_MKCONFIG_SOURCING = """
if test -f "$ROOT/etc/default/grub"; then . "$ROOT/etc/default/grub"; fi
for x in "$ROOT"/etc/default/grub.d/*.cfg; do
  if [ -e "${x}" ]; then . "${x}"; fi
done
printf '%s\\n' "$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT"
"""


def grub_cmdline(root: Path) -> str:
    done = subprocess.run(
        ["sh", "-c", GRUB_MKCONFIG_SOURCING],
        env={"ROOT": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("default_line", "expected"),
    [
        ('GRUB_CMDLINE_LINUX_DEFAULT="quiet"', "console=ttyS0 quiet crashkernel=2G-64G:256M"),
        (
            'GRUB_CMDLINE_LINUX_DEFAULT="quiet crashkernel=384M"',
            "console=ttyS0 quiet crashkernel=384M",
        ),
    ],
)
def test_drop_in_as_grub_mkconfig_reads_it(
    fake_root: Paths, default_line: str, expected: str
) -> None:
    write(
        fake_root.under_root("/etc/default/grub"),
        f'GRUB_TIMEOUT=5\n{default_line}\nGRUB_CMDLINE_LINUX="console=ttyS0"\n',
    )
    write(
        bootloader.drop_in_path(fake_root),
        bootloader.render_drop_in({"crashkernel": "2G-64G:256M"}),
    )
    assert grub_cmdline(fake_root.root) == expected


def test_the_parser_agrees_with_the_shell(fake_root: Paths) -> None:
    # Quoting, expansion and drop-ins that append: what kdumpd reads is what GRUB gets.
    write(
        fake_root.under_root("/etc/default/grub"),
        "GRUB_CMDLINE_LINUX_DEFAULT='quiet splash'\nGRUB_CMDLINE_LINUX=\"console=ttyS0\"\n",
    )
    write(
        fake_root.under_root("/etc/default/grub.d/10-local.cfg"),
        'GRUB_CMDLINE_LINUX_DEFAULT="${GRUB_CMDLINE_LINUX_DEFAULT} crashkernel=1G"  # mine\n',
    )
    write(fake_root.under_root("/usr/sbin/update-grub"), "").chmod(0o755)
    shell = grub_cmdline(fake_root.root).split()
    [location] = bootloader.locations(fake_root)
    assert location.value("crashkernel") == bootloader.param_value(shell, "crashkernel") == "1G"


def run_script(
    script: Path, *args: str, root: Path, bin_dir: Path
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "DPKG_ROOT": str(root)}
    return subprocess.run(
        ["sh", str(script), *args], env=env, capture_output=True, text=True, check=False
    )


def fake_kdumpctl(bin_dir: Path, *, exit_code: int) -> Path:
    """A kdumpctl that logs its arguments and exits with exit_code."""
    log = bin_dir / "kdumpctl.log"
    write(
        bin_dir / "kdumpctl",
        f'#!/bin/sh\necho "$*" >> "{log}"\necho "kdump: it went wrong" >&2\nexit {exit_code}\n',
    ).chmod(0o755)
    return log


def test_purge_removes_what_kdumpd_added_and_nothing_else(fake_root: Paths, tmp_path: Path) -> None:
    entry = write(
        fake_root.boot / "loader/entries/a.conf",
        "title A\nversion 6.1\nlinux /vmlinuz-6.1\noptions root=UUID=1 ro quiet\n",
    )
    other = write(
        fake_root.boot / "loader/entries/b.conf",
        "title B\nversion 6.2\nlinux /vmlinuz-6.2\noptions root=UUID=1 ro\n",
    )
    cmdline = write(fake_root.under_root("/etc/kernel/cmdline"), "root=UUID=1 ro\n")
    cmdline.chmod(0o600)
    entry_before, other_before = entry.read_text(), other.read_text()
    changes = [
        Change(location, "crashkernel", None, "256M")
        for location in bootloader.locations(fake_root)
    ]
    bootloader.apply(fake_root, changes)
    # The administrator then chose another size for entry b: that one is theirs now.
    other.write_text(other.read_text().replace("crashkernel=256M", "crashkernel=512M"))
    write(bootloader.drop_in_path(fake_root), bootloader.render_drop_in({"crashkernel": "256M"}))

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    done = run_script(DEBIAN / "kdumpd.postrm", "purge", root=fake_root.root, bin_dir=bin_dir)
    assert done.returncode == 0, done.stderr
    assert entry.read_text() == entry_before
    assert other.read_text() == other_before.replace("ro\n", "ro crashkernel=512M\n")
    assert cmdline.read_text() == "root=UUID=1 ro\n"
    assert oct(cmdline.stat().st_mode & 0o777) == "0o600"
    assert not bootloader.drop_in_path(fake_root).exists()
    assert not fake_root.state_dir.exists()


@pytest.mark.parametrize(
    ("script", "args", "called"),
    [
        ("hooks/kernel-postinst", ("6.1.0-30-amd64", "/boot/vmlinuz-6.1.0-30-amd64"),
         "_kernel-installed 6.1.0-30-amd64"),
        ("hooks/kernel-postrm", ("6.1.0-30-amd64",), "_kernel-removed 6.1.0-30-amd64"),
        ("hooks/92-kdumpd.install", ("add", "6.1.0-30-amd64", "/boot/x", "/boot/vmlinuz"),
         "_kernel-installed 6.1.0-30-amd64"),
        ("hooks/92-kdumpd.install", ("remove", "6.1.0-30-amd64", "/boot/x"),
         "_kernel-removed 6.1.0-30-amd64"),
        ("kdumpd.postinst", ("triggered", "/usr/bin/makedumpfile"), "_tools-upgraded"),
        ("kdumpd.postinst", ("configure", ""),
         "_reset-crashkernel-after-update\n_tools-upgraded"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("exit_code", [0, 1])
def test_scripts_call_kdumpctl_and_never_fail(
    tmp_path: Path, script: str, args: tuple[str, ...], called: str, exit_code: int
) -> None:
    bin_dir = tmp_path / "bin"
    log = fake_kdumpctl(bin_dir, exit_code=exit_code)
    done = run_script(DEBIAN / script, *args, root=tmp_path / "root", bin_dir=bin_dir)
    assert done.returncode == 0, done.stderr
    assert log.read_text().strip() == called
    assert ("WARNING" in done.stderr) == (exit_code != 0)


def test_hooks_do_nothing_once_kdumpd_is_removed(tmp_path: Path) -> None:
    # Removed but not purged: the hooks in /etc stay, kdumpctl is gone.
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty)}
    for script, args in (
        ("hooks/kernel-postinst", ["6.1.0-30-amd64"]),
        ("hooks/kernel-postrm", ["6.1.0-30-amd64"]),
        ("hooks/92-kdumpd.install", ["add", "6.1.0-30-amd64"]),
    ):
        done = subprocess.run(
            ["/bin/sh", str(DEBIAN / script), *args], env=env, capture_output=True, check=False
        )
        assert (done.returncode, done.stderr) == (0, b"")


def test_hooks_are_executable() -> None:
    for name in ("kernel-postinst", "kernel-postrm", "92-kdumpd.install"):
        assert os.access(DEBIAN / "hooks" / name, os.X_OK), name

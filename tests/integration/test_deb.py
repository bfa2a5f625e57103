"""The Debian package built from this tree (tools/build-deb.sh), inspected with dpkg-deb."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("dpkg-buildpackage"),
]


# What dpkg-buildpackage and pybuild write next to the sources they build.
BUILD_LEFTOVERS = (
    "build",
    ".pybuild",
    "kdumpd.egg-info",
    "debian/kdumpd",
    "debian/.debhelper",
    "debian/files",
    "debian/debhelper-build-stamp",
    "debian/kdumpd.substvars",
    "debian/kdumpd.postinst.debhelper",
)


@pytest.fixture(scope="module")
def deb() -> Path:
    assert not [p for p in BUILD_LEFTOVERS if (REPO / p).exists()], "clean the tree first"
    built = subprocess.run(
        ["bash", str(REPO / "tools/build-deb.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr
    path = Path(built.stdout.strip().splitlines()[-1])
    # The build ran out of tree (.cache/deb/src): nothing was written into the sources.
    assert [p for p in BUILD_LEFTOVERS if (REPO / p).exists()] == []
    assert path.parent == REPO / ".cache" / "deb"
    assert path.is_file() and path.suffix == ".deb"
    return path


def _dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def _files(deb: Path) -> dict[str, str]:
    """Path -> mode string, for every entry of the data archive."""
    entries: dict[str, str] = {}
    for line in _dpkg_deb("-c", str(deb)).splitlines():
        fields = line.split()
        name = fields[5].removeprefix(".")
        entries[name.rstrip("/") or "/"] = fields[0]
    return entries


def _field(deb: Path, name: str) -> str:
    return _dpkg_deb("-f", str(deb), name).strip()


def test_package_identity(deb: Path) -> None:
    assert _field(deb, "Package") == "kdumpd"
    assert _field(deb, "Architecture") == "all"
    assert deb.name == f"kdumpd_{_field(deb, 'Version')}_all.deb"


def test_depends_on_the_tools_it_wraps(deb: Path) -> None:
    depends = {d.split()[0] for d in _field(deb, "Depends").split(", ")}
    assert {
        "python3-jinja2",
        "python3-dasbus",
        "python3-gi",
        "python3-systemd",
        "python3-pyudev",
        "kexec-tools",
        "makedumpfile",
        "dracut-core",
        "cpio",
        "zstd",
    } <= depends
    assert any(d.startswith("python3") and ":any" in d for d in depends) or "python3" in depends
    assert "kdump-tools" in _field(deb, "Conflicts")


def test_files_at_their_places(deb: Path) -> None:
    files = _files(deb)
    for path in (
        "/usr/bin/kdumpctl",
        "/usr/bin/kdumpd",
        "/lib/systemd/system/kdump.service",
        "/usr/lib/systemd/catalog/kdumpd.catalog",
        "/usr/share/dbus-1/system.d/org.kdumpd1.conf",
        "/usr/share/dbus-1/interfaces/org.kdumpd1.Manager.xml",
        "/etc/kdump.conf",
        "/etc/default/kdump",
        "/usr/lib/python3/dist-packages/kdumpd/__init__.py",
        "/usr/lib/python3/dist-packages/kdumpd/manager.py",
        "/usr/lib/python3/dist-packages/kdumpd/kexec.py",
    ):
        assert path in files, path
    assert files["/usr/bin/kdumpctl"].startswith("-rwxr-xr-x")
    # kdumpd.service resolves whether or not the unit is enabled (clients.md R1)
    assert files["/lib/systemd/system/kdumpd.service"].startswith("l")
    for directory in (
        "/var/crash",
        "/var/lib/kdumpd",
        "/etc/kdump/pre.d",
        "/etc/kdump/post.d",
        "/etc/kdump/emergency.d",
    ):
        assert files.get(directory, "").startswith("d"), directory
    # tests and packaging sources stay out of the package
    assert not any("/tests/" in path or path.startswith("/debian") for path in files)


def test_dracut_module_is_installed(deb: Path) -> None:
    module_dir = "/usr/lib/dracut/modules.d/99kdumpd"
    sources = sorted(p.name for p in (REPO / "dracut-module/99kdumpd").glob("*") if p.is_file())
    files = _files(deb)
    assert "module-setup.sh" in sources
    for name in sources:
        assert f"{module_dir}/{name}" in files, name
    # dracut sources module-setup.sh; it needs no exec bit
    # initramfs.default_template_dir: the installed copy of dracut-module/templates
    templates = sorted(p.name for p in (REPO / "dracut-module/templates").glob("*.j2"))
    assert templates
    for name in templates:
        assert f"/usr/share/kdumpd/dracut-module/templates/{name}" in files, name


def test_configuration_files_are_conffiles(deb: Path) -> None:
    conffiles = _dpkg_deb("--info", str(deb), "conffiles").split()
    assert "/etc/kdump.conf" in conffiles
    assert "/etc/default/kdump" in conffiles


def test_unit_is_enabled_and_upgrades_do_not_disarm(deb: Path) -> None:
    postinst = _dpkg_deb("--info", str(deb), "postinst")
    prerm = _dpkg_deb("--info", str(deb), "prerm")
    assert "deb-systemd-helper enable 'kdump.service'" in postinst
    assert "kdumpctl restart" in postinst
    # --no-stop-on-upgrade: prerm stops the unit on removal only
    assert "deb-systemd-invoke stop 'kdump.service'" in prerm
    assert '"$1" = remove' in prerm or "remove" in prerm
    assert "upgrade" not in prerm.split("deb-systemd-invoke stop")[0].splitlines()[-2]

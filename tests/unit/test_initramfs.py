"""The capture initramfs: rendering, dracut argv, manifest and rebuild decision, build."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import jinja2
import pytest

from kdumpd import proc
from kdumpd.config.kdumpconf import KdumpConfig, parse_kdump_conf
from kdumpd.contract.plan import CapturePlan, FsTarget, MountSpec
from kdumpd.errors import BuildError, ConfigError
from kdumpd.image import agent, build, dracut, manifest, render
from kdumpd.image.agent import PythonFiles
from kdumpd.image.manifest import Manifest
from kdumpd.image.needs import image_needs
from kdumpd.image.render import ModuleContext
from kdumpd.paths import Paths
from tests.conftest import ProgramStub, write

KVER = "6.1.0-28-amd64"
TEMPLATES = Path(__file__).resolve().parents[2] / "dracut-module" / "templates"


def conf(text: str) -> KdumpConfig:
    return parse_kdump_conf(text).config


def make_plan(**changes: object) -> CapturePlan:
    base: dict[str, object] = {
        "kernel_release": KVER,
        "target": FsTarget(
            path="/var/crash",
            mount=MountSpec("/dev/disk/by-uuid/abc", "/sysroot", "ext4", "rw,relatime"),
        ),
        "core_collector": ("makedumpfile", "-l", "-d", "31"),
    }
    base.update(changes)
    return CapturePlan(**base)  # type: ignore[arg-type]


def system(paths: Paths) -> Path:
    """Programs, kernel and kdump.conf an image build reads."""
    write(paths.under_root("/usr/bin/makedumpfile"), "makedumpfile v1")
    write(paths.under_root("/sbin/vmcore-dmesg"), "vmcore-dmesg v1")
    write(paths.under_root("/usr/bin/python3"), "python v1")
    write(paths.kdump_conf, "path /var/crash\n")
    return write(paths.under_root(f"/boot/vmlinuz-{KVER}"), "kernel v1")


# -- quoting and rendering -----------------------------------------------------------


def test_shell_quote_words_and_lists() -> None:
    assert render.shell_quote("plain") == "plain"
    assert render.shell_quote("a b") == "'a b'"
    assert render.shell_quote(["x", "it's"]) == "x 'it'\"'\"'s'"
    with pytest.raises(ValueError):
        render.shell_quote(None)


def test_template_printing_unquoted_value_fails(tmp_path: Path) -> None:
    write(tmp_path / "bad.j2", "echo {{ value }}\n")
    env = render.template_environment(tmp_path)
    with pytest.raises(ValueError, match="without the shell_quote filter"):
        env.get_template("bad.j2").render(value="$(reboot)")
    with pytest.raises(jinja2.UndefinedError):
        write(tmp_path / "undef.j2", "{{ nothing | shell_quote }}\n")
        env.get_template("undef.j2").render()


def test_unit_quote_follows_systemd_syntax() -> None:
    assert render.unit_quote("reboot") == "reboot"
    assert render.unit_quote("/usr/lib/kdumpd/kdumpd-agent.sh") == "/usr/lib/kdumpd/kdumpd-agent.sh"
    assert render.unit_quote("a b") == '"a b"'
    assert render.unit_quote('say "hi"') == '"say \\"hi\\""'
    assert render.unit_quote("back\\slash") == '"back\\\\slash"'
    # specifiers and variables are systemd's, not the shell's: %% and $$ keep them literal
    assert render.unit_quote("100% $(id) ${HOME}") == '"100%% $$(id) $${HOME}"'
    assert render.unit_quote("line1\nline2\ttab\x01") == '"line1\\nline2\\ttab\\x01"'
    assert render.unit_quote(["a", "b c"]) == 'a "b c"'
    with pytest.raises(ValueError):
        render.unit_quote(None)
    assert render.unit_path("/usr/lib/kdumpd") == "/usr/lib/kdumpd"
    for bad in ("relative/dir", "/with space", "/per%cent", "/new\nline"):
        with pytest.raises(ValueError):
            render.unit_path(bad)


def test_each_template_is_quoted_in_its_own_dialect(tmp_path: Path) -> None:
    write(tmp_path / "x.service.j2", "ExecStart={{ value | shell_quote }}\n")
    write(tmp_path / "x.sh.j2", "echo {{ value | unit_quote }}\n")
    write(tmp_path / "y.service.j2", "ExecStart=/bin/echo {{ value | unit_quote }}\n")
    unit = render.template_environment(tmp_path, ".service")
    shell = render.template_environment(tmp_path, ".sh")
    with pytest.raises(jinja2.TemplateAssertionError, match="shell_quote"):
        unit.get_template("x.service.j2")
    with pytest.raises(jinja2.TemplateAssertionError, match="unit_quote"):
        shell.get_template("x.sh.j2")
    text = unit.get_template("y.service.j2").render(value="a b\n[Service]\nExecStart=/bin/evil")
    assert text == 'ExecStart=/bin/echo "a b\\n[Service]\\nExecStart=/bin/evil"\n'
    assert render.dialect_of("kdumpd-no-switch-root.conf.j2") == ".conf"
    with pytest.raises(ValueError, match="no quoting dialect"):
        render.dialect_of("notes.txt.j2")


HOSTILE = (
    "a b",
    "it's",
    'say "hi"',
    "$(touch /tmp/kdumpd-pwned)",
    "`touch /tmp/kdumpd-pwned`",
    "line1\nline2",
    "semi; reboot",
    "star * glob",
    "back\\slash",
    "${HOME}",
)


def hostile_context(build_dir: str) -> ModuleContext:
    return ModuleContext(
        kernel_release="6.1.0-$(id)",
        build_dir=build_dir,
        agent_files=("kdumpd/__init__.py", *HOSTILE),
        python_files=HOSTILE,
        python_extensions=("/x/ext `id`.so",),
        collector="/usr/bin/make dump$(id)",
        vmcore_dmesg="/sbin/vmcore-dmesg;id",
        user_programs=HOSTILE,
        failure_action="shell",
    )


def test_render_writes_every_template(tmp_path: Path) -> None:
    context = hostile_context(str(tmp_path / "build dir"))
    written = render.render_module(context, template_dir=TEMPLATES, out_dir=tmp_path)
    names = {p.name for p in written}
    assert {"kdumpd-setup.sh", "kdumpd-capture.service", "kdumpd-emergency.service"} <= names
    service = (tmp_path / "kdumpd-capture.service").read_text()
    assert "ConditionPathExists=/proc/vmcore" in service
    assert "ExecStart=/usr/lib/kdumpd/kdumpd-agent.sh\n" in service
    assert "OnFailure=emergency.target" in service
    assert "StandardOutput=tty\nStandardError=tty\nTTYPath=/dev/console\n" in service
    assert "journal+console" not in service  # the image has no journal
    emergency = (tmp_path / "kdumpd-emergency.service").read_text()
    assert "ExecStart=-/usr/lib/kdumpd/kdumpd-agent.sh --error-handler" in emergency
    assert "ExecStart=systemctl --force reboot" in emergency  # shell falls back to reboot
    # a hostile kernel release stays inside one quoted comment word of the unit files
    assert service.splitlines()[0] == (
        '# kdumpd capture agent, rendered for kernel "6.1.0-$$(id)".'
    )
    starter = (tmp_path / "kdumpd-agent.sh").read_text()
    assert 'exec "$python" -E -s -S -B -m kdumpd.capture "$@"' in starter
    assert "python=/usr/bin/python3\n" in starter and "mount " not in starter


def root_plan() -> CapturePlan:
    return make_plan()


def test_agent_runs_from_the_root_only_when_the_target_is_the_root_device(
    fake_root: Paths,
) -> None:
    device = fake_root.under_root("/dev/disk/by-uuid/abc")
    write(device, "")
    root_dev, other_dev = 0x0801, 0x0811

    def fake_stat(dev_of_device: int) -> Callable[[Path], os.stat_result]:
        def stat_file(path: Path) -> os.stat_result:
            if path == device:  # a block device node on devtmpfs (st_dev 5)
                fields = (stat.S_IFBLK | 0o660, 0, 5, 1, 0, 0, 0, 0, 0, 0)
                return os.stat_result(fields, {"st_rdev": dev_of_device})
            return os.stat_result((stat.S_IFDIR | 0o755, 0, root_dev, 1, 0, 0, 0, 0, 0, 0))

        return stat_file

    assert agent.agent_root_mount(fake_root, root_plan()) is None  # not a block device
    mount = agent.agent_root_mount(fake_root, root_plan(), stat_file=fake_stat(root_dev))
    assert mount is not None and mount.mountpoint == "/sysroot"
    other = agent.agent_root_mount(fake_root, root_plan(), stat_file=fake_stat(other_dev))
    assert other is None
    ssh_like = make_plan(target=FsTarget(path="/var/crash", mount=None))
    assert agent.agent_root_mount(fake_root, ssh_like, stat_file=fake_stat(root_dev)) is None


def test_unit_values_must_be_plain_paths(tmp_path: Path) -> None:
    context = ModuleContext(
        kernel_release=KVER,
        build_dir="/b",
        agent_files=(),
        python_files=(),
        python_extensions=(),
        collector="/c",
        vmcore_dmesg="/v",
        user_programs=(),
        failure_action="reboot",
        python="/usr/bin/python3 --evil",
    )
    with pytest.raises(ValueError, match="unit file"):
        render.render_module(context, template_dir=TEMPLATES, out_dir=tmp_path)


STUBS = r"""
record() { printf '%s\0' "$@" >> "$RECORD"; printf '\1' >> "$RECORD"; }
inst_simple() { record inst_simple "$@"; }
inst_binary() { record inst_binary "$@"; }
inst_library() { record inst_library "$@"; }
inst_multiple() { record inst_multiple "$@"; }
inst() { record inst "$@"; }
ln_r() { record ln_r "$@"; }
chroot() { record chroot "$@"; }
derror() { record derror "$@"; }
"""


@pytest.mark.integration
def test_hostile_values_stay_data_in_the_rendered_shell(tmp_path: Path) -> None:
    """Render with hostile values, check bash syntax, run install() with stubbed dracut calls."""
    bash = shutil.which("bash")
    assert bash is not None
    build_dir = str(tmp_path / "build $(touch pwned) `x`")
    out = tmp_path / "out"
    out.mkdir()
    context = hostile_context(build_dir)
    render.render_module(context, template_dir=TEMPLATES, out_dir=out)
    setup = out / "kdumpd-setup.sh"
    subprocess.run([bash, "-n", str(setup)], check=True)

    initdir = tmp_path / "initdir"
    initdir.mkdir()
    record = tmp_path / "record"
    script = STUBS + f'. "{setup}"\nkdumpd_depends > "$DEPENDS"\nkdumpd_install\n'
    done = subprocess.run(
        [bash, "-c", script],
        env={
            "PATH": os.environ["PATH"],
            "RECORD": str(record),
            "DEPENDS": str(tmp_path / "depends"),
            "initdir": str(initdir),
            "systemdsystemunitdir": "/usr/lib/systemd/system",
        },
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    calls = [
        tuple(part.decode() for part in call.split(b"\0")[:-1])
        for call in record.read_bytes().split(b"\1")
        if call
    ]
    # every hostile value came back byte for byte as one argument
    for value in HOSTILE:
        assert ("inst_simple", f"{build_dir}/agent/{value}", f"/usr/lib/kdumpd/{value}") in calls
        assert ("inst_simple", value) in calls
        assert ("inst", value) in calls
    assert ("inst_binary", "/usr/bin/make dump$(id)") in calls
    assert ("inst_binary", "/sbin/vmcore-dmesg;id") in calls
    assert ("inst_library", "/x/ext `id`.so") in calls
    assert ("inst_simple", f"{build_dir}/plan.json", "/etc/kdumpd/plan.json") in calls
    check = next(c for c in calls if c[0] == "chroot")
    assert check[1:3] == (str(initdir), "/usr/bin/python3")
    assert check[-2:] == ("/usr/lib/kdumpd", "kdumpd.capture")
    assert (tmp_path / "depends").read_text().split() == [
        "base",
        "systemd",
        "systemd-initrd",
        "udev-rules",
    ]
    # nothing was executed from the values
    assert not list(tmp_path.rglob("pwned")) and not Path("/tmp/kdumpd-pwned").exists()


# -- agent imports ------------------------------------------------------------------------


def test_agent_import_names_sees_lazy_imports_and_skips_our_package() -> None:
    sources = {
        "kdumpd/capture/__init__.py": (
            "import os, json\nfrom kdumpd import plan\nfrom kdumpd.errors import X\n"
            "def f():\n    import shutil\n    from email import message\n"
            "from . import sibling\n"
        )
    }
    names = agent.agent_import_names(sources)
    assert {"os", "json", "shutil", "email", "email.message", "runpy"} <= set(names)
    assert not [n for n in names if n.startswith("kdumpd")]
    assert "sibling" not in names


def test_parse_python_files_splits_sources_and_extensions() -> None:
    text = (
        "/usr/lib/python3.11/os.py\n/usr/lib/python3.11/lib-dynload/_json.cpython-311.so\nfrozen\n"
    )
    files = agent.parse_python_files(text)
    assert files.sources == ("/usr/lib/python3.11/os.py",)
    assert files.extensions == ("/usr/lib/python3.11/lib-dynload/_json.cpython-311.so",)


@pytest.mark.integration
def test_lister_reports_lazy_stdlib_imports_of_the_real_python() -> None:
    files = agent.list_python_files(["json", "shutil"])
    names = {Path(p).name for p in files.sources}
    assert {"shutil.py", "os.py"} <= names
    assert any(p.endswith("json/__init__.py") for p in files.sources)
    assert "ast.py" not in names  # the lister itself imports nothing


# -- dracut argv ---------------------------------------------------------------------------


def argv_for(plan: CapturePlan, config: KdumpConfig, **kw: object) -> list[str]:
    return dracut.dracut_argv(
        plan,
        config,
        needs=image_needs(Paths(), plan),
        image=Path("/state/img.new"),
        kernel_release=KVER,
        build_dir=Path("/state/build"),
        **kw,  # type: ignore[arg-type]
    )


def option(argv: Sequence[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


def test_dracut_argv_defaults() -> None:
    argv = argv_for(make_plan(), KdumpConfig())
    assert argv[0] == "dracut"
    assert argv[-2:] == ["/state/img.new", KVER]
    assert option(argv, "--hostonly-mode") == ["strict"]
    assert {"--hostonly", "--no-hostonly-cmdline", "--no-hostonly-default-device", "--zstd"} <= set(
        argv
    )
    assert option(argv, "--omit-drivers") == ["nouveau amdgpu"]
    assert option(argv, "--omit") == ["ifcfg"]  # Debian's dracut-network adds it everywhere
    assert option(argv, "--add-drivers") == ["ext4"]
    # --drivers: no generic crypto/hid/usb set; the disk's drivers come from installkernel
    assert option(argv, "--drivers") == ["ext4"]
    assert option(argv, "--add-device") == ["/dev/disk/by-uuid/abc"]
    modules = option(argv, "--modules")[0].split()
    assert modules[-1] == "kdumpd" and "systemd-initrd" in modules
    assert "plymouth" not in modules and "i18n" not in modules and "resume" not in modules


def test_dracut_argv_extra_modules_devices_and_user_args() -> None:
    plan = make_plan(
        rootfs=MountSpec("/dev/disk/by-uuid/root", "/sysroot", "xfs", "rw"),
        failure_action="dump_to_rootfs",
    )
    config = conf('extra_modules gfs2 dm_mod\ndracut_args --lz4 --install "/usr/bin/x y"\n')
    argv = argv_for(plan, config, extra_dracut_modules=("dm", "lvm"))
    assert option(argv, "--add-drivers") == ["ext4 xfs gfs2 dm_mod"]
    assert option(argv, "--add-device") == ["/dev/disk/by-uuid/abc", "/dev/disk/by-uuid/root"]
    assert "--zstd" not in argv  # the user chose a compression
    assert argv[-5:-2] == ["--lz4", "--install", "/usr/bin/x y"]
    modules = option(argv, "--modules")[0].split()
    assert modules[-3:] == ["dm", "lvm", "kdumpd"]


def test_dracut_argv_keeps_input_drivers_for_the_shell() -> None:
    argv = argv_for(make_plan(failure_action="shell"), KdumpConfig())
    assert option(argv, "--add-drivers") == ["ext4"]
    assert "--drivers" not in argv


def test_dracut_argv_without_zstd_and_bad_quotes() -> None:
    assert "--zstd" not in argv_for(make_plan(), KdumpConfig(), zstd=False)
    # An unbalanced quote never gets this far: parsing the file refuses it with its line.
    with pytest.raises(ConfigError, match=r"/etc/kdump.conf:2: .*dracut_args cannot be split"):
        conf('path /x\ndracut_args --add "unbalanced\n')


# -- manifest and rebuild decision ------------------------------------------------------


def inputs_of(paths: Paths, config: KdumpConfig, plan: CapturePlan, kernel: Path) -> Manifest:
    return manifest.compute_manifest(
        paths, config, plan, kernel_image=kernel, template_dir=TEMPLATES, dracut_version_text="059"
    )


def record_image(paths: Paths, m: Manifest) -> None:
    write(manifest.image_path(paths, KVER), "image")
    write(manifest.manifest_path(paths, KVER), m.to_json())


def test_manifest_moves_with_content_not_mtime(fake_root: Paths) -> None:
    kernel = system(fake_root)
    config, plan = KdumpConfig(), make_plan()
    first = inputs_of(fake_root, config, plan, kernel)
    record_image(fake_root, first)
    assert manifest.rebuild_reason(fake_root, config, first) is None

    for path in (fake_root.kdump_conf, kernel, fake_root.under_root("/usr/bin/makedumpfile")):
        os.utime(path, (1, 4_000_000_000))
    assert inputs_of(fake_root, config, plan, kernel) == first

    write(fake_root.kdump_conf, "path /var/crash\nfinal_action poweroff\n")
    second = inputs_of(fake_root, config, plan, kernel)
    assert manifest.changed_inputs(first, second) == ["kdump.conf changed"]
    assert (
        manifest.rebuild_reason(fake_root, config, second)
        == "Detected change(s): kdump.conf changed"
    )

    write(kernel, "kernel v2")
    write(fake_root.under_root("/usr/bin/makedumpfile"), "makedumpfile v2")
    third = inputs_of(fake_root, config, plan, kernel)
    assert manifest.changed_inputs(second, third) == [
        "core_collector /usr/bin/makedumpfile changed",
        f"kernel vmlinuz-{KVER} changed",
    ]


def test_manifest_covers_plan_hooks_sysconfig_and_modules(fake_root: Paths) -> None:
    kernel = system(fake_root)
    hook = write(fake_root.under_root("/etc/kdump/pre.d/10-x"), "#!/bin/sh\n")
    ko_dir = fake_root.modules / KVER
    write(ko_dir / "modules.dep", "kernel/fs/gfs2/gfs2.ko.xz: kernel/fs/dlm/dlm.ko.xz\n")
    write(ko_dir / "kernel/fs/gfs2/gfs2.ko.xz", "gfs2")
    write(ko_dir / "kernel/fs/dlm/dlm.ko.xz", "dlm v1")
    config = conf("extra_modules gfs2 nosuchmod\n")
    plan = make_plan(pre_d=("/etc/kdump/pre.d/10-x",))
    first = inputs_of(fake_root, config, plan, kernel)
    assert first.inputs["module nosuchmod"] == "missing"
    assert "template kdumpd-setup.sh.j2" in first.inputs
    assert "agent kdumpd/contract/plan.py" in first.inputs

    write(ko_dir / "kernel/fs/dlm/dlm.ko.xz", "dlm v2")
    write(hook, "#!/bin/sh\necho changed\n")
    write(fake_root.default_kdump, "KDUMP_COMMANDLINE_APPEND=x\n")
    second = inputs_of(fake_root, config, make_plan(pre_d=plan.pre_d, final_action="halt"), kernel)
    assert manifest.changed_inputs(first, second) == [
        "/etc/default/kdump added",
        "capture plan changed",
        "module gfs2: dlm.ko.xz changed",
        "program /etc/kdump/pre.d/10-x changed",
    ]


def test_rebuild_reason_missing_image_and_force_flags(fake_root: Paths) -> None:
    kernel = system(fake_root)
    plan = make_plan()
    m = inputs_of(fake_root, KdumpConfig(), plan, kernel)
    image = manifest.image_path(fake_root, KVER)
    assert manifest.rebuild_reason(fake_root, KdumpConfig(), m) == "No kdump initial ramdisk found."
    # force_no_rebuild cannot help without an image
    no = conf("force_no_rebuild 1\n")
    assert manifest.rebuild_reason(fake_root, no, m) == "No kdump initial ramdisk found."
    record_image(fake_root, m)
    assert (
        manifest.rebuild_reason(fake_root, conf("force_rebuild 1\n"), m) == f"Force rebuild {image}"
    )
    changed = Manifest(KVER, {**m.inputs, "kdump.conf": "0" * 64})
    assert manifest.rebuild_reason(fake_root, no, changed) is None
    manifest.manifest_path(fake_root, KVER).unlink()
    assert "No record of the inputs" in str(manifest.rebuild_reason(fake_root, KdumpConfig(), m))


def test_missing_collector_names_the_directive(fake_root: Paths) -> None:
    kernel = system(fake_root)
    config = conf("path /var/crash\ncore_collector cp --sparse=always\n")
    os.remove(fake_root.under_root("/usr/bin/makedumpfile"))
    with pytest.raises(Exception, match=r"/etc/kdump.conf:2: core_collector program cp not found"):
        inputs_of(fake_root, config, make_plan(core_collector=("cp", "--sparse=always")), kernel)


# -- build with stubbed programs -------------------------------------------------------


def test_build_renames_image_into_place_and_writes_manifest(
    fake_root: Paths, programs: ProgramStub
) -> None:
    kernel = system(fake_root)
    plan, config = make_plan(), KdumpConfig()
    m = inputs_of(fake_root, config, plan, kernel)
    seen: dict[str, object] = {}

    def dracut(argv: Sequence[str]) -> proc.Completed:
        build_dir = Path(argv[argv.index("--tmpdir") + 1])
        seen["setup"] = (build_dir / "kdumpd-setup.sh").read_text()
        seen["plan"] = (build_dir / "plan.json").read_text()
        seen["agent"] = sorted(p.name for p in (build_dir / "agent" / "kdumpd").iterdir())
        Path(argv[-2]).write_bytes(b"new image")
        return proc.Completed(tuple(argv), 0, "dracut: *** Creating image ***\n", "")

    programs.expect("python3", stdout="/usr/lib/python3.11/os.py\n/usr/lib/python3.11/x.so\n")
    programs.expect_call("dracut", dracut)
    lines: list[str] = []
    result = build.build(
        fake_root, config, plan, kernel_release=KVER, manifest=m, on_line=lines.append
    )
    assert result.image.read_bytes() == b"new image"
    assert Manifest.from_json(manifest.manifest_path(fake_root, KVER).read_text()) == m
    assert lines == ["dracut: *** Creating image ***"]
    assert seen["plan"] == plan.to_json()
    assert "/usr/lib/python3.11/os.py" in str(seen["setup"])
    agent_names = seen["agent"]
    assert isinstance(agent_names, list)
    assert {"contract", "proc.py", "errors.py", "__init__.py"} <= set(agent_names)
    # nothing left behind but the image and its manifest
    assert sorted(p.name for p in fake_root.state_dir.iterdir()) == [
        f"initramfs-{KVER}kdump.img",
        f"initramfs-{KVER}kdump.manifest.json",
    ]


def test_failed_build_keeps_the_old_image(fake_root: Paths, programs: ProgramStub) -> None:
    kernel = system(fake_root)
    plan, config = make_plan(), KdumpConfig()
    old = inputs_of(fake_root, config, plan, kernel)
    record_image(fake_root, old)
    programs.expect("python3", stdout="")
    programs.expect("dracut", stdout="dracut: kdumpd: agent cannot start", returncode=1)
    new = Manifest(KVER, {"kdump.conf": "changed"})
    with pytest.raises(BuildError) as caught:
        build.build(fake_root, config, plan, kernel_release=KVER, manifest=new)
    assert "previous image (if any) is kept" in str(caught.value)
    assert manifest.image_path(fake_root, KVER).read_text() == "image"
    assert Manifest.from_json(manifest.manifest_path(fake_root, KVER).read_text()) == old
    assert len(list(fake_root.state_dir.iterdir())) == 2


def test_python_files_type_is_plain() -> None:
    assert PythonFiles((), ()) == agent.parse_python_files("")


# -- real dracut on this host (no kernel modules here: --no-kernel) ---------------------


def dracut_overlay(tmp_path: Path) -> Path:
    """A dracutbasedir that is the system's plus our static 99kdumpd shim."""
    system_base = Path("/usr/lib/dracut")
    base = tmp_path / "dracutbase"
    (base / "modules.d").mkdir(parents=True)
    for entry in system_base.iterdir():
        if entry.name != "modules.d":
            (base / entry.name).symlink_to(entry)
    for module in (system_base / "modules.d").iterdir():
        (base / "modules.d" / module.name).symlink_to(module)
    (base / "modules.d" / "99kdumpd").symlink_to(TEMPLATES.parent / "99kdumpd")
    return base


def agent_package(tmp_path: Path, capture_init: str) -> Path:
    package = tmp_path / "pkg"
    package.mkdir()
    for name, source in agent.agent_sources().items():
        target = package / name.removeprefix("kdumpd/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    write(package / "capture" / "__init__.py", capture_init)
    write(package / "capture" / "__main__.py", "def main():\n    import shutil\n\nmain()\n")
    return package


needs_dracut = pytest.mark.requires("dracut", "lsinitrd", root=True)  # root: chroot


#: What each init's image must hold, and must not.
SMALL_INIT_FILES = ("init", "usr/sbin/blkid", "usr/sbin/modprobe -> ../bin/kmod")
SYSTEMD_INIT_FILES = (
    "usr/lib/systemd/system/initrd.target.wants/kdumpd-capture.service",
    # no journal in the reservation: masked, its daemon left out
    "usr/lib/systemd/system/systemd-journald.service -> /dev/null",
    "usr/lib/systemd/system/systemd-journald.socket -> /dev/null",
)


@pytest.mark.integration
@needs_dracut
@pytest.mark.parametrize("action", ["reboot", "shell"])
def test_real_dracut_builds_and_the_agent_starts_in_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """A plan on a disk by UUID gets the small init; the shell action keeps systemd."""
    monkeypatch.setenv("dracutbasedir", str(dracut_overlay(tmp_path)))
    paths = Paths(root=Path("/"))
    monkeypatch.setattr(Paths, "state_dir", property(lambda self: tmp_path / "state"))
    package = agent_package(
        tmp_path, "import json\nfrom kdumpd import errors, proc\nfrom kdumpd.contract import plan\n"
    )
    lines: list[str] = []
    result = build.build(
        paths,
        KdumpConfig(),
        make_plan(failure_action=action),
        kernel_release=KVER,
        manifest=Manifest(KVER, {}),
        on_line=lines.append,
        agent_package=package,
        extra_dracut_args=["--no-kernel"],
    )
    assert result.image.stat().st_size > 0
    assert any("Including module: kdumpd" in line for line in lines)
    listing = subprocess.run(
        ["lsinitrd", str(result.image)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    ).stdout
    for wanted in (
        "etc/kdumpd/plan.json",
        "usr/lib/kdumpd/kdumpd/capture/__init__.py",
        "usr/lib/python3.11/json/__init__.py",
        "usr/bin/makedumpfile",
        *(SMALL_INIT_FILES if action == "reboot" else SYSTEMD_INIT_FILES),
    ):
        assert re.search(rf" {re.escape(wanted)}( -> |$)", listing, re.M), wanted
    assert not re.search(r"usr/lib/systemd/systemd-journald$", listing, re.M), listing
    if action == "reboot":
        assert result.init.init == "kdumpd"
        assert "small init" in result.init_line()
        assert not re.search(r"usr/lib/systemd/|systemd-udevd", listing), listing
        init = subprocess.run(
            ["lsinitrd", "-f", "init", str(result.image)], capture_output=True, check=True
        ).stdout.decode()
        assert "kdumpd capture init" in init
        assert "devices=(/dev/disk/by-uuid/abc UUID abc)" in init
    else:
        assert result.init.init == "systemd"
        assert "the shell action needs a console" in result.init_line()


@pytest.mark.integration
@needs_dracut
def test_real_dracut_fails_when_the_agent_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("dracutbasedir", str(dracut_overlay(tmp_path)))
    monkeypatch.setattr(Paths, "state_dir", property(lambda self: tmp_path / "state"))
    # an import the lister cannot satisfy either: the image lacks it, the self check fails
    package = agent_package(tmp_path, "import kdumpd_no_such_module\n")
    with pytest.raises(BuildError) as caught:
        build.build(
            Paths(root=Path("/")),
            KdumpConfig(),
            make_plan(),
            kernel_release=KVER,
            manifest=Manifest(KVER, {}),
            agent_package=package,
            extra_dracut_args=["--no-kernel"],
        )
    cause = caught.value.__cause__
    assert isinstance(cause, proc.ProgramError)
    assert "cannot be imported inside the image" in cause.stdout + cause.stderr
    assert not (tmp_path / "state" / f"initramfs-{KVER}kdump.img").exists()


@pytest.mark.integration
def test_root_mode_starter_keeps_hostile_values_as_data(tmp_path: Path) -> None:
    """agent_from=root: the starter mounts what the plan says; the setup installs no python."""
    bash = shutil.which("bash")
    assert bash is not None
    out = tmp_path / "out"
    out.mkdir()
    context = dataclasses.replace(
        hostile_context(str(tmp_path / "build")),
        root_mount=MountSpec("/dev/x $(touch pwned)", "/sys root", "ext4;id", "rw,`id`"),
        python_real="/usr/bin/python3.11",
    )
    render.render_module(context, template_dir=TEMPLATES, out_dir=out)
    starter = out / "kdumpd-agent.sh"
    subprocess.run([bash, "-n", str(starter), str(out / "kdumpd-setup.sh")], check=True)
    # Run the starter with the device missing: it must give up naming the device.
    text = starter.read_text().replace("wait_seconds=300", "wait_seconds=0")
    starter.write_text(text)
    done = subprocess.run([bash, str(starter)], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "/dev/x $(touch pwned) did not appear" in done.stderr
    record = tmp_path / "record"
    script = (
        STUBS
        + 'ldd() { record ldd "$@"; echo "	libz.so.1 => /lib/libz.so.1 (0x1)"; }\n'
        + f'. "{out / "kdumpd-setup.sh"}"\nkdumpd_install\n'
    )
    env = {"PATH": os.environ["PATH"], "RECORD": str(record), "initdir": str(tmp_path)}
    subprocess.run([bash, "-c", script], env=env, cwd=tmp_path, check=False)
    calls = [
        tuple(part.decode() for part in call.split(b"\0")[:-1])
        for call in record.read_bytes().split(b"\1")
        if call
    ]
    assert ("inst_library", "/lib/libz.so.1") in calls
    assert ("ldd", "/usr/bin/python3.11", "/x/ext `id`.so") in calls
    assert not any(c[0] == "inst_binary" and c[1] == "/usr/bin/python3" for c in calls)
    assert not any(c[0] == "chroot" for c in calls)  # the check runs the root's python
    assert not list(tmp_path.rglob("pwned"))


@pytest.mark.integration
def test_module_check_is_silent_on_system_builds(tmp_path: Path) -> None:
    """Without KDUMPD_BUILD_DIR (a system initramfs build) check() says no, and nothing else."""
    shim = TEMPLATES.parent / "99kdumpd" / "module-setup.sh"
    script = (
        'derror() { echo "derror $*"; }; dwarn() { echo "dwarn $*"; }; '
        'dinfo() { echo "dinfo $*"; }; dfatal() { echo "dfatal $*"; }; '
        f'. "{shim}"; check; echo "status $?"'
    )
    env = {"PATH": os.environ["PATH"]}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert (done.stdout, done.stderr) == ("status 1\n", "")
    build = tmp_path / "build"
    write(build / "kdumpd-setup.sh", "")
    env["KDUMPD_BUILD_DIR"] = str(build)
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert (done.stdout, done.stderr) == ("status 0\n", "")

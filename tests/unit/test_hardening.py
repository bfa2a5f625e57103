"""Hostile and broken input (issue 8): each finding reproduced, over fake trees.

Findings 1 (rollback) and the unload without configuration live in
test_manager.py, next to the restart tests they extend; the capture side's
findings (2, 3, 8) in test_capture_hardening.py; the raw import's (7) in
test_target_raw.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jinja2
import pytest

from kdumpd import cli, manager
from kdumpd.config import check_host, check_host_warnings, load_sysconfig, parse_kdump_conf
from kdumpd.errors import ConfigError
from kdumpd.image import render
from kdumpd.messages import RecordedMessages
from kdumpd.paths import Paths
from kdumpd.planner import hook_scripts
from tests.conftest import ProgramStub, install_collector, write

X86 = os.uname_result(("Linux", "host", "6.1.0-28-amd64", "#1 SMP", "x86_64"))
TEMPLATES = Path(__file__).resolve().parents[2] / "dracut-module" / "templates"


def kdumpctl(
    capsys: pytest.CaptureFixture[str], root: Path, *argv: str
) -> tuple[int, str, list[str]]:
    code = cli.main(["--root", str(root), *argv], uname=X86)
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def valid_tree(paths: Paths) -> Paths:
    write(paths.kdump_conf, "path /var/crash\n")
    paths.var_crash.mkdir(parents=True)
    install_collector(paths)
    return paths


def variables_problems(paths: Paths, text: bytes) -> list[str]:
    write(paths.default_kdump, "").write_bytes(text)
    with pytest.raises(ConfigError) as caught:
        load_sysconfig(paths, "x86_64")
    return [str(problem) for problem in caught.value.problems]


# -- 4: check-config said valid, start crashed --------------------------------------


def test_unbalanced_quote_in_kexec_args_is_refused_with_its_line(fake_root: Paths) -> None:
    problems = variables_problems(fake_root, b'# x\nKEXEC_ARGS="-s \'--foo"\n')
    assert problems == [
        "/etc/default/kdump:2: KEXEC_ARGS cannot be split into words (No closing quotation); "
        "close every quote"
    ]


def test_nul_in_commandline_append_is_refused(fake_root: Paths) -> None:
    problems = variables_problems(fake_root, b'KDUMP_COMMANDLINE_APPEND="a\x00b"\n')
    assert problems == [
        "/etc/default/kdump:1: KDUMP_COMMANDLINE_APPEND contains a NUL byte; remove it "
        "(values are plain text on one line)"
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("core_collector bin/mdf -l", "'bin/mdf' is a relative path"),
        ("kdump_pre hooks/pre.sh", "kdump_pre 'hooks/pre.sh' is not an absolute path"),
        ("kdump_post /opt/\udcffhook", "is not valid UTF-8"),
        ("extra_bins /usr/bin/ok /opt/\udcfe", "is not valid UTF-8"),
        ("dracut_args --add 'x", "dracut_args cannot be split into words"),
        ("path /var/crash\x1b[2J", "the control character '\\x1b'"),
        ("\udc80bogus 1", "Invalid kdump config option: the name is not valid UTF-8"),
    ],
)
def test_values_start_could_not_use_are_refused_when_parsed(line: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_kdump_conf(f"# kdump\n{line}\n")
    (problem,) = caught.value.problems
    assert problem.line == 2
    assert expected in problem.message


def test_missing_collector_is_refused_by_check_config_and_start(
    fake_root: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    valid_tree(fake_root)
    write(fake_root.kdump_conf, "path /var/crash\ncore_collector mdf -l\n")
    code, _, err = kdumpctl(capsys, fake_root.root, "check-config")
    assert code == 1
    assert err == [
        "kdump: /etc/kdump.conf:2: Error: core_collector program mdf not found in /usr/sbin, "
        "/usr/bin, /sbin, /bin. Install it (apt install makedumpfile) or name an existing program."
    ]
    write(fake_root.kexec_crash_loaded, "0\n")
    write(fake_root.kexec_crash_size, "268435456\n")
    with pytest.raises(manager.ArmingFailed, match=r"kdump.conf:2: .*mdf not found"):
        manager.start(fake_root, RecordedMessages())


def test_hook_file_names_that_are_not_text_are_skipped_with_a_warning(fake_root: Paths) -> None:
    pre = fake_root.hooks_dir / "pre.d"
    pre.mkdir(parents=True)
    bad = Path(os.fsdecode(bytes(pre) + b"/10-\xff"))
    write(bad, "#!/bin/sh\n").chmod(0o755)
    write(pre / "20-ok", "#!/bin/sh\n").chmod(0o755)
    found, warnings = hook_scripts(fake_root, "pre.d")
    assert found == ("/etc/kdump/pre.d/20-ok",)
    assert [str(w) for w in warnings] == [
        "/etc/kdump/pre.d/10-\\xff: has a name that is not plain UTF-8 text; skipped. "
        "Rename it (letters, digits, - _ .)"
    ]
    json.dumps([str(w) for w in warnings]).encode("utf-8")  # printable everywhere


# -- 5: a newline in KDUMP_KERNELVER became code -------------------------------------


def test_newline_in_kernelver_is_refused(fake_root: Paths) -> None:
    problems = variables_problems(fake_root, b'KDUMP_KERNELVER="6.1\ntouch /pwned"\n')
    assert problems == [
        "/etc/default/kdump:1: KDUMP_KERNELVER contains the control character '\\n'; "
        "remove it (values are plain text on one line)"
    ]
    problems = variables_problems(fake_root, b'KDUMP_KERNELVER="6.1;id"\n')
    assert "is not a kernel release name" in problems[0]


def test_comments_of_rendered_files_refuse_a_line_break(tmp_path: Path) -> None:
    env = render.template_environment(TEMPLATES)
    template = env.from_string("# for kernel {{ kernel_release | comment }}\n")
    assert template.render(kernel_release="6.1.0-28-amd64") == "# for kernel 6.1.0-28-amd64\n"
    with pytest.raises(ValueError, match="control character"):
        template.render(kernel_release="6.1\ntouch /pwned")
    # every shell template puts the release into its comment through the filter
    for name in ("kdumpd-setup.sh.j2", "kdumpd-agent.sh.j2"):
        head = (TEMPLATES / name).read_text().split("\n", 3)[:2]
        assert any("{{ kernel_release | comment }}" in line for line in head), name
        assert isinstance(env.get_template(name), jinja2.Template)


# -- 6: --root reached the running kernel ----------------------------------------------


@pytest.mark.parametrize("command", ["start", "stop", "restart", "reload", "rebuild"])
def test_root_other_than_slash_never_loads_or_unloads(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], programs: ProgramStub
) -> None:
    # Not the stand-in tree of other tests: exactly what kdumpctl --root builds.
    tree = valid_tree(Paths(root=tmp_path))
    write(tree.kexec_crash_loaded, "1\n")
    write(tree.kexec_crash_size, "268435456\n")
    code, _, err = kdumpctl(capsys, tmp_path, command)
    assert code == 2
    assert err == [
        f"kdump: kdumpctl {command} with --root {tmp_path}: refused, because it would act on "
        "the running kernel, not on that tree (kexec and dracut work on this machine). Run it "
        "without --root on the system itself; check-config, status, showmem and estimate "
        "work on a tree."
    ]
    assert programs.calls == []
    assert not tree.kdumpctl_lock.exists()


def test_the_running_system_is_never_refused() -> None:
    manager.require_running_system(Paths(), "start")
    manager.require_running_system(Paths(root=Path("/.")), "stop")


# -- 9: other tracebacks --------------------------------------------------------------


def test_overlong_path_component_is_an_error_with_one_json_document(
    fake_root: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    valid_tree(fake_root)
    write(fake_root.kdump_conf, f"path /var/{'x' * 256}\nsshkey /root/{'k' * 300}\n")
    code, out, _ = kdumpctl(capsys, fake_root.root, "--json", "check-config")
    document = json.loads(out)
    assert code == 1
    assert [(e["line"], e["message"]) for e in document["errors"]] == [
        (
            1,
            "Invalid kdump config value for option 'path': path has a component of 256 bytes "
            "(xxxxxxxxxxxxxxxxxxxx...); a file name may have at most 255 bytes",
        ),
        (
            2,
            "Invalid kdump config value for option 'sshkey': sshkey has a component of 300 "
            "bytes (kkkkkkkkkkkkkkkkkkkk...); a file name may have at most 255 bytes",
        ),
    ]


def test_estimate_with_a_directory_as_module_list(
    fake_root: Paths, capsys: pytest.CaptureFixture[str], programs: ProgramStub
) -> None:
    programs.expect("journalctl", stdout="")
    write(fake_root.under_root("/proc/iomem"), "00100000-ffffffff : System RAM\n")
    write(fake_root.kexec_crash_size, "268435456\n")
    code, out, _ = kdumpctl(
        capsys, fake_root.root, "--json", "estimate", "--modules-list", str(fake_root.root)
    )
    assert code == 1
    message = json.loads(out)["error"]["message"]
    assert message == (
        f"cannot read the module list {fake_root.root}: Is a directory; name a file with one "
        "module name per line"
    )


def test_root_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_tree = write(tmp_path / "file", "")
    code, _, err = kdumpctl(capsys, not_a_tree, "stop")
    assert (code, err) == (
        2,
        [f"kdump: --root {not_a_tree}: not a directory; name the system " "tree to act on"],
    )


@pytest.mark.parametrize("where", ["kexec_crash_size", "machine_id", "proc_cmdline"])
def test_a_directory_where_a_host_file_belongs(
    where: str, fake_root: Paths, capsys: pytest.CaptureFixture[str], programs: ProgramStub
) -> None:
    programs.expect("journalctl", stdout="")
    write(fake_root.under_root("/proc/iomem"), "00100000-ffffffff : System RAM\n")
    write(fake_root.kexec_crash_loaded, "0\n")
    getattr(fake_root, where).mkdir(parents=True)
    for argv in (["status"], ["showmem"], ["estimate"]):
        code, out, _ = kdumpctl(capsys, fake_root.root, "--json", *argv)
        document = json.loads(out)
        assert "internal error" not in json.dumps(document)
        if code != 0 and code != 3:
            assert "Is a directory" in document["error"]["message"]


def test_variables_file_as_a_directory_is_reported(
    fake_root: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    valid_tree(fake_root)
    fake_root.default_kdump.mkdir(parents=True)
    code, _, err = kdumpctl(capsys, fake_root.root, "check-config")
    assert code == 1
    assert err == [
        "kdump: /etc/default/kdump: cannot read the kdump variables file: Is a directory; "
        "it must be a readable regular file (or absent, for the defaults)"
    ]


# -- 10: a too-open ssh key -------------------------------------------------------------


def test_ssh_key_readable_by_others_is_named_before_any_preflight(fake_root: Paths) -> None:
    valid_tree(fake_root)
    config = parse_kdump_conf(
        "ssh kdump@192.0.2.7\ncore_collector makedumpfile -F -l\nsshkey /root/.ssh/key\n"
    ).config
    key = write(fake_root.under_root("/root/.ssh/key"), "PRIVATE")
    key.chmod(0o644)
    assert [str(p) for p in check_host(config, fake_root, "/etc/kdump.conf")] == [
        "/etc/kdump.conf:3: The ssh key /root/.ssh/key may be read by other users (mode 0644), "
        "so ssh refuses to use it. Run: chmod 600 /root/.ssh/key"
    ]
    key.chmod(0o600)
    assert check_host(config, fake_root, "/etc/kdump.conf") == []


# -- 3, first kernel: a dump path others can write to is named --------------------------


def test_check_config_warns_when_the_dump_path_is_not_roots_alone(fake_root: Paths) -> None:
    valid_tree(fake_root)
    config = parse_kdump_conf("path /var/crash\n").config
    assert check_host_warnings(config, fake_root, "/etc/kdump.conf") == []
    fake_root.under_root("/var").chmod(0o777)
    (warning,) = check_host_warnings(config, fake_root, "/etc/kdump.conf")
    assert str(warning).startswith(
        "/etc/kdump.conf:1: the dump path /var/crash can be changed by users other than root "
        "(/var is not root's alone)"
    )
    fake_root.under_root("/var").chmod(0o1777)  # sticky, like /tmp: others cannot rename
    assert check_host_warnings(config, fake_root, "/etc/kdump.conf") == []
    os.chown(fake_root.var_crash, 1000, 1000)
    assert "(/var/crash is not root's alone)" in str(
        check_host_warnings(config, fake_root, "/etc/kdump.conf")[0]
    )

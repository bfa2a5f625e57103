"""Host checks of kdump.conf against a fake root: paths, programs, keys, devices, hostname."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpd.config import check_host, check_host_warnings, effective_sshkey, parse_kdump_conf
from kdumpd.config.checks import resolve_under_root
from kdumpd.config.kdumpconf import KdumpConfig
from kdumpd.errors import ConfigError
from kdumpd.paths import Paths
from tests.conftest import install_collector, write

SOURCE = "/etc/kdump.conf"


@pytest.fixture(autouse=True)
def collector(fake_root: Paths) -> None:
    """Every tree here has the default collector; tests of a missing one remove it."""
    install_collector(fake_root)


def config_of(text: str) -> KdumpConfig:
    return parse_kdump_conf(text).config


def executable(path: Path, mode: int = 0o755) -> Path:
    write(path, "#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def found(config: KdumpConfig, paths: Paths) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in check_host(config, paths, SOURCE)]


def test_default_target_path_must_exist(fake_root: Paths) -> None:
    config = config_of("# dumps\npath /var/crash\n")
    assert found(config, fake_root) == [
        (
            2,
            "Dump path /var/crash does not exist. "
            "Create the directory or set 'path' to an existing one.",
        )
    ]
    fake_root.var_crash.mkdir(parents=True)
    assert found(config, fake_root) == []


def test_default_path_without_directive_reports_line_zero(fake_root: Paths) -> None:
    problems = check_host(KdumpConfig(), fake_root, SOURCE)
    assert [(p.file, p.line) for p in problems] == [(SOURCE, 0)]
    assert problems[0].message.startswith("Dump path /var/crash does not exist.")


def test_path_is_not_checked_on_the_host_for_an_explicit_target(fake_root: Paths) -> None:
    assert found(config_of("nfs server:/export\npath /nowhere\n"), fake_root) == []


def test_extra_bins_must_exist_and_be_executable(fake_root: Paths) -> None:
    fake_root.var_crash.mkdir(parents=True)
    executable(fake_root.under_root("/usr/bin/good"))
    executable(fake_root.under_root("/usr/bin/plain"), mode=0o644)
    config = config_of("extra_bins /usr/bin/good /usr/bin/missing /usr/bin/plain\n")
    assert found(config, fake_root) == [
        (1, "Error: /usr/bin/missing not found."),
        (1, "Error: /usr/bin/plain is not executable. Make it an executable file (chmod +x)."),
    ]


def test_relative_extra_bin_is_refused_when_parsed() -> None:
    with pytest.raises(ConfigError) as caught:
        config_of("extra_bins lftp\n")
    assert "'lftp' is not an absolute path" in str(caught.value)


def test_a_directory_is_not_an_executable(fake_root: Paths) -> None:
    fake_root.var_crash.mkdir(parents=True)
    fake_root.under_root("/opt/tool").mkdir(parents=True)
    assert "is not executable" in found(config_of("kdump_post /opt/tool\n"), fake_root)[0][1]


def test_hooks_must_exist_and_be_executable(fake_root: Paths) -> None:
    fake_root.var_crash.mkdir(parents=True)
    executable(fake_root.under_root("/usr/local/bin/pre"))
    executable(fake_root.under_root("/usr/local/bin/post"), mode=0o600)
    config = config_of(
        "kdump_pre /usr/local/bin/pre\n"
        "kdump_post /usr/local/bin/post\n"
        "kdump_emergency /usr/local/bin/emergency\n"
    )
    assert found(config, fake_root) == [
        (2, "Error: /usr/local/bin/post is not executable. Make it an executable file (chmod +x)."),
        (3, "Error: /usr/local/bin/emergency not found."),
    ]


def test_symlinks_resolve_inside_the_root(fake_root: Paths) -> None:
    # Debian 12 is merged-/usr (/bin -> usr/bin) and uses absolute alternatives links;
    # both must resolve inside the checked tree, not on the machine running the check.
    fake_root.var_crash.mkdir(parents=True)
    executable(fake_root.under_root("/usr/bin/lftp.real"))
    fake_root.under_root("/bin").symlink_to("usr/bin")
    write(fake_root.under_root("/etc/alternatives/.keep"), "")
    fake_root.under_root("/etc/alternatives/lftp").symlink_to("/usr/bin/lftp.real")
    fake_root.under_root("/usr/bin/lftp").symlink_to("/etc/alternatives/lftp")
    assert found(config_of("extra_bins /bin/lftp\n"), fake_root) == []
    assert resolve_under_root(fake_root, "/bin/lftp") == fake_root.under_root("/usr/bin/lftp.real")


def test_symlink_loop_is_not_found(fake_root: Paths) -> None:
    fake_root.var_crash.mkdir(parents=True)
    loop = fake_root.under_root("/usr/bin/loop")
    loop.parent.mkdir(parents=True)
    loop.symlink_to("/usr/bin/loop")
    assert found(config_of("extra_bins /usr/bin/loop\n"), fake_root) == [
        (1, "Error: /usr/bin/loop not found.")
    ]


def test_raw_device_must_exist(fake_root: Paths) -> None:
    config = config_of("raw /dev/vdb\ncore_collector makedumpfile -F -d 31\n")
    problems = found(config, fake_root)
    assert len(problems) == 1
    assert problems[0][0] == 1
    assert problems[0][1].startswith("Bad raw disk /dev/vdb: no such device.")
    write(fake_root.under_root("/dev/vdb"), "")
    assert found(config, fake_root) == []


def test_fence_kdump_nodes_must_not_name_this_host(fake_root: Paths) -> None:
    fake_root.var_crash.mkdir(parents=True)
    write(fake_root.hostname, "node1.example.com\n")
    config = config_of("fence_kdump_nodes node2 NODE1 node1.example.com 127.0.0.1 node3\n")
    assert found(config, fake_root) == [
        (1, "Option fence_kdump_nodes cannot contain NODE1. List the other cluster nodes only."),
        (
            1,
            "Option fence_kdump_nodes cannot contain node1.example.com. "
            "List the other cluster nodes only.",
        ),
        (
            1,
            "Option fence_kdump_nodes cannot contain 127.0.0.1. List the other cluster nodes only.",
        ),
    ]


def test_fence_kdump_nodes_without_hostname_file(fake_root: Paths) -> None:
    fake_root.var_crash.mkdir(parents=True)
    assert found(config_of("fence_kdump_nodes node2 node3\n"), fake_root) == []


def test_missing_sshkey_is_a_warning_not_an_error(fake_root: Paths) -> None:
    config = config_of(
        "ssh root@10.0.0.2\ncore_collector makedumpfile -F -d 31\nsshkey /etc/kdump/key\n"
    )
    assert check_host(config, fake_root, SOURCE) == []
    warnings = check_host_warnings(config, fake_root, SOURCE)
    assert [(w.line, w.message) for w in warnings] == [
        (3, "'/etc/kdump/key' doesn't exist, using default value '/root/.ssh/kdump_id_rsa'")
    ]
    assert effective_sshkey(config, fake_root) == "/root/.ssh/kdump_id_rsa"
    write(fake_root.under_root("/etc/kdump/key"), "KEY")
    assert check_host_warnings(config, fake_root, SOURCE) == []
    assert effective_sshkey(config, fake_root) == "/etc/kdump/key"


def test_unset_sshkey_gives_no_warning(fake_root: Paths) -> None:
    assert check_host_warnings(config_of("ssh root@h\n"), fake_root, SOURCE) == []


def test_checks_start_no_program(fake_root: Paths, programs: object) -> None:
    fake_root.var_crash.mkdir(parents=True)
    executable(fake_root.under_root("/usr/bin/x"))
    check_host(config_of("extra_bins /usr/bin/x\nkdump_pre /usr/bin/x\n"), fake_root, SOURCE)
    assert programs.calls == []  # type: ignore[attr-defined]


def test_all_problems_are_reported_together(fake_root: Paths) -> None:
    write(fake_root.hostname, "me\n")
    config = config_of("path /nope\nextra_bins /a\nkdump_pre /b\nfence_kdump_nodes me\n")
    assert [line for line, _ in found(config, fake_root)] == [1, 2, 3, 4]

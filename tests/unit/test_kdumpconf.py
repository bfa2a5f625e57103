"""kdump.conf grammar: syntax, every directive, every message, round trip, fuzzing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdumpd.config import (
    DEFAULT_CORE_COLLECTOR,
    DumpTarget,
    KdumpConfig,
    load_kdump_conf,
    parse_kdump_conf,
    render_kdump_conf,
)
from kdumpd.config.kdumpconf import KNOWN_DIRECTIVES, REMOVED_DIRECTIVES, read_directives
from kdumpd.errors import ConfigError, Problem
from kdumpd.paths import Paths
from tests.conftest import write

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "kdump.conf"


def parse(text: str) -> KdumpConfig:
    return parse_kdump_conf(text).config


def errors_of(text: str) -> list[tuple[int, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_kdump_conf(text)
    return [(p.line, p.message) for p in caught.value.problems]


# -- syntax (kdump_get_conf_val cases of §7.1) -----------------------------


def test_trailing_comment_is_stripped() -> None:
    assert parse("path /var/crash/here # where dumps go\n").path == "/var/crash/here"


def test_comment_directly_after_value_is_stripped() -> None:
    assert parse("path /srv/dumps#no blank before the hash\n").path == "/srv/dumps"


def test_leading_whitespace_and_tabs_are_allowed() -> None:
    config = parse("   \tpath\t/srv/dumps\t\n\t  failure_action \t shell  \n")
    assert config.path == "/srv/dumps"
    assert config.failure_action == "shell"


def test_commented_lines_are_ignored() -> None:
    config = parse("#path /nowhere\n   # failure_action halt\n\n#\npath /srv\n")
    assert config.path == "/srv"
    assert config.failure_action == "reboot"


def test_whole_value_double_quotes_are_removed() -> None:
    config = parse('core_collector "cp --sparse=always"\next4 "LABEL=my disk"\n')
    assert config.core_collector == "cp --sparse=always"
    assert config.target == DumpTarget("ext4", "LABEL=my disk")


def test_inner_quotes_are_kept() -> None:
    value = '--omit-drivers "cfg80211 snd" --add-drivers "ext2 ext3"'
    assert parse(f"dracut_args {value}\n").dracut_args == value


def test_complex_dracut_args_with_mount() -> None:
    config = parse(
        'dracut_args --mount "/dev/mapper/vg-dump /kdumproot/dump ext4 rw,noatime" '
        "--add-drivers nvme -o watchdog\n"
    )
    assert config.target == DumpTarget(
        "mount", "/dev/mapper/vg-dump /kdumproot/dump ext4 rw,noatime"
    )
    assert config.target.mount_fields == (
        "/dev/mapper/vg-dump",
        "/kdumproot/dump",
        "ext4",
        "rw,noatime",
    )
    assert config.lines["target"] == 1


def test_mount_with_equals_form_and_default_options() -> None:
    config = parse("dracut_args --mount='UUID=1234 /mnt xfs'\n")
    assert config.target is not None
    assert config.target.mount_fields == ("UUID=1234", "/mnt", "xfs", "defaults")


def test_blank_runs_inside_value_are_squeezed() -> None:
    assert parse("core_collector makedumpfile   -l\t-d 31\n").core_collector == (
        "makedumpfile -l -d 31"
    )


def test_crlf_line_ends_are_accepted() -> None:
    config = parse("path /srv/dumps\r\nfailure_action halt\r\n")
    assert (config.path, config.failure_action) == ("/srv/dumps", "halt")


def test_read_directives_reports_line_numbers() -> None:
    found = read_directives("\n# c\npath /a\n\n  raw /dev/sdb # x\n")
    assert [(d.line, d.option, d.value) for d in found] == [
        (3, "path", "/a"),
        (5, "raw", "/dev/sdb"),
    ]


def test_empty_file_gives_all_defaults() -> None:
    parsed = parse_kdump_conf("")
    assert parsed.config == KdumpConfig()
    assert parsed.warnings == ()
    assert parsed.config.effective_core_collector == DEFAULT_CORE_COLLECTOR


# -- directives --------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, value",
    [
        ("raw", "/dev/vg/lv_kdump"),
        ("ext2", "/dev/sdb1"),
        ("ext3", "UUID=03138356-5e61-4ab3-b58e-27507ac41937"),
        ("ext4", "LABEL=/boot"),
        ("xfs", "/dev/mapper/vg-crash"),
        ("btrfs", "/dev/vdb"),
        ("minix", "/dev/loop0"),
        ("virtiofs", "myfs"),
        ("nfs", "my.server.com:/export/tmp"),
        ("nfs", "[2001:db8::1:2:3:4]:/export/tmp"),
        ("ssh", "user@my.server.com"),
    ],
)
def test_every_target_directive(kind: str, value: str) -> None:
    collector = "\ncore_collector makedumpfile -F -l -d 31" if kind in ("raw", "ssh") else ""
    config = parse(f"{kind} {value}{collector}\n")
    assert config.target == DumpTarget(kind, value)
    assert config.lines[kind] == 1
    assert not config.is_default_target


def test_ssh_user_and_host_including_bare_ipv6() -> None:
    target = parse("ssh kdump@2001:db8::1:2:3:4\n").target
    assert target is not None
    assert (target.user, target.host) == ("kdump", "2001:db8::1:2:3:4")


def test_user_of_a_non_ssh_target_is_an_error() -> None:
    with pytest.raises(ValueError, match="no ssh user"):
        _ = DumpTarget("nfs", "h:/x").user


def test_every_other_directive() -> None:
    config = parse(
        "\n".join(
            [
                "path /dumps",
                "core_collector cp --sparse=always",
                "sshkey /etc/kdump/id_ed25519",
                "kdump_pre /usr/local/bin/pre",
                "kdump_post /usr/local/bin/post",
                "kdump_emergency /usr/local/bin/sos",
                "extra_bins /usr/bin/lftp /usr/bin/curl",
                "extra_modules gfs2 nfs",
                "failure_action dump_to_rootfs",
                "final_action poweroff",
                "force_rebuild 1",
                "force_no_rebuild 0",
                "dracut_args --omit-drivers snd",
                "fence_kdump_args -p 7410 -f auto",
                "fence_kdump_nodes node1 node2",
                "auto_reset_crashkernel no",
            ]
        )
    )
    assert config == KdumpConfig(
        target=None,
        path="/dumps",
        core_collector="cp --sparse=always",
        sshkey="/etc/kdump/id_ed25519",
        kdump_pre="/usr/local/bin/pre",
        kdump_post="/usr/local/bin/post",
        kdump_emergency="/usr/local/bin/sos",
        extra_bins=("/usr/bin/lftp", "/usr/bin/curl"),
        extra_modules=("gfs2", "nfs"),
        failure_action="dump_to_rootfs",
        final_action="poweroff",
        force_rebuild=True,
        force_no_rebuild=False,
        dracut_args="--omit-drivers snd",
        fence_kdump_args="-p 7410 -f auto",
        fence_kdump_nodes=("node1", "node2"),
        auto_reset_crashkernel=False,
    )
    assert config.lines["fence_kdump_nodes"] == 15
    assert config.lines["path"] == 1
    assert config.effective_core_collector == "cp --sparse=always"


@pytest.mark.parametrize("action", ["reboot", "halt", "poweroff", "shell", "dump_to_rootfs"])
def test_failure_actions(action: str) -> None:
    assert parse(f"failure_action {action}\n").failure_action == action


@pytest.mark.parametrize("action", ["reboot", "halt", "poweroff"])
def test_final_actions(action: str) -> None:
    assert parse(f"final_action {action}\n").final_action == action


@pytest.mark.parametrize("value, expected", [("yes", True), ("no", False), ("whatever", True)])
def test_auto_reset_crashkernel_is_yes_unless_no(value: str, expected: bool) -> None:
    assert parse(f"auto_reset_crashkernel {value}\n").auto_reset_crashkernel is expected


def test_force_no_rebuild_alone() -> None:
    config = parse("force_no_rebuild 1\n")
    assert (config.force_rebuild, config.force_no_rebuild) == (False, True)


def test_deprecated_default_alias_warns_and_sets_failure_action() -> None:
    parsed = parse_kdump_conf("path /x\ndefault shell\n")
    assert parsed.config.failure_action == "shell"
    assert parsed.config.lines["failure_action"] == 2
    assert len(parsed.warnings) == 1
    warning = parsed.warnings[0]
    assert (warning.file, warning.line) == ("/etc/kdump.conf", 2)
    assert "Option 'default' was renamed 'failure_action' and will be removed" in warning.message
    assert (
        "Please update /etc/kdump.conf to use option 'failure_action' instead." in warning.message
    )


def test_default_alias_value_is_validated_like_failure_action() -> None:
    assert errors_of("default explode\n") == [
        (1, "Usage kdump.conf: failure_action {reboot|halt|poweroff|shell|dump_to_rootfs}")
    ]


def test_non_makedumpfile_collector_with_raw_warns() -> None:
    parsed = parse_kdump_conf("raw /dev/sdb\ncore_collector dd bs=1M\n")
    assert [(w.line, w.message) for w in parsed.warnings] == [
        (
            2,
            "Specifying a non-makedumpfile core collector, "
            "you will have to recover the vmcore manually.",
        )
    ]


@pytest.mark.parametrize("flag", ["-F", "-lF", "-Fl"])
def test_makedumpfile_with_flatten_accepted_for_ssh(flag: str) -> None:
    text = f"ssh root@10.0.0.1\ncore_collector makedumpfile {flag} -d 31\n"
    assert parse(text).core_collector == f"makedumpfile {flag} -d 31"


def test_absent_collector_with_ssh_is_fine() -> None:
    # The capture side adds -F itself when the directive is absent (§1.4).
    config = parse("ssh root@10.0.0.1\n")
    assert config.core_collector is None
    assert config.effective_core_collector == DEFAULT_CORE_COLLECTOR
    assert "-F" not in config.effective_core_collector


# -- messages ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("foo bar\n", "Invalid kdump config option foo"),
        ("nfs4 host:/x\n", "Invalid kdump config option nfs4"),
        ("Path /x\n", "Invalid kdump config option Path"),
        ("path\n", "Invalid kdump config value for option 'path'"),
        ('path ""\n', "Invalid kdump config value for option 'path'"),
        ("ssh # comment only\n", "Invalid kdump config value for option 'ssh'"),
        ("path /a\npath /b\n", "Duplicated kdump config value of option path"),
        ("raw /dev/a\next4 /dev/b\n", "More than one dump targets specified"),
        ("nfs a:/b\nnfs c:/d\n", "More than one dump targets specified"),
        (
            'ext4 /dev/b\ndracut_args --mount "/dev/c /mnt ext4 defaults"\n',
            "More than one dump targets specified",
        ),
        (
            "failure_action halt\ndefault shell\n",
            "Duplicated kdump config value of option failure_action",
        ),
        (
            "failure_action explode\n",
            "Usage kdump.conf: failure_action {reboot|halt|poweroff|shell|dump_to_rootfs}",
        ),
        ("final_action shell\n", "Usage kdump.conf: final_action {reboot|halt|poweroff}"),
        ("force_rebuild yes\n", "Error: force_rebuild value is invalid"),
        ("force_no_rebuild 2\n", "Error: force_no_rebuild value is invalid"),
        (
            "force_rebuild 1\nforce_no_rebuild 1\n",
            "Error: force_rebuild and force_no_rebuild are enabled simultaneously in kdump.conf",
        ),
        (
            "ssh my.server.com\n",
            "Please verify that /etc/kdump.conf contains 'ssh <user>@<host>' "
            "and that it is properly formatted.",
        ),
        (
            "ssh user@\n",
            "Please verify that /etc/kdump.conf contains 'ssh <user>@<host>' "
            "and that it is properly formatted.",
        ),
        (
            "ssh a@b\ncore_collector makedumpfile -l -d 31\n",
            'The specified dump target needs makedumpfile "-F" option.',
        ),
        (
            "raw /dev/sdb\ncore_collector makedumpfile -l -d 31\n",
            'The specified dump target needs makedumpfile "-F" option.',
        ),
        (
            'dracut_args --mount "/dev/a /m ext4" --mount "/dev/b /n xfs"\n',
            'Multiple mount targets specified in one "dracut_args".',
        ),
    ],
)
def test_message(text: str, expected: str) -> None:
    problems = errors_of(text)
    assert expected in [message for _, message in problems]


@pytest.mark.parametrize(
    "option", ["net", "options", "link_delay", "disk_timeout", "debug_mem_level", "blacklist"]
)
def test_removed_directives_are_errors(option: str) -> None:
    assert errors_of(f"{option} something\n") == [
        (
            1,
            f"Deprecated kdump config option: {option}. "
            "Refer to kdump.conf manpage for alternatives.",
        )
    ]


def test_problems_carry_file_and_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_kdump_conf("path /a\n\n# x\npath /b\n", source="/etc/kdump.conf")
    assert caught.value.problems == (
        Problem("/etc/kdump.conf", 4, "Duplicated kdump config value of option path"),
    )
    assert str(caught.value) == "/etc/kdump.conf:4: Duplicated kdump config value of option path"


def test_every_mistake_is_reported_in_one_run() -> None:
    text = "\n".join(
        [
            "foo bar",  # 1
            "net eth0",  # 2
            "path",  # 3
            "raw /dev/a",  # 4
            "ssh host-without-user",  # 5
            "final_action shell",  # 6
            "force_rebuild 7",  # 7
            "failure_action halt",  # 8
            "failure_action shell",  # 9
        ]
    )
    assert errors_of(text) == [
        (1, "Invalid kdump config option foo"),
        (2, "Deprecated kdump config option: net. Refer to kdump.conf manpage for alternatives."),
        (3, "Invalid kdump config value for option 'path'"),
        (5, "More than one dump targets specified"),
        (6, "Usage kdump.conf: final_action {reboot|halt|poweroff}"),
        (7, "Error: force_rebuild value is invalid"),
        (9, "Duplicated kdump config value of option failure_action"),
    ]


def test_mount_needs_three_fields_and_absolute_mountpoint() -> None:
    assert "--mount needs" in errors_of('dracut_args --mount "/dev/a"\n')[0][1]
    assert "must be an absolute path" in errors_of('dracut_args --mount "/dev/a mnt ext4"\n')[0][1]


def test_unbalanced_quote_in_mount_dracut_args_is_reported() -> None:
    message = errors_of('dracut_args --mount "/dev/a /mnt ext4\n')[0][1]
    assert message.startswith("Invalid kdump config value for option 'dracut_args'")


def test_source_names_the_file_in_messages() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_kdump_conf("ssh nohost\n", source="/tmp/other.conf")
    problem = caught.value.problems[0]
    assert problem.file == "/tmp/other.conf"
    assert "/tmp/other.conf contains 'ssh <user>@<host>'" in problem.message


# -- files --------------------------------------------------------------------


def test_shipped_kdump_conf_parses_cleanly() -> None:
    parsed = parse_kdump_conf(SHIPPED.read_text())
    assert parsed.warnings == ()
    assert parsed.config == KdumpConfig(
        path="/var/crash",
        core_collector="makedumpfile -l --message-level 7 -d 31",
        auto_reset_crashkernel=True,
    )
    assert set(parsed.config.lines) == {"auto_reset_crashkernel", "path", "core_collector"}


def test_every_shipped_example_parses_when_uncommented() -> None:
    # Each commented example line is valid on its own (with -F where a target needs it).
    examples = [
        line[1:]
        for line in SHIPPED.read_text().splitlines()
        if line.startswith("#") and line[1:2].isalpha()
    ]
    assert len(examples) >= 20
    for example in examples:
        extra = (
            "core_collector makedumpfile -F -d 31\n" if example.split()[0] in ("raw", "ssh") else ""
        )
        if example.startswith("core_collector"):
            extra = ""
        parse_kdump_conf(example + "\n" + extra)


def test_load_reads_paths_kdump_conf(fake_root: Paths) -> None:
    write(fake_root.kdump_conf, "path /x\nfailure_action halt\n")
    parsed = load_kdump_conf(fake_root)
    assert (parsed.config.path, parsed.config.failure_action) == ("/x", "halt")


def test_load_names_the_system_path_in_problems(fake_root: Paths) -> None:
    write(fake_root.kdump_conf, "bogus 1\n")
    with pytest.raises(ConfigError) as caught:
        load_kdump_conf(fake_root)
    assert caught.value.problems[0].file == "/etc/kdump.conf"


def test_load_override(fake_root: Paths, tmp_path: Path) -> None:
    other = write(tmp_path / "alt.conf", "path /alt\n")
    assert load_kdump_conf(fake_root, override=other).config.path == "/alt"


def test_missing_file(fake_root: Paths) -> None:
    with pytest.raises(ConfigError) as caught:
        load_kdump_conf(fake_root)
    assert "Error: No kdump config file found!" in caught.value.problems[0].message


# -- render / round trip ----------------------------------------------------------


def test_round_trip_of_a_full_config() -> None:
    text = "\n".join(
        [
            "ssh kdump@2001:db8::1",
            "path /remote/crash",
            "core_collector makedumpfile -F -c -d 17",
            "sshkey /etc/kdump/key",
            "kdump_pre /bin/pre",
            "kdump_post /bin/post",
            "kdump_emergency /bin/emerg",
            "extra_bins /bin/a /bin/b",
            "extra_modules m1 m2",
            "failure_action shell",
            "final_action halt",
            "force_no_rebuild 1",
            'dracut_args --omit "plymouth resume"',
            "fence_kdump_args -p 7410",
            "fence_kdump_nodes n1 n2",
            "auto_reset_crashkernel no",
        ]
    )
    config = parse(text)
    rendered = render_kdump_conf(config)
    assert parse(rendered) == config


def test_round_trip_of_mount_target_and_quoted_value() -> None:
    config = parse('dracut_args --mount "/dev/a /mnt ext4 ro"\ncore_collector ""x y""\n')
    assert config.core_collector == '"x y"'
    assert parse(render_kdump_conf(config)) == config


def test_render_refuses_values_the_file_cannot_hold() -> None:
    with pytest.raises(ValueError, match="cannot be written"):
        render_kdump_conf(KdumpConfig(path="/a#b"))
    with pytest.raises(ValueError, match="dracut_args --mount"):
        render_kdump_conf(KdumpConfig(target=DumpTarget("mount", "/dev/a /m ext4")))
    with pytest.raises(ValueError, match="different target"):
        render_kdump_conf(KdumpConfig(dracut_args='--mount "/dev/a /m ext4"'))


# -- properties --------------------------------------------------------------------

_OPTIONS = [*sorted(KNOWN_DIRECTIVES | set(REMOVED_DIRECTIVES)), "nfs4", "Path", "#", ""]
_VALUE_WORDS = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "yes",
            "no",
            "reboot",
            "halt",
            "shell",
            "poweroff",
            "dump_to_rootfs",
            "/var/crash",
            "/dev/sdb",
            "user@host",
            "host",
            "makedumpfile",
            "-F",
            "-l",
            "-d",
            "31",
            "--mount",
            '"/dev/a /mnt ext4"',
            '"',
            "'",
            "#",
            "@",
            "--mount=",
            "a:/b",
        ]
    ),
    st.text(min_size=1, max_size=8),
)
_LINE = st.one_of(
    st.builds(
        lambda lead, option, sep, words, tail: lead + option + sep + " ".join(words) + tail,
        st.sampled_from(["", " ", "\t", "  \t"]),
        st.sampled_from(_OPTIONS),
        st.sampled_from([" ", "\t", " \t ", ""]),
        st.lists(_VALUE_WORDS, max_size=4),
        st.sampled_from(["", " ", "# note", " #c", "\r", '"']),
    ),
    st.text(max_size=30),
)
# Mostly valid files: each directive once, with a value of its own grammar, plus noise.
_VALID_PAIRS = st.one_of(
    st.tuples(st.sampled_from(["path", "kdump_pre", "sshkey", "extra_bins"]), _VALUE_WORDS),
    st.tuples(
        st.sampled_from(["failure_action", "default"]),
        st.sampled_from(["reboot", "halt", "shell"]),
    ),
    st.tuples(st.just("final_action"), st.sampled_from(["reboot", "halt", "poweroff"])),
    st.tuples(st.sampled_from(["force_rebuild", "force_no_rebuild"]), st.sampled_from(["0", "1"])),
    st.tuples(st.sampled_from(["nfs", "ext4", "virtiofs"]), _VALUE_WORDS),
    st.tuples(st.just("ssh"), st.just("root@10.0.0.1")),
    st.tuples(st.just("core_collector"), st.sampled_from(["makedumpfile -F -d 31", "cp"])),
    st.tuples(st.sampled_from(["dracut_args", "fence_kdump_args"]), _VALUE_WORDS),
    st.tuples(st.just("auto_reset_crashkernel"), _VALUE_WORDS),
)
_MOSTLY_VALID = st.lists(_VALID_PAIRS, max_size=10, unique_by=lambda pair: pair[0]).map(
    lambda pairs: "\n".join(f"{option} {value}" for option, value in pairs)
)
_TEXT = st.one_of(_MOSTLY_VALID, st.lists(_LINE, max_size=12).map("\n".join), st.text(max_size=200))


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_parser_only_ever_raises_config_error(text: str) -> None:
    try:
        parsed = parse_kdump_conf(text)
    except ConfigError as error:
        assert error.problems
        assert all(problem.line >= 1 for problem in error.problems)
        return
    # Whatever parsed renders and parses back to the same configuration.
    assert parse_kdump_conf(render_kdump_conf(parsed.config)).config == parsed.config


_SAFE_WORD = st.text(
    # No quotes, backslashes or slashes: values that split into words and paths stay paths.
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="#\"'\\/\x7f"),
    min_size=1,
    max_size=10,
).filter(lambda word: not any(char.isspace() for char in word))
_PATH = _SAFE_WORD.map(lambda word: "/" + word)
_SAFE_VALUE = st.lists(_SAFE_WORD, min_size=1, max_size=3).map(" ".join)


@st.composite
def _configs(draw: st.DrawFn) -> KdumpConfig:
    kind = draw(st.sampled_from([None, "raw", "ext4", "xfs", "nfs", "ssh", "virtiofs"]))
    target = None
    collector = draw(st.one_of(st.none(), _SAFE_VALUE))
    if kind == "ssh":
        target = DumpTarget("ssh", draw(_SAFE_WORD.filter(lambda w: "@" not in w)) + "@h")
    elif kind is not None:
        target = DumpTarget(kind, draw(_SAFE_WORD))
    if kind in ("ssh", "raw") and collector is not None and "makedumpfile" in collector:
        collector += " -F"
    return KdumpConfig(
        target=target,
        path=draw(_SAFE_WORD),
        core_collector=collector,
        sshkey=draw(_PATH),
        kdump_pre=draw(st.one_of(st.none(), _PATH)),
        extra_bins=tuple(draw(st.lists(_PATH, max_size=3))),
        extra_modules=tuple(draw(st.lists(_SAFE_WORD, max_size=3))),
        failure_action=draw(st.sampled_from(["reboot", "halt", "poweroff", "shell"])),
        final_action=draw(st.sampled_from(["reboot", "halt", "poweroff"])),
        force_rebuild=draw(st.booleans()),
        dracut_args=draw(st.one_of(st.none(), _SAFE_VALUE.filter(lambda v: "--mount" not in v))),
        fence_kdump_nodes=tuple(draw(st.lists(_SAFE_WORD, max_size=3))),
        auto_reset_crashkernel=draw(st.booleans()),
    )


@settings(max_examples=300, deadline=None)
@given(_configs())
def test_render_then_parse_is_identity(config: KdumpConfig) -> None:
    assert parse_kdump_conf(render_kdump_conf(config)).config == config

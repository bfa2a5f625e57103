"""The kdump variables file: shell-subset reader, per-arch defaults, file precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdumpd.config import SysConfig, arch_defaults, canonical_arch, load_sysconfig
from kdumpd.config.sysconfig import VARIABLES, as_variables, parse_assignments
from kdumpd.errors import ConfigError
from kdumpd.paths import Paths
from tests.conftest import write

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "default" / "kdump"

COMMON_REMOVE = (
    "hugepages hugepagesz slub_debug quiet log_buf_len swiotlb hugetlb_cma ignition.firstboot"
)
COMMON_APPEND = "novmcoredd hugetlb_cma=0 kfence.sample_interval=0 initramfs_options=size=90%"


def problems_of(text: str) -> list[tuple[int, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_assignments(text, "/etc/sysconfig/kdump")
    assert all(p.file == "/etc/sysconfig/kdump" for p in caught.value.problems)
    return [(p.line, p.message) for p in caught.value.problems]


# -- the shell subset -----------------------------------------------------------


def test_plain_and_quoted_values() -> None:
    text = "\n".join(
        [
            "A=plain",
            'B="double quoted value"',
            "C='single $NOT expanded'",
            "export D=exported",
            'E=""',
            "F=",
            r"G=back\ slash",
            r'H="say \"hi\" \$HOME \x"',
            "I=a#b  # comment after blank",
            "   J=indented   ",
            'K="multi',
            'line"',
            "L=one\\",
            "two",
            "M=1 N=2; O=3",
        ]
    )
    assert parse_assignments(text, "f") == {
        "A": "plain",
        "B": "double quoted value",
        "C": "single $NOT expanded",
        "D": "exported",
        "E": "",
        "F": "",
        "G": "back slash",
        "H": 'say "hi" $HOME \\x',
        "I": "a#b",
        "J": "indented",
        "K": "multi\nline",
        "L": "onetwo",
        "M": "1",
        "N": "2",
        "O": "3",
    }


def test_comments_blank_lines_and_bare_export_set_nothing() -> None:
    assert parse_assignments("# A=1\n\n   # B=2\nexport C\nexport D E # c\n", "f") == {}


def test_last_assignment_wins() -> None:
    assert parse_assignments("A=1\nA=2\n", "f") == {"A": "2"}


def test_expansion_of_earlier_and_initial_values() -> None:
    text = 'A=x\nB="$A-${A}"\nAPPEND="$APPEND extra"\nC=$UNSET.\nD="cost $ 5"\n'
    values = parse_assignments(text, "f", initial={"APPEND": "base"})
    assert values == {"A": "x", "B": "x-x", "APPEND": "base extra", "C": ".", "D": "cost $ 5"}


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("A=$(uname -r)", "command substitution $(...)"),
        ('A="`uname -r`"', "command substitution (`...`)"),
        ("A=`uname`", "shell character '`'"),
        ("A=${B:-x}", "only $NAME and ${NAME}"),
        ("A=$1", "only $NAME and ${NAME}"),
        ("A=b c", "unquoted blank in the value"),
        ("A=b|c", "shell character '|'"),
        ("echo hello", "cannot parse 'echo hello'"),
        ("if true; then A=1; fi", "cannot parse"),
        ("1A=x", "cannot parse"),
        ("A='open", "unterminated single quote"),
        ('A="open', "unterminated double quote"),
    ],
)
def test_lines_that_need_a_shell_are_problems(line: str, fragment: str) -> None:
    problems = problems_of(f"OK=1\n{line}\n")
    assert problems[0][0] == 2
    assert fragment in problems[0][1]


def test_every_bad_line_is_reported_and_good_lines_still_read() -> None:
    problems = problems_of("A=1\nnonsense here\nB=2\nC=$(x)\nD=3 e\n")
    assert [line for line, _ in problems] == [2, 4, 5]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_reader_only_ever_raises_config_error(text: str) -> None:
    try:
        values = parse_assignments(text, "f")
    except ConfigError as error:
        assert all(problem.line >= 1 for problem in error.problems)
    else:
        assert all(isinstance(v, str) for v in values.values())


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
        st.text(max_size=20),
        max_size=5,
    )
)
def test_single_quoting_round_trips_any_value(values: dict[str, str]) -> None:
    def quote(value: str) -> str:
        return "'" + value.replace("'", "'\\''") + "'"

    text = "\n".join(f"{name}={quote(value)}" for name, value in values.items())
    assert parse_assignments(text, "f") == values


# -- per-architecture defaults (§2.1) ----------------------------------------------


def test_x86_64_defaults() -> None:
    config = arch_defaults("x86_64")
    assert config.commandline_remove == f"{COMMON_REMOVE} cma"
    assert config.commandline_append == (
        f"{COMMON_APPEND} irqpoll nr_cpus=1 reset_devices cgroup_disable=memory mce=off numa=off "
        "udev.children-max=2 panic=10 acpi_no_memhotplug transparent_hugepage=never nokaslr "
        "hest_disable cma=0 pcie_ports=compat"
    )
    assert config.kexec_args == "-s"
    assert (config.kernelver, config.commandline, config.bootdir) == ("", "", "")
    assert (config.img, config.img_ext) == ("vmlinuz", "")
    assert config.fadump_commandline_append == ""
    assert config.vmcore_creation_notification is True
    assert (config.stdloglvl, config.sysloglvl, config.kmsgloglvl) == (3, 0, 0)
    assert config.source is None


@pytest.mark.parametrize(
    "arch, remove_tail, append_tail, kexec_args",
    [
        (
            "aarch64",
            " cma",
            "irqpoll nr_cpus=1 reset_devices cgroup_disable=memory udev.children-max=2 "
            "panic=10 swiotlb=noforce cma=0",
            "-s",
        ),
        (
            "ppc64le",
            "",
            "irqpoll nr_cpus=16 noirqdistrib reset_devices cgroup_disable=memory numa=off "
            "udev.children-max=2 ehea.use_mcs=0 panic=10 kvm_cma_resv_ratio=0 "
            "transparent_hugepage=never",
            "-s",
        ),
        (
            "ppc64",
            "",
            "irqpoll maxcpus=1 noirqdistrib reset_devices cgroup_disable=memory numa=off "
            "udev.children-max=2 ehea.use_mcs=0 panic=10 kvm_cma_resv_ratio=0 "
            "transparent_hugepage=never",
            "--dt-no-old-root",
        ),
        (
            "s390x",
            " vmcp_cma cma prot_virt zfcp.allow_lun_scan",
            "nr_cpus=1 cgroup_disable=memory numa=off udev.children-max=2 panic=10 "
            "transparent_hugepage=never vmcp_cma=0 cma=0",
            "-s",
        ),
        (
            "i386",
            " cma",
            "irqpoll nr_cpus=1 reset_devices numa=off udev.children-max=2 panic=10 "
            "transparent_hugepage=never cma=0",
            "",
        ),
        ("riscv64", " cma", "irqpoll maxcpus=1 reset_devices cma=0", ""),
    ],
)
def test_other_arch_defaults(
    arch: str, remove_tail: str, append_tail: str, kexec_args: str
) -> None:
    config = arch_defaults(arch)
    assert config.commandline_remove == COMMON_REMOVE + remove_tail
    assert config.commandline_append == f"{COMMON_APPEND} {append_tail}"
    assert config.kexec_args == kexec_args


def test_fadump_append_only_on_ppc64le() -> None:
    assert arch_defaults("ppc64le").fadump_commandline_append == (
        "nr_cpus=16 numa=off cgroup_disable=memory cma=0 kvm_cma_resv_ratio=0 hugetlb_cma=0 "
        "transparent_hugepage=never novmcoredd udev.children-max=2"
    )
    assert arch_defaults("ppc64").fadump_commandline_append == ""


@pytest.mark.parametrize(
    "alias, name",
    [("amd64", "x86_64"), ("arm64", "aarch64"), ("ppc64el", "ppc64le"), ("i686", "i386")],
)
def test_debian_and_uname_spellings(alias: str, name: str) -> None:
    assert canonical_arch(alias) == name
    assert arch_defaults(alias) == arch_defaults(name)


# -- loading -------------------------------------------------------------------------


def test_no_file_gives_defaults(fake_root: Paths) -> None:
    assert load_sysconfig(fake_root, "x86_64") == (arch_defaults("x86_64"), ())


def test_debian_file_overlays_defaults(fake_root: Paths) -> None:
    write(
        fake_root.default_kdump,
        'KDUMP_COMMANDLINE_APPEND="$KDUMP_COMMANDLINE_APPEND nr_cpus=2"\n'
        "KDUMP_STDLOGLVL=4\nVMCORE_CREATION_NOTIFICATION=no\nKDUMP_BOOTDIR=/boot\n",
    )
    config, warnings = load_sysconfig(fake_root, "x86_64")
    defaults = arch_defaults("x86_64")
    assert warnings == ()
    assert config.source == "/etc/default/kdump"
    assert config.commandline_append == defaults.commandline_append + " nr_cpus=2"
    assert config.stdloglvl == 4
    assert config.vmcore_creation_notification is False
    assert config.bootdir == "/boot"
    # Unset variables keep the arch default.
    assert config.commandline_remove == defaults.commandline_remove
    assert config.kexec_args == "-s"


def test_sysconfig_wins_and_the_other_file_is_named(fake_root: Paths) -> None:
    write(fake_root.sysconfig_kdump, 'KEXEC_ARGS=""\n')
    write(fake_root.default_kdump, 'KEXEC_ARGS="-d"\n')
    config, warnings = load_sysconfig(fake_root, "x86_64")
    assert config.source == "/etc/sysconfig/kdump"
    assert config.kexec_args == ""
    assert len(warnings) == 1
    assert warnings[0].file == "/etc/default/kdump"
    assert "/etc/sysconfig/kdump" in warnings[0].message


def test_unknown_variable_is_a_warning_with_its_line(fake_root: Paths) -> None:
    write(fake_root.sysconfig_kdump, "KDUMP_IMG=vmlinux\nUSE_KDUMP=1\n")
    config, warnings = load_sysconfig(fake_root, "aarch64")
    assert config.img == "vmlinux"
    assert [(w.file, w.line) for w in warnings] == [("/etc/sysconfig/kdump", 2)]
    assert "USE_KDUMP" in warnings[0].message


@pytest.mark.parametrize("value", ["5", "-1", "debug", ""])
def test_bad_log_level_is_an_error(fake_root: Paths, value: str) -> None:
    write(fake_root.sysconfig_kdump, f"A_OK=1\nKDUMP_SYSLOGLVL={value}\n")
    with pytest.raises(ConfigError) as caught:
        load_sysconfig(fake_root, "x86_64")
    problem = caught.value.problems[0]
    assert (problem.file, problem.line) == ("/etc/sysconfig/kdump", 2)
    assert "KDUMP_SYSLOGLVL" in problem.message


def test_unparseable_file_is_an_error_with_location(fake_root: Paths) -> None:
    write(fake_root.default_kdump, "KDUMP_IMG=vmlinuz\nKDUMP_KERNELVER=$(uname -r)\n")
    with pytest.raises(ConfigError) as caught:
        load_sysconfig(fake_root, "x86_64")
    assert str(caught.value).startswith("/etc/default/kdump:2: command substitution")


def test_shipped_debian_file_gives_the_defaults(fake_root: Paths) -> None:
    write(fake_root.default_kdump, SHIPPED.read_text())
    config, warnings = load_sysconfig(fake_root, "x86_64")
    assert warnings == ()
    assert config == SysConfig(
        **{**arch_defaults("x86_64").__dict__, "source": "/etc/default/kdump"}
    )


def test_shipped_debian_file_documents_every_variable_with_x86_64_default() -> None:
    text = SHIPPED.read_text()
    commented = "\n".join(
        line[1:] for line in text.splitlines() if line.startswith("#") and "=" in line
    )
    documented = parse_assignments(
        "\n".join(line for line in commented.splitlines() if line.split("=")[0] in VARIABLES),
        "shipped",
    )
    expected = as_variables(arch_defaults("x86_64"))
    assert set(documented) == set(VARIABLES)
    for name, value in documented.items():
        if name == "KDUMP_BOOTDIR":
            continue  # documented as the usual choice; empty means "search the list"
        assert value == expected[name], name

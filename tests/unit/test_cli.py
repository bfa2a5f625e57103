"""kdumpctl: exit codes, kdump-utils style lines and --json documents, over fake trees."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kdumpd import cli, proc
from kdumpd.paths import Paths
from tests.conftest import install_collector, write

MIB = 1024 * 1024
X86 = os.uname_result(("Linux", "host", "6.1.0-28-amd64", "#1 SMP", "x86_64"))
ARM64K = os.uname_result(("Linux", "host", "6.1.0-28-arm64+64k", "#1 SMP", "aarch64"))
PPC = os.uname_result(("Linux", "host", "6.1.0-28-powerpc64le", "#1 SMP", "ppc64le"))

SEV_LOG = "kernel: Memory Encryption Features active: AMD SEV SEV-ES\n"
NO_TEST = "kdump: WARNING: No vmcore creation test performed!"
IOMEM_4G = "00001000-0009ffff : System RAM\n00100000-ffffffff : System RAM\n"


def run(
    capsys: pytest.CaptureFixture[str], root: Paths, *argv: str, uname: Any = X86
) -> tuple[int, str, list[str]]:
    """kdumpctl --root <tree> argv...: (exit code, stdout, stderr lines)."""
    code = cli.main(["--root", str(root.root), *argv], uname=uname)
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def kdump_tree(paths: Paths, *, loaded: str | None = "1", size: int = 256 * MIB) -> Paths:
    if loaded is not None:
        write(paths.kexec_crash_loaded, loaded + "\n")
    write(paths.kexec_crash_size, f"{size}\n")
    return paths


def make_elf(memsz: list[int]) -> bytes:
    """A minimal little-endian ELF64 with one PT_LOAD per memsz."""
    header = b"\x7fELF\x02\x01\x01" + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, len(memsz), 0, 0, 0)
    phdrs = b"".join(struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, 0, m, 4096) for m in memsz)
    return header + phdrs


# -- status ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loaded", "size", "reason"),
    [
        (None, 0, "Kdump is not supported on this kernel"),
        ("0", 0, "No memory reserved for crash kernel"),
        ("0", 256 * MIB, "capture kernel not loaded"),
    ],
)
def test_status_not_operational(
    capsys: pytest.CaptureFixture[str],
    fake_root: Paths,
    loaded: str | None,
    size: int,
    reason: str,
) -> None:
    kdump_tree(fake_root, loaded=loaded, size=size)
    code, out, err = run(capsys, fake_root, "status")
    assert code == 3
    assert out == ""
    assert err == [f"kdump: {reason}", "kdump: Kdump is not operational", NO_TEST]


def test_status_operational(capsys: pytest.CaptureFixture[str], fake_root: Paths) -> None:
    kdump_tree(fake_root, loaded="1")
    code, out, err = run(capsys, fake_root, "status")
    assert (code, out, err) == (0, "", ["kdump: Kdump is operational", NO_TEST])


def test_status_json(capsys: pytest.CaptureFixture[str], fake_root: Paths) -> None:
    kdump_tree(fake_root, loaded="0")
    code, out, err = run(capsys, fake_root, "status", "--json")
    document = json.loads(out)
    assert code == 3 and err == []
    assert document["schema_version"] == 1
    assert document["operational"] is False
    assert document["reason"] == "capture kernel not loaded"
    assert document["reserved_bytes"] == 256 * MIB
    assert document["loaded"] is False
    assert document["mode"] == "kdump"
    assert document["last_test"]["state"] == "none"


# -- showmem ----------------------------------------------------------------------------


def test_showmem(capsys: pytest.CaptureFixture[str], fake_root: Paths) -> None:
    kdump_tree(fake_root, size=320 * MIB + 4096)
    code, out, err = run(capsys, fake_root, "showmem")
    assert (code, out, err) == (0, "", ["kdump: Reserved 320MB memory for crash kernel"])
    code, out, _ = run(capsys, fake_root, "--json", "showmem")
    assert json.loads(out)["reserved_bytes"] == 320 * MIB + 4096


# -- get-default-crashkernel ----------------------------------------------------------


def test_default_crashkernel_x86_64(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, programs: Any
) -> None:
    programs.expect("journalctl", stdout="kernel: Linux version 6.1.0\n")
    code, out, err = run(capsys, fake_root, "get-default-crashkernel")
    assert (code, out, err) == (0, "2G-64G:256M,64G-:512M", [])


def test_default_crashkernel_x86_64_sev_guest(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, programs: Any
) -> None:
    programs.expect("journalctl", stdout=SEV_LOG)
    code, out, _ = run(capsys, fake_root, "get-default-crashkernel")
    assert (code, out) == (0, "2G-64G:320M,64G-:576M")
    # The journal of the tree is read, not this machine's.
    assert programs.calls[0][:3] == ("journalctl", "--root", str(fake_root.root))


def test_default_crashkernel_x86_64_without_any_log_reader(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, programs: Any
) -> None:
    programs.expect("journalctl", returncode=1, stderr="No journal files were found.")
    code, out, _ = run(capsys, fake_root, "get-default-crashkernel")
    assert (code, out) == (0, "2G-64G:256M,64G-:512M")


def test_default_crashkernel_aarch64_64k_with_smmu(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    (fake_root.sys_platform / "arm-smmu-v3.0.auto").mkdir(parents=True)
    # No program is expected: the stub fails the test if the kernel log were read.
    code, out, _ = run(capsys, fake_root, "get-default-crashkernel", uname=ARM64K)
    assert (code, out) == (0, "2G-4G:740M,4G-64G:804M,64G-:1060M")


def test_default_crashkernel_aarch64_kernelver_decides_page_size(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    write(fake_root.default_kdump, 'KDUMP_KERNELVER="6.1.0-28-arm64"\n')
    code, out, _ = run(capsys, fake_root, "get-default-crashkernel", uname=ARM64K)
    assert (code, out) == (0, "2G-4G:256M,4G-64G:320M,64G-:576M")


def test_default_crashkernel_ppc64le_counts_capture_cpus(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    code, out, _ = run(capsys, fake_root, "get-default-crashkernel", uname=PPC)
    assert out == "2G-4G:400M,4G-16G:528M,16G-64G:1040M,64G-128G:2064M,128G-:4112M"
    code, out, _ = run(capsys, fake_root, "--json", "get-default-crashkernel", "fadump", uname=PPC)
    document = json.loads(out)
    assert document["mode"] == "fadump"
    assert document["crashkernel"].startswith("4G-16G:784M,")


def test_default_crashkernel_rejects_unknown_mode(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    code, out, err = run(capsys, fake_root, "get-default-crashkernel", "kexec")
    assert code == 1 and out == ""
    assert "unknown dump mode 'kexec'" in err[0]


# -- estimate ---------------------------------------------------------------------------


def estimate_tree(paths: Paths) -> Paths:
    kdump_tree(paths, size=192 * MIB)
    write(paths.proc_iomem, IOMEM_4G)
    write(
        paths.proc_modules,
        "ext4 2097152 1 - Live 0x0\ncrc16 16384 1 ext4, Live 0x0\nnvidia 62914560 0 - Live 0x0\n",
    )
    # A bzImage: setup code, then a gzip-compressed vmlinux, then padding.
    vmlinux = make_elf([40 * MIB, 5 * MIB])
    image = b"MZ" + bytes(1000) + gzip.compress(vmlinux) + bytes(100)
    kernel = paths.boot / "vmlinuz-6.1.0-28-amd64"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(image)
    return paths


def test_estimate_with_built_image(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, tmp_path: Path, programs: Any
) -> None:
    programs.expect("journalctl", stdout="")
    estimate_tree(fake_root)
    initrd = tmp_path / "initramfs-kdump.img"
    with initrd.open("wb") as handle:
        handle.truncate(30 * MIB)
    modules = write(tmp_path / "hostonly-kernel-modules.txt", "ext4\ncrc16\nxfs\n")
    code, out, err = run(
        capsys, fake_root, "estimate", "--initrd", str(initrd), "--modules-list", str(modules)
    )
    assert code == 0 and err == []
    # 45M kernel + 2M modules + 3 x 30M initramfs + 16M runtime = 153M: the 256M baseline wins
    assert out.splitlines() == [
        "Reserved crashkernel:    192M",
        "Recommended crashkernel: 256M",
        "",
        "Kernel image size:   45M",
        "Kernel modules size: 2M",
        "Initramfs size:      30M",
        "Runtime reservation: 16M",
        "Large modules:",
        "    ext4: 2097152",
        "WARNING: Current crashkernel size is lower than recommended size 256M.",
    ]


def test_estimate_big_initramfs_exceeds_baseline(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, tmp_path: Path, programs: Any
) -> None:
    programs.expect("journalctl", stdout="")
    estimate_tree(fake_root)
    initrd = tmp_path / "initramfs-kdump.img"
    with initrd.open("wb") as handle:
        handle.truncate(80 * MIB)
    modules = write(tmp_path / "modules.txt", "crc16\n")
    code, out, _ = run(
        capsys,
        fake_root,
        "--json",
        "estimate",
        "--initrd",
        str(initrd),
        "--modules-list",
        str(modules),
    )
    document = json.loads(out)
    assert code == 0
    assert document["kernel_image_bytes"] == 45 * MIB
    assert document["kernel_image_source"] == "gzip"
    assert document["kernel_modules_bytes"] == 16384
    assert document["recommended_bytes"] == 45 * MIB + 16384 + 240 * MIB + 16 * MIB
    assert document["too_small"] is True
    assert document["image_built"] is True
    assert document["large_modules"] == {}


def test_estimate_without_image_notes_zero(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, programs: Any
) -> None:
    programs.expect("journalctl", stdout="")
    estimate_tree(fake_root)
    code, out, err = run(capsys, fake_root, "estimate")
    assert code == 0
    assert "Kernel modules size: 0M" in out.splitlines()
    assert "Initramfs size:      0M" in out.splitlines()
    assert any("not built yet" in line and line.startswith("kdump: Note:") for line in err)
    code, out, _ = run(capsys, fake_root, "estimate", "--json")
    document = json.loads(out)
    assert document["image_built"] is False
    assert document["initramfs_bytes"] == 0
    assert any("not built yet" in note for note in document["notes"])


def test_estimate_on_arch_without_default_table(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    estimate_tree(fake_root)
    riscv = os.uname_result(("Linux", "host", "6.1.0-28-amd64", "#1 SMP", "riscv64"))
    code, out, err = run(capsys, fake_root, "estimate", uname=riscv)
    assert code == 0
    # Without a baseline the estimate alone decides: 45M kernel + 16M runtime.
    assert out.splitlines()[1] == "Recommended crashkernel: 61M"
    assert any(line.startswith("kdump: Note: no baseline: ") for line in err)


# -- check-config -----------------------------------------------------------------------


def test_check_config_valid(capsys: pytest.CaptureFixture[str], fake_root: Paths) -> None:
    install_collector(fake_root)
    write(fake_root.kdump_conf, "path /var/crash\ncore_collector makedumpfile -l -d 31\n")
    fake_root.var_crash.mkdir(parents=True)
    code, out, err = run(capsys, fake_root, "check-config")
    assert (code, out, err) == (0, "", [])


def test_check_config_warnings_keep_it_valid(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    install_collector(fake_root)
    write(fake_root.kdump_conf, "sshkey /root/.ssh/missing\n")
    write(fake_root.default_kdump, "# variables\nFOO=1\n")
    fake_root.var_crash.mkdir(parents=True)
    code, _, err = run(capsys, fake_root, "check-config")
    assert code == 0
    assert len(err) == 2
    assert err[0].startswith("kdump: WARNING: /etc/kdump.conf:1: ")
    assert err[1].startswith("kdump: WARNING: /etc/default/kdump:2: unknown variable FOO")
    code, out, _ = run(capsys, fake_root, "check-config", "--json")
    document = json.loads(out)
    assert document["valid"] is True and document["errors"] == []
    assert [(w["file"], w["line"]) for w in document["warnings"]] == [
        ("/etc/kdump.conf", 1),
        ("/etc/default/kdump", 2),
    ]


def test_check_config_invalid(capsys: pytest.CaptureFixture[str], fake_root: Paths) -> None:
    write(fake_root.kdump_conf, "path /var/crash\nfailure_action explode\n")
    fake_root.var_crash.mkdir(parents=True)
    code, _, err = run(capsys, fake_root, "check-config")
    assert code == 1
    assert err == [
        "kdump: /etc/kdump.conf:2: Usage kdump.conf: failure_action "
        "{reboot|halt|poweroff|shell|dump_to_rootfs}"
    ]


def test_check_config_reports_every_problem_of_both_files(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    write(fake_root.kdump_conf, "bogus_option 1\n\nfailure_action explode\n")
    write(fake_root.default_kdump, "KDUMP_STDLOGLVL=9\nFOO=1\n")
    code, out, err = run(capsys, fake_root, "--json", "check-config")
    document = json.loads(out)
    assert code == 1 and err == []
    assert document["valid"] is False
    located = [(e["file"], e["line"]) for e in document["errors"]]
    assert located == [
        ("/etc/kdump.conf", 1),
        ("/etc/kdump.conf", 3),
        ("/etc/default/kdump", 1),
    ]
    assert all(set(e) == {"file", "line", "message"} for e in document["errors"])


def test_check_config_host_checks_use_root(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    install_collector(fake_root)
    write(fake_root.kdump_conf, "path /srv/dumps\n")
    code, _, err = run(capsys, fake_root, "check-config")
    assert code == 1
    assert err[0].startswith("kdump: /etc/kdump.conf:1: Dump path /srv/dumps does not exist")
    (fake_root.root / "srv" / "dumps").mkdir(parents=True)
    code, _, err = run(capsys, fake_root, "check-config")
    assert (code, err) == (0, [])


def test_check_config_other_file(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, tmp_path: Path
) -> None:
    install_collector(fake_root)
    write(fake_root.kdump_conf, "failure_action explode\n")
    fake_root.var_crash.mkdir(parents=True)
    candidate = write(tmp_path / "candidate.conf", "final_action poweroff\n")
    code, _, err = run(capsys, fake_root, "check-config", "--config", str(candidate))
    assert (code, err) == (0, [])
    write(candidate, "\n\nfinal_action explode\n")
    code, _, err = run(capsys, fake_root, "check-config", "--config", str(candidate))
    assert code == 1
    assert err[0].startswith(f"kdump: {candidate}:3: ")


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str], fake_root: Paths) -> None:
    code, _, err = run(capsys, fake_root, "check-config")
    assert code == 1
    assert "No kdump config file found" in err[0]


# -- usage, dispatch, errors ---------------------------------------------------------


def test_unknown_command_prints_usage(capsys: pytest.CaptureFixture[str], fake_root: Paths) -> None:
    code, out, err = run(capsys, fake_root, "frobnicate")
    assert code == 1 and out == ""
    assert err == [f"kdump: {cli.USAGE}"]
    assert err[0].startswith("kdump: Usage: kdumpctl {estimate|start|stop|status|")
    assert cli.main([], uname=X86) == 1


def test_bad_option_of_a_command_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    code, _, err = run(capsys, fake_root, "check-config", "--frob")
    assert code == 2
    assert "unrecognized arguments: --frob" in err[0]


def test_setup_crypttab_is_not_offered(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    # LUKS targets are not supported: the command is neither in the usage line nor accepted.
    code, out, err = run(capsys, fake_root, "setup-crypttab")
    assert (code, out) == (1, "")
    assert err == [f"kdump: {cli.USAGE}"]
    assert "setup-crypttab" not in cli.USAGE
    assert "setup-crypttab" not in cli.build_parser().format_help()


def test_propagate_needs_an_ssh_target(
    capsys: pytest.CaptureFixture[str], fake_root: Paths
) -> None:
    write(fake_root.kdump_conf, "path /var/crash\n")
    code, out, err = run(capsys, fake_root, "propagate")
    assert (code, out) == (1, "")
    assert err[0] == "kdump: No ssh destination defined in /etc/kdump.conf."


def test_propagate_makes_the_key_and_copies_it(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, programs: Any
) -> None:
    write(fake_root.kdump_conf, "ssh root@192.0.2.7\ncore_collector makedumpfile -F -d 31\n")

    def keygen(argv: Sequence[str]) -> proc.Completed:
        key = Path(argv[argv.index("-f") + 1])
        key.write_text("private\n")
        key.with_suffix(".pub").write_text("ssh-rsa AAAA test\n")
        return proc.Completed(tuple(argv), 0, "", "")

    programs.expect_call("ssh-keygen", keygen)
    programs.expect("ssh-copy-id")
    code, _, err = run(capsys, fake_root, "propagate")
    assert code == 0, err
    assert err == [
        "kdump: Generating new ssh keys... ",
        "kdump: done.",
        "kdump: /root/.ssh/kdump_id_rsa has been added to ~root/.ssh/authorized_keys "
        "on 192.0.2.7",
    ]
    copy = programs.calls[-1]
    assert copy[0] == "ssh-copy-id"
    assert copy[-1] == "root@192.0.2.7"
    assert fake_root.under_root("/root/.ssh/kdump_id_rsa").read_text() == "private\n"


@pytest.fixture
def fake_manager(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Paths]]:
    """Stand-ins for kdumpd.manager's start and reload that record calls."""
    calls: list[tuple[str, Paths]] = []

    def start(paths: Paths, messages: Any) -> None:
        calls.append(("start", paths))
        messages.info("Starting kdump: [OK]")

    def reload(paths: Paths, messages: Any) -> None:
        from kdumpd.errors import KdumpError

        raise KdumpError("kexec: failed to load kdump kernel")

    monkeypatch.setitem(cli.MANAGER_COMMANDS, "start", start)
    monkeypatch.setitem(cli.MANAGER_COMMANDS, "reload", reload)
    return calls


def test_manager_commands_dispatch(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, fake_manager: list[tuple[str, Paths]]
) -> None:
    code, _, err = run(capsys, fake_root, "start")
    assert (code, err) == (0, ["kdump: Starting kdump: [OK]"])
    assert fake_manager == [("start", Paths(root=fake_root.root))]
    code, out, _ = run(capsys, fake_root, "start", "--json")
    document = json.loads(out)
    assert document["ok"] is True
    assert document["messages"] == [{"level": "info", "text": "Starting kdump: [OK]"}]


def test_manager_failure(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, fake_manager: list[tuple[str, Paths]]
) -> None:
    code, _, err = run(capsys, fake_root, "reload")
    assert (code, err) == (1, ["kdump: kexec: failed to load kdump kernel"])
    code, out, _ = run(capsys, fake_root, "--json", "reload")
    assert json.loads(out)["error"] == {
        "message": "kexec: failed to load kdump kernel",
        "exit_code": 1,
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["showmem"],
        ["get-default-crashkernel"],
        ["estimate"],
        ["check-config"],
        ["propagate"],
        ["frobnicate"],
        ["check-config", "--frob"],
    ],
)
def test_every_json_document_has_schema_version(
    capsys: pytest.CaptureFixture[str], fake_root: Paths, programs: Any, argv: list[str]
) -> None:
    programs.expect("journalctl", stdout="")
    estimate_tree(fake_root)
    write(fake_root.kdump_conf, "")
    code, out, err = run(capsys, fake_root, "--json", *argv)
    document = json.loads(out)
    assert document["schema_version"] == 1
    assert err == []
    if code not in (0, 3) and "valid" not in document:
        assert document["error"]["exit_code"] == code


# -- the installed console script ----------------------------------------------------


@pytest.mark.integration
def test_console_script_runs_on_a_tree(fake_root: Paths) -> None:
    kdump_tree(fake_root, loaded="0")
    script = Path(sys.executable).parent / "kdumpctl"
    done = subprocess.run(
        [str(script), "--root", str(fake_root.root), "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        "kdump: capture kernel not loaded",
        "kdump: Kdump is not operational",
        NO_TEST,
    ]
    done = subprocess.run(
        [str(script), "showmem", "--json", "--root", str(fake_root.root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert json.loads(done.stdout)["reserved_bytes"] == 256 * MIB

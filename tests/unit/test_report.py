"""Crash triage from a kernel log."""

from __future__ import annotations

from kdumpd.postcrash.report import triage

SYSRQ_LOG = """\
[  480.000000] systemd[1]: Started something.
[  483.224885] sysrq: Trigger a crash
[  483.226586] Kernel panic - not syncing: sysrq triggered crash
[  483.226920] CPU: 0 PID: 3856 Comm: sh Kdump: loaded Not tainted 6.1.0-50-amd64 #1  Debian
[  483.227207] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2 04/01/2014
[  483.227515] Call Trace:
[  483.228064]  <TASK>
[  483.228548]  dump_stack_lvl+0x44/0x5c
[  483.229088]  panic+0x118/0x2f4
[  483.229176]  ? _printk+0x68/0x83
[  483.229263]  sysrq_handle_crash+0x16/0x20
[  483.229405]  __handle_sysrq.cold+0x44/0x11c
[  483.229514]  write_sysrq_trigger+0x24/0x40
[  483.231529] RIP: 0033:0x7fa678ad1350
[  483.231600]  </TASK>
"""


def test_sysrq_panic_gives_cause_task_release_and_reliable_frames() -> None:
    report = triage(SYSRQ_LOG)
    assert report.cause == "Kernel panic - not syncing: sysrq triggered crash"
    assert report.kernel_release == "6.1.0-50-amd64"
    assert report.task == "sh (pid 3856, cpu 0)"
    assert report.call_trace == (
        "dump_stack_lvl+0x44/0x5c",
        "panic+0x118/0x2f4",
        "sysrq_handle_crash+0x16/0x20",
        "__handle_sysrq.cold+0x44/0x11c",
        "write_sysrq_trigger+0x24/0x40",
    )
    text = report.to_text()
    assert "sysrq triggered crash" in text and "  panic+0x118/0x2f4" in text


def test_last_panic_wins_and_oops_is_found_without_panic() -> None:
    two = SYSRQ_LOG.replace("sysrq triggered crash", "first") + SYSRQ_LOG
    assert triage(two).cause == "Kernel panic - not syncing: sysrq triggered crash"
    oops = "<1>[   5.1] BUG: kernel NULL pointer dereference, address: 0000000000000000\n"
    assert triage(oops).cause == "BUG: kernel NULL pointer dereference, address: 0000000000000000"


def test_log_without_crash_says_unknown() -> None:
    report = triage("[    0.0] Linux version 6.1.0\n")
    assert report.cause is None and report.call_trace == ()
    assert "unknown (no panic or oops line in the log)" in report.to_text()
    assert report.to_json()["call_trace"] == []

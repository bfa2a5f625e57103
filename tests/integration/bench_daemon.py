"""Figures of the daemon (run by hand): idle RSS, idle wakeups, config write to re-armed.

    .cache/venv/bin/python -m tests.integration.bench_daemon

Runs kdumpd against a fake tree on a private bus (tests/support/daemon_env:
dracut is a stand-in that writes the image at once, so the time measured is
kdumpd's own: debounce, validation, manifest, plan, load). Prints figures; asserts nothing.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.support.daemon_env import GOOD_CONF, cleanup, start_bus

IDLE_S = 10.0
EDITS = 5


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _switches(pid: int) -> int:
    status = _status(pid)
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        task_status = (task / "status").read_text().splitlines()
        for line in task_status:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split(":")[1])
    del status
    return total


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    env = start_bus()
    try:
        env.start_daemon()
        env.wait_for("READY=1")
        assert env.daemon is not None
        pid = env.daemon.pid
        time.sleep(1.0)
        before = _switches(pid)
        time.sleep(IDLE_S)
        wakeups = _switches(pid) - before
        status = _status(pid)
        print(f"idle RSS: {status['VmRSS']} (threads: {status['Threads']})")
        print(f"idle context switches over {IDLE_S:.0f} s (all threads): {wakeups}")
        conf = env.root / "etc/kdump.conf"
        walls: list[float] = []
        cpus: list[float] = []
        for index in range(EDITS):
            text = GOOD_CONF.replace("-d 31", f"-d {index + 1}")
            cpu0 = _cpu_seconds(pid)
            start = time.monotonic()
            temp = conf.with_name("kdump.conf.new")
            temp.write_text(text)
            os.replace(temp, conf)
            env.wait_for("READY=1")
            walls.append(time.monotonic() - start)
            cpus.append(_cpu_seconds(pid) - cpu0)
        print(
            "config write -> re-armed (wall, includes the 250 ms settle): "
            + ", ".join(f"{w:.2f}" for w in walls)
            + " s"
        )
        print("kdumpd CPU time per re-arm: " + ", ".join(f"{c:.2f}" for c in cpus) + " s")
        # a start that finds the image current (the usual boot) never loads jinja2
        env.daemon.send_signal(signal.SIGTERM)
        env.daemon.wait(timeout=60)
        env.start_daemon()
        env.wait_for("READY=1")
        time.sleep(1.0)
        print(f"idle RSS after a start with a current image: {_status(env.daemon.pid)['VmRSS']}")
    finally:
        cleanup(env)


if __name__ == "__main__":
    main()

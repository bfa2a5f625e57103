"""Without the shipped policy (an open bus), the daemon itself still refuses non-root Stop."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.daemon_env import OPEN_POLICY, WAIT_S, cleanup, start_bus, write

pytestmark = pytest.mark.integration

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_the_daemon_refuses_arming_calls_from_non_root(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    policy = write(tmp_path_factory.mktemp("policy") / "open.conf", OPEN_POLICY)
    env = start_bus(policy=policy)
    try:
        env.start_daemon()
        env.wait_for("READY=1")
        stop = subprocess.run(
            [*NOBODY, "dbus-send", "--system", "--print-reply", "--dest=org.kdumpd1",
             "/org/kdumpd1", "org.kdumpd1.Manager.Stop"],
            env=env.env(), capture_output=True, text=True, timeout=WAIT_S, check=False,
        )  # fmt: skip
        assert stop.returncode != 0
        assert "org.kdumpd1.Error.AccessDenied" in stop.stderr, stop.stderr
        assert (env.root / "sys/kernel/kexec_crash_loaded").read_text() == "1\n"
    finally:
        cleanup(env)

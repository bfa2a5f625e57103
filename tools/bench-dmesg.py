#!/usr/bin/env python3
"""Prints how long kernel log extraction takes: kdumpd's reader versus makedumpfile.

    tools/bench-dmesg.py DUMP [--runs N]

DUMP is a saved dump (kdump-compressed, flattened or ELF), e.g. the vmcore the
local-capture VM scenario copies to .cache/vm/artifacts/test_local_default_path/.
Measured: kdumpd's reader in-process (open, find the ring buffer, decode, format),
``kdumpctl dmesg`` as a fresh process (interpreter start included), and
``makedumpfile --dump-dmesg``. Prints the median and range of the wall time and
the median CPU time of each, and whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdumpd import proc  # noqa: E402
from kdumpd.vmcore.dump import open_dump  # noqa: E402
from kdumpd.vmcore.printk import read_kernel_log  # noqa: E402


def _cpu() -> float:
    """CPU seconds of this process and its finished children (wall time alone is
    misleading on a shared, loaded machine)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(runs: int, action: Callable[[], str]) -> tuple[list[float], list[float], str]:
    walls: list[float] = []
    cpus: list[float] = []
    output = ""
    for _ in range(runs):
        start, cpu = time.perf_counter(), _cpu()
        output = action()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return walls, cpus, output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    dump_path: Path = args.dump

    def ours() -> str:
        with open_dump(dump_path) as dump:
            return read_kernel_log(dump).text()

    def ours_cli() -> str:
        argv = [sys.executable, "-m", "kdumpd.cli", "dmesg", str(dump_path)]
        return proc.run(argv, timeout=600, cwd=str(REPO)).stdout

    def makedumpfile() -> str:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "dmesg.txt"
            proc.run(["makedumpfile", "--dump-dmesg", str(dump_path), str(out)], timeout=600)
            return out.read_text(errors="replace")

    with open_dump(dump_path) as dump:
        kind = dump.format + (f" ({dump.compression})" if dump.compression else "")
        log = read_kernel_log(dump)
    size = dump_path.stat().st_size
    print(
        f"dump: {dump_path} ({size / 2**20:.1f} MiB, {kind}, {log.layout}, "
        f"{len(log.records)} records), {args.runs} runs each"
    )
    results = {}
    for name, action in (
        ("kdumpd reader (in-process)", ours),
        ("kdumpctl dmesg (new process)", ours_cli),
        ("makedumpfile --dump-dmesg", makedumpfile),
    ):
        walls, cpus, output = timed(args.runs, action)
        results[name] = output
        print(
            f"  {name:30} wall median {statistics.median(walls) * 1000:7.1f} ms "
            f"(min {min(walls) * 1000:.1f}, max {max(walls) * 1000:.1f}); "
            f"CPU median {statistics.median(cpus) * 1000:7.1f} ms"
        )
    texts = set(results.values())
    print(f"  outputs identical: {len(texts) == 1}")
    return 0 if len(texts) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/bin/bash
# The test command: prepares the host (tools/setup-host.sh), then runs the linters
# and every test, VM scenarios included. Exits non-zero on the first failing stage.
#   KDUMPD_TESTS="tests/unit" tools/run-tests.sh   runs a subset
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash tools/setup-host.sh
venv=.cache/venv/bin

echo "== ruff"
"$venv/ruff" check kdumpd tests tools
echo "== mypy --strict (package and tests)"
"$venv/mypy" --strict kdumpd tests
echo "== import layers"
"$venv/python" -m tests.support.layers kdumpd
pytest=("$venv/python" -m pytest -p no:cacheprovider -ra)
if [[ -n "${KDUMPD_TESTS:-}" ]]; then
    echo "== pytest $KDUMPD_TESTS"
    # shellcheck disable=SC2086
    exec "${pytest[@]}" $KDUMPD_TESTS
fi

echo "== pytest: unit and integration"
"${pytest[@]}" tests/unit tests/integration

echo "== pytest: VM scenarios"
# Built once here, not per pytest-xdist worker: both workers would write .cache/deb.
KDUMPD_DEB=$(bash tools/build-deb.sh)
export KDUMPD_DEB
"$venv/python" tests/vm/harness.py build
# Two guests at a time: each TCG guest keeps one of the two cores busy.
exec "${pytest[@]}" -n 2 --dist load tests/vm

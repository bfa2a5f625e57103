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
echo "== mypy --strict"
"$venv/mypy" --strict kdumpd
echo "== pytest"
# shellcheck disable=SC2086
exec "$venv/python" -m pytest -p no:cacheprovider -ra ${KDUMPD_TESTS:-tests}

#!/bin/bash
# The demo: boots a Debian 12 guest under QEMU, installs the kdumpd .deb built from
# this tree, arms kdump, crashes the guest kernel, and shows the saved dump, the
# panic read back from it, and a triage report. Prepares the host first.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/tools/setup-host.sh"
exec "$repo/.cache/venv/bin/python" "$repo/tools/demo.py" "$@"

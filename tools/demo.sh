#!/bin/bash
# The demo: boots a Debian 12 guest, installs and arms kdumpd, crashes the guest kernel
# and shows the saved dump. Not built yet: the end-to-end capture work is in progress.
echo "demo: not built yet (the end-to-end capture path is still in progress)" >&2
exit 1

#!/bin/bash
# Installs what kdumpd's tests and demo need on a Debian 12 host, as root:
# the Debian packages of the stack and the tools underneath, and a virtual
# environment on Debian's python3 (so gi, dasbus, systemd and pyudev come from apt)
# with the test tools of requirements-dev.txt. Idempotent and quick when done before.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache="$repo/.cache"
venv="$cache/venv"

packages=(
    # the daemon's Python stack
    python3 python3-venv python3-gi python3-dasbus python3-systemd python3-pyudev python3-jinja2
    # the tools kdumpd wraps
    kexec-tools makedumpfile dracut-core cpio zstd e2fsprogs
    # vmcore reader tests: page encoders (the reader itself is stdlib only; zstd optional)
    python3-lzo python3-snappy python3-zstandard
    # kdumpctl analyze --report on the VM scenario's dump (crash: analyze without --report)
    python3-drgn crash
    # integration tests: real processes (klibc's ipconfig and ip: the small init's network)
    dbus openssh-server openssh-client klibc-utils iproute2
    # VM harness and the Debian package
    qemu-system-x86 qemu-utils debootstrap debhelper dpkg-dev fakeroot
    # building the .deb with pybuild (tools/build-deb.sh)
    dh-python python3-all python3-setuptools pybuild-plugin-pyproject
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup-host: installing ${missing[*]}"
    # Another apt run (a parallel test run, unattended upgrades) holds the dpkg lock:
    # wait for it rather than fail.
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    # kexec-tools asks whether it should handle reboots; the answer is no, we only use kexec -p.
    echo "kexec-tools kexec-tools/load_kexec boolean false" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$repo/requirements-dev.txt" "$stamp"; then
    echo "setup-host: building the test venv in .cache/venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/requirements-dev.txt"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$repo"
    cp "$repo/requirements-dev.txt" "$stamp"
fi

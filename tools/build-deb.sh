#!/bin/bash
# Builds the kdumpd Debian package out of tree and prints the path of the .deb.
#
# The files of the working tree that git knows or would add (tracked, plus
# untracked ones that .gitignore does not exclude) are copied to
# .cache/deb/src and built there with dpkg-buildpackage, so the build leaves
# nothing in the source tree (no build/, *.egg-info, debian/kdumpd/...).
# Needs debhelper, dh-python, pybuild-plugin-pyproject (tools/setup-host.sh).
#   tools/build-deb.sh            -> .cache/deb/kdumpd_<version>_all.deb
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/.cache/deb"
src="$out/src"

rm -rf "$out"
mkdir -p "$src"

cd "$repo"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # -z: file names with blanks survive; deleted-but-tracked files are skipped.
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -e "$f" || -L "$f" ]] && printf '%s\0' "$f"; done \
        | cpio --quiet -0 -pdm "$src"
else
    # A tarball without git: everything but the caches.
    tar --exclude=./.cache --exclude=./.git --exclude='__pycache__' -cf - . | tar -xf - -C "$src"
fi

cd "$src"
log="$out/build.log"
# The system's tools only: a python3 from pyenv, a venv or /usr/local earlier in
# PATH would build against modules the Debian package cannot depend on.
if ! env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "build-deb: dpkg-buildpackage failed; full log in $log" >&2
    exit 1
fi

shopt -s nullglob
debs=("$out"/kdumpd_*_all.deb)
if ((${#debs[@]} != 1)); then
    echo "build-deb: expected one kdumpd .deb in $out, found ${#debs[@]}" >&2
    exit 1
fi
echo "${debs[0]}"

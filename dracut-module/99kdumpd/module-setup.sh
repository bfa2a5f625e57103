#!/bin/bash
# kdumpd's dracut module (99kdumpd): a static shim.
#
# dracut loads modules only from its modules.d directory, while what a kdumpd
# capture image holds depends on kdump.conf and the host. So the package
# installs this file unchanged as
#   /usr/lib/dracut/modules.d/99kdumpd/module-setup.sh
# and before every build kdumpd renders the real setup (kdumpd-setup.sh, the
# capture units, plan.json) from dracut-module/templates into a fresh build
# directory, which it names in the environment variable KDUMPD_BUILD_DIR when
# it runs dracut. Without that variable the module quietly stays out, so a
# plain `dracut` run for the system initramfs never sees kdumpd.
#
# dracut 059 ignores the status of install(); a failed kdumpd install (above
# all: the capture agent cannot start inside the staged image) therefore ends
# dracut with `exit 1`, which runs dracut's cleanup trap and fails the build.

_kdumpd_load() {
    [[ -n ${KDUMPD_BUILD_DIR-} && -r ${KDUMPD_BUILD_DIR}/kdumpd-setup.sh ]] || return 1
    # shellcheck source=/dev/null
    . "${KDUMPD_BUILD_DIR}/kdumpd-setup.sh"
}

# Silent without KDUMPD_BUILD_DIR: every system initramfs build asks every module, and
# saying no there is the normal case, not an error (dracut itself names a module that
# was asked for by name and cannot be included).
check() {
    _kdumpd_load || return 1
    return 0
}

depends() {
    _kdumpd_load || return 1
    kdumpd_depends
}

installkernel() {
    _kdumpd_load || return 1
    kdumpd_installkernel
}

install() {
    if ! _kdumpd_load || ! kdumpd_install; then
        dfatal "kdumpd: installing the capture environment failed; the image is not usable"
        exit 1
    fi
}

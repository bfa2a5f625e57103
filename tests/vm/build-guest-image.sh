#!/bin/bash
# Builds (or reuses) the Debian 12 guest image that the VM tests boot.
#
# Recipe: this script, guest-packages.txt and the files under guest/ (copied into the
# root file system as they are). The image lives in <repo>/.cache/vm/image-<hash>/, where
# <hash> covers the recipe, so a changed recipe builds a new image and an unchanged one
# is reused. The directory holds:
#   base.qcow2       whole-disk ext4 root file system (root=/dev/vda), a few GB free
#   vmlinuz          the guest's kernel and initrd, for QEMU's direct kernel boot
#   initrd.img
#   bootdisk.raw     GRUB's boot.img and a core.img built from the guest's own GRUB: the
#                    BIOS boots it, it finds the root disk by /boot/grub/grub.cfg and runs
#                    that config, so the guest boots through GRUB from its own disk
#   id_ed25519       throw-away root ssh key made by this build (never in git)
#   packages.txt     dpkg-query list of what the guest holds
#   READY            written last; an image directory without it is incomplete
# The last line printed is IMAGE_DIR=<directory>.
#
# The Debian mirror comes from the host's apt configuration at run time (the bookworm
# suite of /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list);
# KDUMPD_DEBIAN_MIRROR overrides it. No loop device is mounted: mkfs.ext4 -d writes the
# tree straight into the disk file. Needs root, debootstrap, e2fsprogs, qemu-utils and
# ssh-keygen (tools/setup-host.sh installs them).
#
#   tests/vm/build-guest-image.sh [--print-dir]   --print-dir: only print where the image goes
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="${KDUMPD_VM_CACHE:-$repo/.cache/vm}"
suite=bookworm
# Room left inside the guest's file system for /var/crash and the capture initramfs.
free_mib=6144

log() { printf '[build-guest-image %s] %s\n' "$(date +%T)" "$*"; }
die() {
    printf 'build-guest-image: error: %s\n' "$*" >&2
    exit 1
}

recipe_hash() {
    # File names and modes count too: an overlay file made executable is a new recipe.
    (
        cd "$here"
        sha256sum build-guest-image.sh guest-packages.txt
        find guest -type f -print0 | LC_ALL=C sort -z | xargs -0 -r stat -c '%a %n'
        find guest -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
    ) | sha256sum | cut -c1-16
}

# Prints the first URI of an enabled deb822 stanza whose Suites include $suite.
mirror_from_deb822() {
    awk -v suite="$suite" '
        BEGIN { RS = ""; FS = "\n" }
        {
            uris = ""; suites = ""; types = ""; enabled = 1
            for (i = 1; i <= NF; i++) {
                line = $i
                if (line ~ /^[ \t]*#/) continue
                if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); uris = line }
                else if (line ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", line); suites = line }
                else if (line ~ /^Types:/) { sub(/^Types:[ \t]*/, "", line); types = line }
                else if (line ~ /^Enabled:[ \t]*(no|false)/) enabled = 0
            }
            if (!enabled || uris == "" || (" " types " ") !~ / deb /) next
            n = split(suites, s, /[ \t]+/)
            for (j = 1; j <= n; j++) if (s[j] == suite) { split(uris, u, /[ \t]+/); print u[1]; exit }
        }' "$@"
}

# Prints the URI of the first one-line "deb" entry for $suite.
mirror_from_one_line() {
    sed -E -e 's/#.*//' -e 's/\[[^]]*\]//' "$@" |
        awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }'
}

debian_mirror() {
    if [[ -n "${KDUMPD_DEBIAN_MIRROR:-}" ]]; then
        echo "$KDUMPD_DEBIAN_MIRROR"
        return
    fi
    local found="" f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        found=$(mirror_from_deb822 "$f")
        [[ -n "$found" ]] && break
    done
    if [[ -z "$found" ]]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -r "$f" ]] || continue
            found=$(mirror_from_one_line "$f")
            [[ -n "$found" ]] && break
        done
    fi
    [[ -n "$found" ]] || die "no apt source for the $suite suite in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; add one or set KDUMPD_DEBIAN_MIRROR"
    echo "$found"
}

package_list() {
    sed -e 's/#.*//' "$here/guest-packages.txt" | tr -s ' \t' '\n' | sed '/^$/d'
}

hash=$(recipe_hash)
image="$cache/image-$hash"
if [[ "${1:-}" == "--print-dir" ]]; then
    echo "IMAGE_DIR=$image"
    exit 0
fi
if [[ -f "$image/READY" ]]; then
    log "reusing the guest image for recipe $hash"
    echo "IMAGE_DIR=$image"
    exit 0
fi

((EUID == 0)) || die "building the guest image needs root (debootstrap and chroot); run as root"
for tool in debootstrap mkfs.ext4 qemu-img ssh-keygen chroot flock; do
    command -v "$tool" >/dev/null ||
        die "$tool not found; install debootstrap, e2fsprogs, qemu-utils and openssh-client (tools/setup-host.sh does)"
done

mkdir -p "$cache"
# One build at a time; a second caller waits and then finds the image ready.
exec 9>"$cache/.build.lock"
flock 9
if [[ -f "$image/READY" ]]; then
    log "reusing the guest image for recipe $hash (built meanwhile)"
    echo "IMAGE_DIR=$image"
    exit 0
fi

work="$cache/build-$hash"
root="$work/rootfs"
out="$work/out"

unmount_all() {
    local m
    for m in proc sys; do
        if mountpoint -q "$root/$m" 2>/dev/null; then umount -l "$root/$m" || true; fi
    done
}
trap unmount_all EXIT

# A half-built tree from an interrupted run may still have file systems mounted in it.
unmount_all
rm -rf "$work"
mkdir -p "$root" "$out"

mirror=$(debian_mirror)
mapfile -t packages < <(package_list)
start=$SECONDS
log "recipe $hash: debootstrap $suite (minbase) from the host's apt mirror into $root"
if ! debootstrap --variant=minbase "$suite" "$root" "$mirror" 2>&1 |
    while IFS= read -r line; do log "debootstrap: $line"; done; then
    die "debootstrap failed (see the lines above); is the mirror $mirror reachable?"
fi

log "copying the recipe's configuration files from tests/vm/guest"
cp -rT --preserve=mode "$here/guest" "$root"

# Services must not start inside the build chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

# Package scripts want /proc and /sys; /dev keeps the nodes debootstrap made (binding the
# host's /dev could let a mount made here show up on the host).
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"

in_root() { DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 chroot "$root" "$@"; }

# kexec-tools would otherwise take over reboots (LOAD_KEXEC=true); kdumpd only loads a
# crash kernel with kexec -p.
echo "kexec-tools kexec-tools/load_kexec boolean false" | in_root debconf-set-selections

log "installing ${#packages[@]} packages: ${packages[*]}"
if ! in_root apt-get update -q 2>&1 | while IFS= read -r line; do log "apt: $line"; done; then
    die "apt-get update in the guest tree failed (see the lines above); is the mirror $mirror reachable?"
fi
if ! in_root apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${packages[@]}" 2>&1 |
    while IFS= read -r line; do log "apt: $line"; done; then
    die "apt-get install in the guest tree failed (see the lines above)"
fi
in_root apt-get clean

log "configuring: networkd, ssh key, journal, quiet timers"
in_root systemctl enable systemd-networkd.service ssh.service
# Timers that would wake up during a test and compete for the emulated CPU.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer dpkg-db-backup.timer 2>/dev/null || true
in_root systemd-machine-id-setup >/dev/null
mkdir -p "$root/var/log/journal" "$root/var/crash"
# The guest has no DNS on restricted user networking; do not keep the host's resolver.
: >"$root/etc/resolv.conf"

ssh-keygen -q -t ed25519 -N '' -C "kdumpd-vm-test-throwaway" -f "$out/id_ed25519"
install -d -m 700 "$root/root/.ssh"
install -m 600 "$out/id_ed25519.pub" "$root/root/.ssh/authorized_keys"

in_root dpkg-query -W -f='${Package} ${Version}\n' >"$out/packages.txt"
kernels=("$root"/boot/vmlinuz-*)
((${#kernels[@]} == 1)) && [[ -f "${kernels[0]}" ]] ||
    die "expected exactly one kernel in the guest's /boot, found: ${kernels[*]}"
kver=${kernels[0]##*/vmlinuz-}
[[ -f "$root/boot/initrd.img-$kver" ]] || die "the guest has no /boot/initrd.img-$kver"
cp "${kernels[0]}" "$out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/initrd.img"
log "guest kernel $kver"

# GRUB from the guest's own disk, without a partition table: the BIOS loads boot.img from
# a separate 1 MiB disk, boot.img loads core.img from the next sectors (its default
# blocklist), and core.img's embedded config searches the disk that holds
# /boot/grub/grub.cfg. Modules not embedded load from the guest's /usr/lib/grub, the
# same GRUB build, so versions always match. grub.cfg here is a first config for the
# image; the scenarios run update-grub in the guest, which writes the real one.
log "GRUB boot disk and a first /boot/grub/grub.cfg"
cat >"$root/tmp/early-grub.cfg" <<'EOF'
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --file /boot/grub/grub.cfg --set=root
set prefix=($root)/usr/lib/grub
configfile ($root)/boot/grub/grub.cfg
EOF
in_root grub-mkimage -O i386-pc -o /tmp/core.img -c /tmp/early-grub.cfg -p /usr/lib/grub \
    biosdisk part_msdos part_gpt ext2 search search_fs_file search_fs_uuid search_label \
    configfile normal linux boot gzio echo test serial terminal loadenv
cat "$root/usr/lib/grub/i386-pc/boot.img" "$root/tmp/core.img" >"$out/bootdisk.raw"
truncate -s 1M "$out/bootdisk.raw"
rm -f "$root/tmp/core.img" "$root/tmp/early-grub.cfg"
mkdir -p "$root/boot/grub"
cat >"$root/boot/grub/grub.cfg" <<EOF
# Written by build-guest-image.sh; update-grub in the guest replaces it.
set timeout=0
menuentry 'Debian GNU/Linux, with Linux $kver (image)' {
    search --no-floppy --label kdumpguest --set=root
    linux /boot/vmlinuz-$kver root=/dev/vda ro console=ttyS0,115200
    initrd /boot/initrd.img-$kver
}
EOF

rm -f "$root/usr/sbin/policy-rc.d"
unmount_all

used_mib=$(du -sm --apparent-size "$root" | cut -f1)
size_mib=$((used_mib + used_mib / 4 + free_mib))
log "writing a ${size_mib} MiB ext4 file system from the tree (${used_mib} MiB used)"
mkfs.ext4 -q -F -L kdumpguest -d "$root" "$work/disk.raw" "${size_mib}M"
qemu-img convert -O qcow2 "$work/disk.raw" "$out/base.qcow2"
rm -f "$work/disk.raw"

cat >"$out/READY" <<EOF
recipe=$hash
kernel=$kver
built=$(date -u +%FT%TZ)
EOF
rm -rf "$image"
mv "$out" "$image"
rm -rf "$work"
# Images of older recipes are dead weight.
for old in "$cache"/image-*; do
    [[ "$old" == "$image" ]] || rm -rf "$old"
done
log "done in $((SECONDS - start)) s: $image ($(du -sh "$image/base.qcow2" | cut -f1) on disk)"
echo "IMAGE_DIR=$image"

#!/usr/bin/env bash
# Builds the default step root image: Debian's static busybox with its
# applets, users root and sbx (1000:1000, home /work), as a reproducible ext4
# file. Needs no root privileges (ownership is set inside the image with
# debugfs). Prints only the path of the result on stdout.
#
#   guest/image/build-rootfs.sh
#
# Output: ${SBXRUN_CACHE_DIR:-$HOME/.cache/sbxrun}/images/default/<key>/rootfs.ext4
# where <key> covers this script, the busybox binary and the mke2fs version.
set -euo pipefail

cache=${SBXRUN_CACHE_DIR:-$HOME/.cache/sbxrun}
size=32M
# Fixed identity and time: two builds give byte-identical images.
uuid=5b0c5e1e-0000-4000-8000-000000000001
hash_seed=5b0c5e1e-0000-4000-8000-000000000002
epoch=1700000000

busybox=/bin/busybox
need_busybox_static() {
    ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
}
if need_busybox_static; then
    echo "build-rootfs: installing busybox-static" >&2
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2
    fi
fi
for tool in mkfs.ext4 debugfs sha256sum; do
    command -v "$tool" >/dev/null || { echo "build-rootfs: $tool is required (e2fsprogs)" >&2; exit 1; }
done
if ! file_out=$("$busybox" --list-full 2>/dev/null) || [ -z "$file_out" ]; then
    echo "build-rootfs: $busybox does not list its applets" >&2
    exit 1
fi

key=$( (sha256sum <"${BASH_SOURCE[0]}"; sha256sum <"$busybox"; mkfs.ext4 -V 2>&1 | sed -n 1p) |
    sha256sum | cut -c1-16)
outdir=$cache/images/default/$key
out=$outdir/rootfs.ext4
if [ -f "$out" ]; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
umask 022
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,var/tmp,root,work,mnt}
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
# The equivalent of `busybox --install -s`, done here so the image is
# complete before it is made read-only.
while read -r applet; do
    case $applet in bin/busybox | linuxrc) continue ;; esac
    mkdir -p "$root/$(dirname "$applet")"
    ln -sf /bin/busybox "$root/$applet"
done <<<"$file_out"

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
sbx:x:1000:1000:sbx:/work:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
sbx:x:1000:
nogroup:x:65534:
GROUP
echo sbx >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tsbx\n::1\tlocalhost\n' >"$root/etc/hosts"
cat >"$root/etc/resolv.conf" <<'RESOLV'
# Placeholder. Name resolution, when a step's egress policy allows any, is
# provided by the VM's network device.
RESOLV
printf 'NAME="sbxrun default"\nID=sbxrun\nPRETTY_NAME="sbxrun default image (busybox)"\n' \
    >"$root/etc/os-release"

find "$root" -exec touch -h -d "@$epoch" {} +

# Ownership inside the image: everything root, /work the step user. Times
# that mke2fs copies from the host (ctime cannot be set there) are pinned too.
cmds=$work/debugfs.cmds
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort) | while read -r p; do
    p=${p#.}
    for f in uid gid; do echo "sif $p $f 0"; done
    for f in atime mtime ctime crtime; do echo "sif $p $f @$epoch"; done
done >"$cmds"
for f in atime mtime ctime crtime; do echo "sif / $f @$epoch"; done >>"$cmds"
printf 'sif /work uid 1000\nsif /work gid 1000\n' >>"$cmds"

mkdir -p "$outdir"
tmp=$(mktemp "$outdir/.rootfs.ext4.XXXXXX")
export E2FSPROGS_FAKE_TIME=$epoch SOURCE_DATE_EPOCH=$epoch
mkfs.ext4 -q -F -t ext4 -L sbxroot -U "$uuid" -m 0 -N 2048 \
    -E "hash_seed=$hash_seed,root_owner=0:0,lazy_itable_init=0,nodiscard" \
    -d "$root" "$tmp" "$size" >&2
debugfs -w -f "$cmds" "$tmp" >/dev/null 2>"$work/debugfs.err" || {
    cat "$work/debugfs.err" >&2
    exit 1
}
if grep -v '^debugfs ' "$work/debugfs.err" | grep -q .; then
    cat "$work/debugfs.err" >&2
    echo "build-rootfs: debugfs reported errors" >&2
    exit 1
fi
e2fsck -fn "$tmp" >/dev/null 2>&1 || { echo "build-rootfs: e2fsck failed on the image" >&2; exit 1; }
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
echo "$out"

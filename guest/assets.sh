#!/usr/bin/env bash
# Builds (or finds in the cache) the guest kernel, the initramfs with
# guest-init and the default root image, then points
# $SBXRUN_CACHE_DIR/assets/ at them, where sbxrun looks by default.
# Every step is cached by the hash of its inputs: a second run is quick.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SBXRUN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sbxrun}
mkdir -p "$cache/assets"

kernel=$("$here/kernel/build.sh")
initramfs=$("$here/image/build-initramfs.sh")
rootfs=$("$here/image/build-rootfs.sh")

ln -sfn "$kernel" "$cache/assets/vmlinux"
ln -sfn "$initramfs" "$cache/assets/initramfs.cpio"
ln -sfn "$rootfs" "$cache/assets/rootfs.ext4"
echo "guest assets ready in $cache/assets:" >&2
ls -l "$cache/assets" >&2

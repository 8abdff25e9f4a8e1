#!/usr/bin/env bash
# Builds guest-init (static) and packs it as /init into a reproducible newc
# initramfs. Prints only the path of the result on stdout.
#
#   guest/image/build-initramfs.sh
#
# Output: ${SBXRUN_CACHE_DIR:-$HOME/.cache/sbxrun}/initramfs/<key>/initramfs.cpio
# where <key> is derived from the stripped guest-init binary, so the same
# binary always yields the same (already built) archive.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${SBXRUN_CACHE_DIR:-$HOME/.cache/sbxrun}
target=x86_64-unknown-linux-gnu

for tool in cargo cpio strip sha256sum; do
    command -v "$tool" >/dev/null || { echo "build-initramfs: $tool is required" >&2; exit 1; }
done

(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -p guest-init --release --target "$target" -j2 >&2)
bin=$repo/target/$target/release/guest-init
[ -x "$bin" ] || { echo "build-initramfs: $bin was not built" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Debug info would only make the (emulated, slow) kernel unpack more bytes.
strip -o "$work/init" "$bin"
# Bump the suffix when the archive layout below changes.
key=$( (sha256sum <"$work/init"; echo layout-1) | sha256sum | cut -c1-16)
outdir=$cache/initramfs/$key
out=$outdir/initramfs.cpio
if [ -f "$out" ]; then
    echo "$out"
    exit 0
fi

root=$work/root
mkdir -p "$root"/{dev,proc,sys,tmp,mnt/lower,mnt/rw,mnt/root}
mv "$work/init" "$root/init"
chmod 0755 "$root/init" "$root"/dev "$root"/proc "$root"/sys "$root"/mnt "$root"/mnt/*
chmod 1777 "$root/tmp"
# Fixed timestamps and owners, sorted names: identical bytes on every build.
find "$root" -exec touch -h -d @0 {} +
mkdir -p "$outdir"
tmp=$(mktemp "$outdir/.initramfs.cpio.XXXXXX")
(cd "$root" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    cpio --quiet -o -H newc --owner=0:0 --reproducible >"$tmp")
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
echo "$out"

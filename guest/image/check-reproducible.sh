#!/usr/bin/env bash
# Builds the initramfs and the default root image twice, in two empty cache
# directories, and fails unless both builds are byte-identical.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
a=$(mktemp -d)
b=$(mktemp -d)
trap 'rm -rf "$a" "$b"' EXIT
status=0
for script in build-initramfs.sh build-rootfs.sh; do
    pa=$(SBXRUN_CACHE_DIR=$a "$here/$script")
    sleep 1 # a different wall clock must not change the result
    pb=$(SBXRUN_CACHE_DIR=$b "$here/$script")
    ha=$(sha256sum <"$pa" | cut -d' ' -f1)
    hb=$(sha256sum <"$pb" | cut -d' ' -f1)
    if [ "$ha" = "$hb" ]; then
        echo "ok   $script $ha"
    else
        echo "FAIL $script $ha != $hb"
        status=1
    fi
done
exit $status

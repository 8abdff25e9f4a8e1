#!/usr/bin/env bash
# Builds a realistic OCI image for the examples, tests and benchmarks: a
# Debian bookworm root (debootstrap --variant=minbase, from the apt mirror
# this machine already uses) with python3, as an OCI image layout
# directory of two layers: the Debian root, and a small top layer holding
# /opt/example (so a pull where only the top layer changed can be measured).
# Reproducible: fixed mtimes, sorted entries, numeric owners, gzip without
# a timestamp, so the same package set gives the same digests.
# Prints only the path of the layout on stdout; the tag is `3.11`.
#
#   guest/image/build-python-oci.sh
#
# Output: ${SBXRUN_CACHE_DIR:-$HOME/.cache/sbxrun}/images/python-oci/<key>/layout
# where <key> covers this script. Needs root (debootstrap); takes a few
# minutes the first time, then answers from the cache.
set -euo pipefail

cache=${SBXRUN_CACHE_DIR:-$HOME/.cache/sbxrun}
epoch=1700000000
suite=bookworm
mirror=${SBXRUN_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
mirror=${mirror:-http://deb.debian.org/debian}

key=$(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-16)
out="$cache/images/python-oci/$key"
if [ -f "$out/layout/index.json" ]; then
    echo "$out/layout"
    exit 0
fi

if ! command -v debootstrap >/dev/null; then
    echo "build-python-oci: installing debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2
fi

work=$(mktemp -d "$cache/images/.python-oci.XXXXXX" 2>/dev/null || { mkdir -p "$cache/images"; mktemp -d "$cache/images/.python-oci.XXXXXX"; })
trap 'rm -rf "$work"' EXIT
root="$work/root"
echo "build-python-oci: debootstrap $suite (minbase + python3) from $mirror" >&2
debootstrap --variant=minbase --include=python3 "$suite" "$root" "$mirror" >&2
# What an image needs no copy of: the package cache, indexes, docs, logs.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
# Files whose content depends on the build's time or randomness.
rm -f "$root"/etc/machine-id "$root"/var/lib/dbus/machine-id "$root"/etc/ssh/ssh_host_*
# Bytecode: the install's .pyc files embed the build's source mtimes;
# recompiled with source hashes they are reproducible, and without any a
# guest recompiles the standard library at every start (seconds of
# emulated syscalls on kvm-pvm hosts).
find "$root" -name '__pycache__' -type d -prune -exec rm -rf {} +
chroot "$root" /usr/bin/python3 -m compileall -q -j 1 --invalidation-mode unchecked-hash \
    /usr/lib/python3.11 >&2

top="$work/top"
mkdir -p "$top/opt/example"
cat >"$top/opt/example/hello.py" <<'EOF'
import platform
print(f"hello from python {platform.python_version()} in an sbxrun microVM")
EOF

# One layer tar: sorted, fixed mtime, numeric owners, no atime/ctime.
layer_tar() {
    tar --sort=name --mtime="@$epoch" --numeric-owner --format=posix \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$1" -cf - .
}
layer_tar "$root" >"$work/base.tar"
layer_tar "$top" >"$work/top.tar"

python3 - "$work" "$epoch" <<'EOF'
import gzip, hashlib, json, os, shutil, sys
work, epoch = sys.argv[1], int(sys.argv[2])
layout = os.path.join(work, "layout")
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)

def put(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)

layers, diff_ids = [], []
for name in ("base.tar", "top.tar"):
    raw = open(os.path.join(work, name), "rb").read()
    diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    digest, size = put(gzip.compress(raw, compresslevel=6, mtime=0))
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                   "digest": digest, "size": size})

config = {
    "created": "2023-11-14T22:13:20Z",
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8"],
        "Cmd": ["python3", "/opt/example/hello.py"],
        "WorkingDir": "/opt/example",
    },
    "rootfs": {"type": "layers", "diff_ids": diff_ids},
}
config_digest, config_size = put(json.dumps(config, sort_keys=True).encode())
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": config_digest, "size": config_size},
    "layers": layers,
}
manifest_digest, manifest_size = put(json.dumps(manifest, sort_keys=True).encode())
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": "3.11"},
    }],
}
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f, sort_keys=True)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
print(manifest_digest, file=sys.stderr)
EOF

mkdir -p "$out"
rm -rf "$out/layout"
mv "$work/layout" "$out/layout"
echo "$out/layout"

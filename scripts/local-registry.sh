#!/usr/bin/env bash
# A registry on 127.0.0.1 for the examples: Debian's docker-registry (the
# CNCF distribution registry), its storage and pid file under sbxrun's
# cache, so `make demo` can push the example image once and a user can run
# `sbxrun run examples/python.yaml` afterwards.
#
#   scripts/local-registry.sh start        start it (no-op when running)
#   scripts/local-registry.sh push LAYOUT REPO:TAG
#   scripts/local-registry.sh stop
#
# Port: $SBXRUN_REGISTRY_PORT, default 5000. Nothing listens beyond loopback.
set -euo pipefail

cache=${SBXRUN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sbxrun}
port=${SBXRUN_REGISTRY_PORT:-5000}
dir="$cache/registry"
pidfile="$dir/registry.pid"

running() {
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

wait_ready() {
    for _ in $(seq 1 100); do
        if python3 - "$port" <<'EOF' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2/", timeout=1)
EOF
        running || { echo "local-registry: the registry exited; see $dir/registry.log" >&2; return 1; }
        sleep 0.1
    done
    echo "local-registry: no answer on 127.0.0.1:$port; see $dir/registry.log" >&2
    return 1
}

case "${1:-}" in
start)
    if running; then exit 0; fi
    command -v docker-registry >/dev/null || {
        echo "local-registry: docker-registry is missing; run scripts/test-deps.sh" >&2
        exit 1
    }
    mkdir -p "$dir/storage"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
    # The registry reads REGISTRY_* variables as configuration; give it none.
    env -i PATH="$PATH" setsid docker-registry serve "$dir/config.yml" \
        >"$dir/registry.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    wait_ready
    echo "local-registry: listening on 127.0.0.1:$port" >&2
    ;;
push)
    layout=${2:?layout directory}
    target=${3:?repo:tag}
    tag=${target##*:}
    skopeo --insecure-policy copy --dest-tls-verify=false \
        "oci:$layout:$tag" "docker://127.0.0.1:$port/$target" >&2
    ;;
stop)
    if running; then
        kill "$(cat "$pidfile")"
    fi
    rm -f "$pidfile"
    ;;
*)
    echo "usage: $0 start | push LAYOUT REPO:TAG | stop" >&2
    exit 2
    ;;
esac

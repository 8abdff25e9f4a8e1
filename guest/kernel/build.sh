#!/usr/bin/env bash
# Builds the sbxrun guest kernel (an uncompressed x86_64 vmlinux, booted via
# PVH) from Debian's linux-source-6.1, config.fragment and pvm-compat.patch.
#
# Prints only the path of the vmlinux on stdout, so callers can write
#   KERNEL=$(guest/kernel/build.sh)
# Everything else goes to stderr or to a log file in the cache.
#
# The result lives in ${SBXRUN_CACHE_DIR:-$HOME/.cache/sbxrun}/kernel/<key>/,
# where <key> hashes every input (package version, fragment, patch, this
# script); a second run with the same inputs only prints the path. Entries
# appear by an atomic rename, so a killed build never leaves a partial one.
# The extracted source tree is kept in the cache so that a change of the
# fragment or the patch rebuilds incrementally.
#
# Environment: SBXRUN_CACHE_DIR (cache root), SBXRUN_KERNEL_JOBS (make -j,
# default 2).
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment=$here/config.fragment
patchfile=$here/pvm-compat.patch
self=$here/build.sh
pkg=linux-source-6.1
deps=(linux-source-6.1 flex bison bc libelf-dev libssl-dev build-essential xz-utils patch)
cache=${SBXRUN_CACHE_DIR:-$HOME/.cache/sbxrun}/kernel
jobs=${SBXRUN_KERNEL_JOBS:-2}

log() { printf 'guest/kernel/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

# Installs missing build dependencies; refreshes the apt lists only when the
# install fails without it (a fresh machine has empty or stale lists).
ensure_deps() {
	local missing=() p
	for p in "${deps[@]}"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! as_root apt-get install -y "${missing[@]}" >&2; then
		as_root apt-get update >&2
		as_root apt-get install -y "${missing[@]}" >&2
	fi
}

ensure_deps
version=$(dpkg-query -W -f='${Version}' "$pkg")
tarball=/usr/src/$pkg.tar.xz
[ -f "$tarball" ] || die "$tarball missing although $pkg $version is installed"

key=$({ printf '%s %s\n' "$pkg" "$version"; cat "$fragment" "$patchfile" "$self"; } |
	sha256sum | cut -c1-16)
entry=$cache/$key
if [ -f "$entry/vmlinux" ]; then
	echo "$entry/vmlinux"
	exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
	log "another kernel build holds $cache/.lock; waiting"
	flock 9
fi
# Another build may have produced the entry while we waited.
if [ -f "$entry/vmlinux" ]; then
	echo "$entry/vmlinux"
	exit 0
fi

buildlog=$cache/build-$key.log
: >"$buildlog"
log "building kernel $key (log: $buildlog)"

tree=$cache/src/$pkg-$version
applied=$tree/.sbxrun-applied.patch

extract() {
	local tmp
	rm -rf "$tree" "$cache/src/.tmp."*
	mkdir -p "$cache/src"
	tmp=$(mktemp -d "$cache/src/.tmp.XXXXXX")
	log "extracting $tarball"
	tar -C "$tmp" -xf "$tarball"
	[ -d "$tmp/$pkg" ] || die "$tarball has no $pkg/ directory"
	: >"$tmp/$pkg/$(basename "$applied")"
	mv -T "$tmp/$pkg" "$tree"
	rmdir "$tmp"
}

# Brings the tree to pristine source + the current patch. The previously
# applied patch is reversed rather than the tree re-extracted, so that only
# the touched files recompile; any doubt falls back to a fresh extraction.
prepare_tree() {
	[ -f "$applied" ] || extract
	cmp -s "$applied" "$patchfile" && return 0
	if [ -s "$applied" ]; then
		if patch -d "$tree" -p1 -R -s --dry-run <"$applied" >>"$buildlog" 2>&1; then
			patch -d "$tree" -p1 -R -s <"$applied" >>"$buildlog" 2>&1
			: >"$applied"
		else
			log "cannot reverse the old patch, extracting afresh"
			extract
		fi
	fi
	if ! patch -d "$tree" -p1 -s --dry-run <"$patchfile" >>"$buildlog" 2>&1; then
		log "patch does not apply to a fresh tree; see $buildlog"
		extract
		patch -d "$tree" -p1 -s --dry-run <"$patchfile" >>"$buildlog" 2>&1 ||
			die "$patchfile does not apply to $pkg $version (see $buildlog)"
	fi
	# Mark the tree unknown while patching, in case we are killed midway.
	rm -f "$applied"
	patch -d "$tree" -p1 -s <"$patchfile" >>"$buildlog" 2>&1
	cp "$patchfile" "$applied"
}

kmake() {
	make -C "$tree" ARCH=x86_64 KBUILD_BUILD_USER=sbxrun KBUILD_BUILD_HOST=sbxrun \
		KBUILD_BUILD_VERSION=1 "$@" >>"$buildlog" 2>&1 ||
		{ tail -n 40 "$buildlog" >&2; die "make $* failed (see $buildlog)"; }
}

# Every "CONFIG_X=v" and "# CONFIG_X is not set" line of the fragment must
# hold in the final .config: Kconfig silently drops what a dependency
# forbids, and a silently missing option is worse than a failed build.
check_config() {
	local bad=0 line sym
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*)
			grep -qxF -- "$line" "$tree/.config" || {
				log "config: wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$tree/.config" || echo unset)"
				bad=1
			}
			;;
		"# CONFIG_"*" is not set")
			sym=${line#\# }
			sym=${sym%% *}
			if grep -q "^$sym=" "$tree/.config"; then
				log "config: wanted $sym off, got: $(grep "^$sym=" "$tree/.config")"
				bad=1
			fi
			;;
		esac
	done <"$fragment"
	[ $bad -eq 0 ] || die "config.fragment does not survive olddefconfig"
}

prepare_tree
kmake tinyconfig
(cd "$tree" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$fragment") >>"$buildlog" 2>&1 ||
	die "merge_config.sh failed (see $buildlog)"
kmake olddefconfig
check_config
start=$(date +%s)
kmake -j"$jobs" vmlinux
log "vmlinux built in $(($(date +%s) - start)) s"

tmp=$(mktemp -d "$cache/.tmp.$key.XXXXXX")
cp "$tree/vmlinux" "$tmp/vmlinux"
cp "$tree/.config" "$tmp/config"
printf '%s %s\n' "$pkg" "$version" >"$tmp/source"
mv -T "$tmp" "$entry"
echo "$entry/vmlinux"

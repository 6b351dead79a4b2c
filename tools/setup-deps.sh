#!/usr/bin/env bash
# setup-deps.sh — install everything candex needs, idempotently, and print the
# Faiss prefix on the last line of stdout.
#
#   1. Debian packages (apt-get, as root or through sudo), only those missing.
#   2. The Faiss 1.7.3 C API, which Debian does not ship as a library: built
#      from Debian's own `faiss` source package into a cache prefix outside the
#      source tree ($CANDEX_CACHE, default ~/.cache/candex), reused afterwards.
#   3. The npm packages of the Kubernetes manifest check (tools/k8s-validate),
#      into the same cache; CANDEX_K8S_VALIDATE=0 skips them (image builds).
#
# The apt configuration of the machine is never modified: the deb-src entries
# live in a private directory passed to apt with -o options.
set -euo pipefail
work=
root=$(cd "$(dirname "$0")/.." && pwd)

CACHE=${CANDEX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/candex}
FAISS_VERSION=1.7.3
# Bump when the way Faiss is built changes, so cached builds are redone.
FAISS_BUILD_REV=2
PACKAGES=(build-essential cmake pkg-config git dpkg-dev
	libnng-dev nng-utils libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
	liblz4-dev libxxhash-dev libopenblas-dev libcmocka-dev libjansson-dev gnuplot-nox curl
	python3 python3-protobuf clang libclang-rt-14-dev openssl libnss-wrapper
	libhnswlib-dev) # hnswlib: only for the side-by-side benchmark (tools/bench/hnsw)

log() { echo "setup-deps: $*" >&2; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing Debian packages: ${missing[*]}"
	as_root apt-get update -qq >&2
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >&2
}

# The SIMD level Faiss is compiled for: the best this CPU has. Part of the
# cache key, so a cache carried to another CPU is rebuilt, not misused.
cpu_level() {
	if grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then echo avx512
	elif grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then echo avx2
	else echo generic; fi
}

cpu_flags() {
	case $1 in
	avx512) echo "-mavx2 -mfma -mf16c -mpopcnt -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512cd" ;;
	avx2) echo "-mavx2 -mfma -mf16c -mpopcnt" ;;
	*) echo "" ;;
	esac
}

# Writes deb-src stanzas derived from the machine's enabled `Types: deb`
# entries (deb822 and one-line formats) into $1.
derive_deb_src() {
	local out=$1 f
	: >"$out"
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -e "$f" ] || continue
		awk 'BEGIN { RS=""; ORS="\n\n" }
		     /(^|\n)Types:[^\n]*deb([ \t]|\n|$)/ && !/(^|\n)Enabled: *no/ {
		         gsub(/(^|\n)Types:[^\n]*/, "\nTypes: deb-src"); sub(/^\n/, ""); print
		     }' "$f" >>"$out"
	done
	if [ -f /etc/apt/sources.list ]; then
		awk '/^[ \t]*deb[ \t]/ { sub(/deb/, "deb-src"); print }' /etc/apt/sources.list \
			| while read -r line; do
				printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: %s\n\n' \
					"$(echo "$line" | awk '{print $2}')" "$(echo "$line" | awk '{print $3}')" \
					"$(echo "$line" | cut -d' ' -f4-)"
			done >>"$out"
	fi
}

build_faiss() {
	local level=$1 prefix=$2
	work=$(mktemp -d "${TMPDIR:-/tmp}/candex-faiss.XXXXXX")
	trap 'rm -rf "$work"' EXIT
	mkdir -p "$work/apt/sources.list.d" "$work/apt/lists/partial" "$work/src"
	derive_deb_src "$work/apt/sources.list.d/candex-src.sources"
	local aptopts=(-o Dir::Etc::SourceList=/dev/null
		-o Dir::Etc::SourceParts="$work/apt/sources.list.d"
		-o Dir::State::Lists="$work/apt/lists")
	log "fetching Debian's faiss source package"
	apt-get "${aptopts[@]}" update -qq >&2
	(cd "$work/src" && apt-get "${aptopts[@]}" source -qq "faiss=${FAISS_VERSION}*" >&2 ||
		apt-get "${aptopts[@]}" source -qq faiss >&2)
	local srcdir
	srcdir=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'faiss-*' | head -1)
	[ -n "$srcdir" ] || { log "faiss source not found"; return 1; }
	log "building Faiss $FAISS_VERSION ($level) with the C API into $prefix"
	local flags
	flags="$(cpu_flags "$level")"
	cmake -S "$srcdir" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_INSTALL_PREFIX="$prefix.tmp" \
		-DFAISS_ENABLE_GPU=OFF -DFAISS_ENABLE_PYTHON=OFF -DFAISS_ENABLE_C_API=ON \
		-DBUILD_SHARED_LIBS=ON -DBUILD_TESTING=OFF -DFAISS_OPT_LEVEL=generic \
		-DBLA_VENDOR=OpenBLAS -DCMAKE_INSTALL_RPATH='$ORIGIN' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
		-DCMAKE_CXX_FLAGS="-O3 $flags" -DCMAKE_C_FLAGS="-O3 $flags" >&2
	cmake --build "$work/build" -j"$(nproc)" --target faiss faiss_c >&2
	rm -rf "$prefix.tmp"
	cmake --install "$work/build" >&2
	# The C API's install rules in 1.7.3 cover headers only partly and not the
	# library everywhere: copy what is missing.
	mkdir -p "$prefix.tmp/lib" "$prefix.tmp/include/faiss/c_api"
	find "$work/build/c_api" -name 'libfaiss_c*' -exec cp -a {} "$prefix.tmp/lib/" \;
	(cd "$srcdir/c_api" && find . -name '*.h' -exec cp --parents {} "$prefix.tmp/include/faiss/c_api/" \;)
	echo "$FAISS_VERSION $level $flags" >"$prefix.tmp/CANDEX-STAMP"
	rm -rf "$prefix"
	mv "$prefix.tmp" "$prefix"
}

# The npm packages of the Kubernetes manifest check (tools/k8s-validate):
# installed from its lockfile into the cache, again only when the lockfile changes.
install_k8s_validate() {
	local src="$root/tools/k8s-validate" dst="$CACHE/k8s-validate" stamp
	if ! command -v npm >/dev/null; then
		log "installing Debian packages: nodejs npm"
		as_root apt-get update -qq >&2
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >&2
	fi
	stamp=$(sha256sum "$src/package-lock.json" | cut -c1-16)
	[ "$(cat "$dst/STAMP" 2>/dev/null)" = "$stamp" ] && return 0
	log "installing the npm packages of tools/k8s-validate into $dst"
	mkdir -p "$dst"
	cp "$src/package.json" "$src/package-lock.json" "$dst/"
	(cd "$dst" && npm ci --no-audit --no-fund --loglevel=error >&2)
	echo "$stamp" >"$dst/STAMP"
}

main() {
	install_packages
	mkdir -p "$CACHE"
	if [ "${CANDEX_K8S_VALIDATE:-1}" != 0 ]; then
		(
			exec 8>"$CACHE/.npm-lock"
			flock 8
			install_k8s_validate
		)
	fi
	if [ -n "${CANDEX_FAISS_PREFIX:-}" ] && [ -e "$CANDEX_FAISS_PREFIX/include/faiss/c_api/faiss_c.h" ]; then
		echo "$CANDEX_FAISS_PREFIX"
		return 0
	fi
	local level prefix
	# CANDEX_CPU_LEVEL (avx512, avx2, generic) builds for other machines than
	# this one: an image built here may run on nodes without AVX-512
	level=${CANDEX_CPU_LEVEL:-$(cpu_level)}
	case $level in avx512 | avx2 | generic) ;; *) log "CANDEX_CPU_LEVEL: avx512, avx2 or generic, not '$level'"; exit 2 ;; esac
	prefix="$CACHE/faiss-$FAISS_VERSION-$level-r$FAISS_BUILD_REV"
	if [ ! -f "$prefix/CANDEX-STAMP" ]; then
		mkdir -p "$CACHE"
		# One builder at a time: a second caller waits and then finds it done.
		exec 9>"$CACHE/.lock"
		flock 9
		[ -f "$prefix/CANDEX-STAMP" ] || build_faiss "$level" "$prefix"
	fi
	echo "$prefix"
}

main "$@"

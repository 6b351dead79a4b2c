#!/usr/bin/env bash
# build.sh [BUILD_DIR] [cmake args...] — install what is missing (tools/setup-deps.sh),
# then configure and build candex. Fast when everything is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/build}
shift || true
faiss=$(bash "$root/tools/setup-deps.sh" | tail -1)
if [ ! -f "$dir/CMakeCache.txt" ]; then
	cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCANDEX_FAISS_PREFIX="$faiss" "$@" >&2
fi
cmake --build "$dir" -j"$(nproc)" >&2

#!/usr/bin/env bash
# test.sh [--sanitize] [--slow] — the README's test command: installs what is
# missing, builds, and runs the unit and integration tests with CTest.
#   --sanitize  build in build-asan with ASan+UBSan (CANDEX_SANITIZER) and test there
#   --slow      also run the tests labelled slow (real data in ../shared/data)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/build
labels='unit|integration'
extra=()
for arg in "$@"; do
	case $arg in
	--sanitize)
		dir=$root/build-asan
		extra+=(-DCANDEX_SANITIZER=address,undefined -DCMAKE_BUILD_TYPE=Debug)
		# Faiss and OpenBLAS are not instrumented; what they allocate for
		# process-lifetime caches is not ours to free.
		export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
		export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp:print_suppressions=0}
		export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
		;;
	--slow) labels='unit|integration|slow' ;;
	*) echo "usage: tools/test.sh [--sanitize] [--slow]" >&2; exit 2 ;;
	esac
done
bash "$root/tools/build.sh" "$dir" "${extra[@]}"
cd "$dir"
ctest -L "$labels" -j"$(nproc)" --output-on-failure

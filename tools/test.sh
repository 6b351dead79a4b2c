#!/usr/bin/env bash
# test.sh [--sanitize | --tsan] [--slow] — the README's test command: installs
# what is missing, builds, and runs the unit and integration tests with CTest.
#   --sanitize  build in build-asan with ASan+UBSan (CANDEX_SANITIZER) and test there
#   --tsan      build in build-tsan with ThreadSanitizer and run the server's
#               concurrency tests (label tsan; suppressions: tests/tsan.supp);
#               every report, from a test or from the server it runs, fails the run
#   --slow      also run the tests labelled slow (real data in ../shared/data)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/build
labels='unit|integration'
extra=()
tsan=0
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
	--tsan)
		dir=$root/build-tsan
		extra+=(-DCANDEX_SANITIZER=thread -DCMAKE_BUILD_TYPE=Debug)
		labels='tsan'
		tsan=1
		;;
	--slow) labels='unit|integration|slow' ;;
	*) echo "usage: tools/test.sh [--sanitize | --tsan] [--slow]" >&2; exit 2 ;;
	esac
done
bash "$root/tools/build.sh" "$dir" "${extra[@]}"
cd "$dir"
if [ "$tsan" = 1 ]; then
	# Reports go to files (the servers the tests start write to their own
	# logs otherwise); any file left means a race.
	rm -rf "$dir/tsan" && mkdir -p "$dir/tsan"
	# report_thread_leaks=0: a shutdown that reaches --drain-ms before the
	# sockets are closed leaves its threads to the process exit on purpose
	# (server.c, SRV-STOP-STUCK), and TSan's slowness makes that common in
	# watchdog_test's 600 ms drain.
	export TSAN_OPTIONS="suppressions=$root/tests/tsan.supp log_path=$dir/tsan/report second_deadlock_stack=1 report_thread_leaks=0"
	# OpenMP (libgomp) and OpenBLAS are not instrumented: the ordering
	# their own threads rely on is invisible to TSan and every access they
	# order would be reported. Run them on the calling thread; the threads
	# candex starts (workers, intake, reload, watchdog) and nng's stay.
	export OMP_THREAD_LIMIT=1 OPENBLAS_NUM_THREADS=1
	rc=0
	ctest -L "$labels" -j"$(nproc)" --output-on-failure || rc=$?
	if compgen -G "$dir/tsan/report*" >/dev/null; then
		cat "$dir"/tsan/report*
		echo "ThreadSanitizer: $(ls "$dir"/tsan/report* | wc -l) report file(s) in $dir/tsan" >&2
		exit 1
	fi
	exit $rc
fi
ctest -L "$labels" -j"$(nproc)" --output-on-failure

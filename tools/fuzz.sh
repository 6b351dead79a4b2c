#!/usr/bin/env bash
# fuzz.sh [--seconds N] — build the libFuzzer targets (clang, ASan+UBSan,
# CANDEX_FUZZ=ON) in build-fuzz, write their seed corpora from valid inputs
# (tests/fuzz/make_seeds, a small `candex build`), and run each target for
# N seconds (default 30). The corpus grows in build-fuzz/corpus/<target>;
# a crash is written to build-fuzz/crashes/ and makes the script exit 1.
#   fuzz_request   wire bytes -> request_id peek, budgeted decode, search validation
#   fuzz_shard     shard file bytes -> open, verify, decompress, decode parts
#   fuzz_manifest  manifest.json text -> parse, JSON round trip
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/build-fuzz
seconds=30
while [ $# -gt 0 ]; do
	case $1 in
	--seconds) seconds=$2; shift 2 ;;
	*) echo "usage: tools/fuzz.sh [--seconds N]" >&2; exit 2 ;;
	esac
done
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1

CC=clang CXX=clang++ bash "$root/tools/build.sh" "$dir" -DCANDEX_FUZZ=ON -DCANDEX_TESTS=OFF \
	-DCANDEX_SANITIZER=address,undefined

seeds=$dir/seeds
rm -rf "$seeds"
mkdir -p "$seeds/request" "$seeds/work" "$dir/crashes"
"$dir/tests/fuzz/make_seeds" request "$seeds/request"
"$dir/tests/fuzz/make_seeds" data "$seeds/work"
# two small versions: IVF with keys and an fp16 refine store in two shards,
# and IVF-PQ with an sq8 store, so every part kind and codec is seeded
"$dir/candex" build --quiet --input "$seeds/work/base.fvecs" --keys "$seeds/work/keys.txt" \
	--collection a --metric l2 --factory IVF4,Flat --refine fp16 --shards 2 --out "$seeds/work/index" >/dev/null
"$dir/candex" build --quiet --input "$seeds/work/base.fvecs" \
	--collection b --metric ip --factory IVF4,PQ2x4 --refine sq8 --out "$seeds/work/index" >/dev/null
for c in a b; do
	"$dir/tests/fuzz/make_seeds" files "$seeds/work/index/$c/CURRENT" "$seeds"
done

failed=0
for target in request shard manifest; do
	corpus=$dir/corpus/$target
	mkdir -p "$corpus"
	echo "fuzz.sh: fuzz_$target for ${seconds}s" >&2
	if ! "$dir/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
		-artifact_prefix="$dir/crashes/$target-" "$corpus" "$seeds/$target" 2>"$dir/fuzz_$target.log"; then
		echo "fuzz.sh: fuzz_$target found a crash (log: $dir/fuzz_$target.log):" >&2
		tail -40 "$dir/fuzz_$target.log" >&2
		failed=1
	fi
	grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$dir/fuzz_$target.log" | sed "s/^/fuzz_$target: /" >&2 || true
	echo "fuzz_$target: corpus $(ls "$corpus" | wc -l) inputs" >&2
done
exit $failed

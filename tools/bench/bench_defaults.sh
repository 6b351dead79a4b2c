#!/usr/bin/env bash
# bench_defaults.sh — BENCHMARKS.md's "Defaults" table: for each set, a
# `candex build` with no tuning flags and one with --tune-queries, each
# served by `candex serve`, measured through the server with no settings at
# all (`candex recall --url --defaults`): build time (tuning included), the
# structure chosen, 10-recall@10 and 100-recall@100 on queries no build saw,
# served QPS (one query a request, 2 client threads) and bytes per item.
#
#   tools/bench/bench_defaults.sh [--sets sift,glove,lastfm,tracks,podcasts,mnist] [--work DIR]
#
# Data: ../shared/data (sift-wallpapers, glove100, lastfm-als64), the sample
# catalogue (`candex sample`), and MNIST (tools/fetch-mnist.sh) when present.
# Query files are split in two: the first half tunes (--tune-queries), the
# second half is what recall is measured on, for both builds. The sample
# catalogue has its own tuning users. Prints markdown rows on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${CANDEX_BIN:-$root/build/candex}
data=$root/../shared/data
work=${TMPDIR:-/tmp}/candex-bench-defaults
sets=sift,glove,lastfm,tracks,podcasts,mnist
while [ $# -gt 0 ]; do
	case $1 in
	--sets) sets=$2; shift 2 ;;
	--work) work=$2; shift 2 ;;
	*) echo "usage: $0 [--sets LIST] [--work DIR]" >&2; exit 2 ;;
	esac
done
mkdir -p "$work"

# split FILE.fvecs OUT_A OUT_B: the first half of the rows, then the rest.
. "$root/tools/bench/split_fvecs.sh"

# field JSON KEY...: a value from candex recall's JSON output
field() {
	python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
r=d["results"][0]
print(" ".join(str(r.get(k, d.get(k))) for k in sys.argv[2:]))' "$@"
}

structure() {
	"$bin" inspect "$1" --json --no-lists | python3 -c 'import json,sys
m=json.load(sys.stdin)["manifest"]
t=m.get("structure",{}).get("transform","none")
print(m["factory"] + (" (ip as L2)" if t=="mips-l2" else "") + ", refine " + m["refine"])'
}

run_set() { # name metric base tune test
	local name=$1 metric=$2 base=$3 tune=$4 test=$5
	for mode in none tuned; do
		local out=$work/$name-$mode extra=()
		[ "$mode" = tuned ] && extra=(--tune-queries "$tune")
		rm -rf "$out"
		local t0 t1
		t0=$(date +%s.%N)
		"$bin" build --input "$base" --collection "$name" --metric "$metric" --out "$out" --quiet "${extra[@]}" >/dev/null
		t1=$(date +%s.%N)
		local url=ipc://$work/$name-$mode.ipc
		"$bin" serve --index-dir "$out" --listen "$url" --threads 2 2>"$out/serve.log" &
		local pid=$!
		for _ in $(seq 100); do
			"$bin" query --url "$url" --info >/dev/null 2>&1 && break
			sleep 0.1
		done
		local r10 r100
		"$bin" recall --url "$url" --collection "$name" --index "$out/$name" --base "$base" --queries "$test" --defaults \
			-k 10 --batch 1 --threads 2 --min-time 2 --json "$out/r10.json" --quiet --no-cache >/dev/null
		"$bin" recall --url "$url" --collection "$name" --index "$out/$name" --base "$base" --queries "$test" --defaults \
			-k 100 --batch 1 --threads 2 --min-time 2 --json "$out/r100.json" --quiet --no-cache >/dev/null
		kill -TERM "$pid"
		wait "$pid" || true
		read -r r10 qps10 bytes <<<"$(field "$out/r10.json" recall_at_k qps bytes_per_vector)"
		read -r r100 qps100 <<<"$(field "$out/r100.json" recall_at_k qps)"
		printf '| %s | %s | %s | %.1f | %s | %.4f | %.4f | %.0f / %.0f | %.0f |\n' "$name" "$metric" \
			"$([ "$mode" = tuned ] && echo "--tune-queries" || echo "none")" \
			"$(python3 -c "print($t1 - $t0)")" "$(structure "$out/$name")" "$r10" "$r100" "$qps10" "$qps100" "$bytes"
	done
}

echo "| set | metric | tuning flags | build s | structure chosen | R10@10 | R100@100 | served QPS k=10 / k=100 | B/item |"
echo "|---|---|---|---|---|---|---|---|---|"
IFS=, read -r -a list <<<"$sets"
for s in "${list[@]}"; do
	case $s in
	sift | glove | lastfm | mnist)
		case $s in
		sift) dir=$data/sift-wallpapers metric=l2 ;;
		glove) dir=$data/glove100 metric=cos ;;
		lastfm) dir=$data/lastfm-als64 metric=ip ;;
		mnist) dir=${CANDEX_CACHE:-$HOME/.cache/candex}/mnist metric=l2 ;;
		esac
		[ -f "$dir/base.fvecs" ] || { echo "$s: no $dir/base.fvecs, skipped" >&2; continue; }
		split "$dir/query.fvecs" "$work/$s-tune.fvecs" "$work/$s-test.fvecs"
		run_set "$s" "$metric" "$dir/base.fvecs" "$work/$s-tune.fvecs" "$work/$s-test.fvecs"
		;;
	tracks | podcasts)
		[ -d "$work/sample" ] || "$bin" sample --out "$work/sample" >/dev/null 2>&1
		metric=ip
		[ "$s" = podcasts ] && metric=cos
		run_set "$s" "$metric" "$work/sample/$s.fvecs" "$work/sample/users-$s-tune.fvecs" \
			"$work/sample/users-$s.fvecs"
		;;
	*) echo "unknown set $s" >&2; exit 2 ;;
	esac
done

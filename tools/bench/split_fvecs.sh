# split_fvecs.sh — sourced by the bench scripts: split FILE.fvecs OUT_A OUT_B
# writes the first half of the rows to OUT_A and the rest to OUT_B (queries
# to tune a build on, and queries to measure it with).
split() {
	python3 - "$1" "$2" "$3" <<'PY'
import struct, sys
data = open(sys.argv[1], 'rb').read()
d = struct.unpack('<i', data[:4])[0]
row = 4 + 4 * d
n = len(data) // row
h = n // 2
open(sys.argv[2], 'wb').write(data[:h * row])
open(sys.argv[3], 'wb').write(data[h * row:n * row])
PY
}

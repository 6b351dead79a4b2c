#!/usr/bin/env bash
# demo.sh — the README's main job: installs what is missing, builds candex,
# then runs `candex demo` (sample catalogue -> build -> serve -> query ->
# recall@10 -> clean stop) with indexes in index-data/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/tools/build.sh" "$root/build"
cd "$root"
exec "$root/build/candex" demo --index-dir "$root/index-data" "$@"

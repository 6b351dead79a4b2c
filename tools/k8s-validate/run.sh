#!/usr/bin/env bash
# run.sh DIR CANDEX — the k8s_manifests test: validate.cjs (with its self-test)
# over the manifests in DIR, with the npm packages tools/setup-deps.sh installed
# into the cache (kubernetes-models, yaml: tools/k8s-validate/package-lock.json).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CANDEX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/candex}
modules=$cache/k8s-validate/node_modules
if [ ! -d "$modules/kubernetes-models" ]; then
	echo "k8s-validate: $modules is missing: run tools/setup-deps.sh" >&2
	exit 1
fi
NODE_PATH=$modules exec node "$here/validate.cjs" "$1" "$2" --selftest

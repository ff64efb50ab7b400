#!/usr/bin/env bash
# Installs ONNX Runtime for Node (onnxruntime-node, CPU execution provider), pinned by
# scripts/onnxruntime/package-lock.json, into a cache folder outside the checkout:
#   ${LIGHTUNET_ORT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lightunet/onnxruntime-node}/node_modules
# The ONNX round-trip test (tests/onnx) and bench/bench_onnx.sh look there. Idempotent: when the
# cached copy was installed from the same lock file it returns at once, so CI fetches it once per
# machine. Needs node and npm (installs Debian's nodejs and npm when both are missing) and the npm
# registry; ONNXRUNTIME_NODE_INSTALL=skip keeps the package's install script from downloading the
# CUDA execution provider from NuGet (the CPU one is in the npm tarball).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${LIGHTUNET_ORT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lightunet/onnxruntime-node}
lock=$here/onnxruntime/package-lock.json

if [[ -f $dir/node_modules/onnxruntime-node/package.json ]] && cmp -s "$lock" "$dir/package-lock.json"; then
    echo "install-onnxruntime: onnxruntime-node $(node -p "require('$dir/node_modules/onnxruntime-node/package.json').version" 2>/dev/null || echo '?') present in $dir"
    exit 0
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "install-onnxruntime: node or npm missing, installing Debian's nodejs and npm"
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || { echo "install-onnxruntime: need root or sudo to install nodejs" >&2; exit 1; }
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends nodejs npm
fi

start=$SECONDS
mkdir -p "$dir"
rm -rf "$dir/node_modules"
cp "$here/onnxruntime/package.json" "$lock" "$dir/"
(cd "$dir" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error)
node -e "require('$dir/node_modules/onnxruntime-node')" ||
    { echo "install-onnxruntime: onnxruntime-node installed in $dir but does not load" >&2; exit 1; }
echo "install-onnxruntime: onnxruntime-node $(node -p "require('$dir/node_modules/onnxruntime-node/package.json').version") installed in $dir ($((SECONDS - start)) s)"

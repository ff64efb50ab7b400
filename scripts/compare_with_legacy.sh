#!/bin/bash
# Compares the model that walks the op graph with the hand-written one it replaced (main at
# cd20504): bit identity on small networks for every convolution algorithm, and workspace_bytes
# of both at the BraTS sizes (scripts/legacy_compare.cpp). Needs git history and g++.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
legacy_commit=${LEGACY_COMMIT:-cd20504}
work=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$here" worktree add --detach "$work/old" "$legacy_commit" >/dev/null 2>&1
# The old model and its layers, moved into namespace lightunet::legacy next to today's.
python3 - "$work/old/include/lightunet" "$work/legacy_unet.hpp" <<'PY'
import sys
old, out = sys.argv[1], sys.argv[2]
u = open(old + '/model/unet.hpp').read()
def body(path):
    s = open(path).read()
    return s[s.index('namespace lightunet::layers {') + len('namespace lightunet::layers {'):s.index('}  // namespace lightunet::layers')]
layers = 'namespace lightunet::legacy::layers {\n' + body(old + '/layers/conv.hpp') + body(old + '/layers/norm_act.hpp') + '}\n'
for inc in ['"../layers/conv.hpp"', '"../layers/norm_act.hpp"', '"../config/unet_config.hpp"', '"../loss/dice.hpp"',
            '"../tensor/tensor.hpp"', '"init.hpp"']:
    u = u.replace('#include ' + inc + '\n', '')
u = u.replace('#include "../backend/cpu/kernels.hpp"', '#include <lightunet/lightunet.hpp>')
u = u.replace('#ifdef __CUDACC__\n#include "../backend/cuda/kernels.cuh"  // UNet<config, cuda> when nvcc compiles the including file\n#endif\n', '')
u = u.replace('namespace lightunet {', 'namespace lightunet { namespace legacy {', 1)
u = u.replace('enum class Mode { train, eval };', 'using lightunet::Mode;')
u = u.replace('}  // namespace lightunet', '} }  // namespace lightunet::legacy')
i = u.index('namespace lightunet { namespace legacy {')
open(out, 'w').write(u[:i] + layers + u[i:])
PY
g++ -std=c++20 -O2 -march=native -fopenmp -I"$here/include" -I"$work" "$here/scripts/legacy_compare.cpp" -o "$work/compare"
"$work/compare"

#!/usr/bin/env bash
# Old against new CPU convolution kernels in one process: the headers of a git revision and
# those of the working tree, each compiled into a namespace of its own and linked into one
# program (bench/ab), which alternates their calls so that a shared host's drift falls on both
# alike. The numbers the notes quote for a kernel change come from here.
#
#   bench/ab_kernels.sh REV                        # the BraTS 3D and 2D levels, bf16
#   bench/ab_kernels.sh REV "3 128 128 16 16 wgrad" "2 176 144 24 24 backward fp32 30"
#
# A problem: dims h w cin cout op [fp32|bf16] [calls] (ab_main.cpp). AB_CXXFLAGS replaces the
# flags (default -O3 -march=native: the host's own instruction set).
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 REV [\"dims h w cin cout op [precision] [calls]\" ...]" >&2
    exit 2
fi
root=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
rev=$1
shift
git -C "$root" rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "ab_kernels: no revision '$rev' in $root" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/old"
git -C "$root" archive "$rev" include | tar -x -C "$work/old"
read -r -a flags <<< "${AB_CXXFLAGS:--O3 -DNDEBUG -march=native}"
cxx=${CXX:-g++}
common=(-std=gnu++20 -fopenmp "${flags[@]}" -isystem /usr/include/eigen3 -I"$root/bench/ab")
"$cxx" "${common[@]}" -I"$work/old/include" -DLIGHTUNET_CPU_TARGET=ab_old -DAB_VARIANT=old_kernels -DAB_WORKSPACE=old_workspace \
    -c "$root/bench/ab/variant.cpp" -o "$work/old.o" &
old_pid=$!
"$cxx" "${common[@]}" -I"$root/include" -DLIGHTUNET_CPU_TARGET=ab_new -DAB_VARIANT=new_kernels -DAB_WORKSPACE=new_workspace \
    -c "$root/bench/ab/variant.cpp" -o "$work/new.o"
wait "$old_pid"
"$cxx" "${common[@]}" -I"$root/include" -c "$root/bench/ab/ab_main.cpp" -o "$work/main.o"
"$cxx" -fopenmp "$work/main.o" "$work/old.o" "$work/new.o" -o "$work/ab_conv"

if [[ $# -eq 0 ]]; then
    # The brats3d (16..256 at 128^3) top two levels and a brats 2D recipe level (24.., 160 x 192 crops, one image).
    set -- "3 128 128 4 16 wgrad" "3 128 128 16 16 backward" "3 128 128 32 16 backward" "3 64 64 16 32 backward" \
        "3 64 64 32 32 backward" "2 160 192 24 24 backward"
fi
echo "old: $rev ($(git -C "$root" rev-parse --short "$rev")), new: the working tree; OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
for problem in "$@"; do
    read -r -a args <<< "$problem"
    "$work/ab_conv" "${args[@]}"
done

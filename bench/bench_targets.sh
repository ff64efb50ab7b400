#!/usr/bin/env bash
# bench_targets.sh [build folder] [rounds]
#
# The cost of one portable program (docs/performance.md, "One program for every x86 CPU"):
# bench_unet (kernels for this CPU, -march=native) against bench_unet_targets (the kernels of
# lightunet::cpu_targets, forced to each target this CPU runs), interleaved over a few rounds,
# 2D inference and training step, 2 threads. Prints the median per workload and target.
set -euo pipefail
build=${1:-build/release}
rounds=${2:-3}
bench="$build/bench"
[[ -x "$bench/bench_unet" && -x "$bench/bench_unet_targets" ]] ||
    { echo "bench_targets.sh: build bench_unet and bench_unet_targets in $build first"; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
filter='inference_2d/|training_step_2d'
for round in $(seq "$rounds"); do
    for target in native avx512 avx2 sse4.2; do
        if [[ $target == native ]]; then
            OMP_NUM_THREADS=2 "$bench/bench_unet" --benchmark_filter="$filter" --benchmark_format=json >"$out/${target}_$round.json"
        elif ! OMP_NUM_THREADS=2 LIGHTUNET_CPU_TARGET=$target "$bench/bench_unet_targets" --benchmark_filter="$filter" \
            --benchmark_format=json >"$out/${target}_$round.json" 2>"$out/${target}.err"; then
            echo "$target: not run here ($(tail -1 "$out/${target}.err"))"
            rm -f "$out/${target}_$round.json"
        fi
    done
done
python3 - "$out" <<'PY'
import collections, glob, json, os, statistics, sys
times = collections.defaultdict(list)
rates = collections.defaultdict(list)
kernels = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    target = os.path.basename(path).rsplit("_", 1)[0]
    report = json.load(open(path))
    kernels[target] = report["context"].get("cpu_kernels", "?")
    for b in report["benchmarks"]:
        name = b["name"].split("/")[0]
        times[name, target].append(b["real_time"])
        rates[name, target].append(b.get("GFLOPs", 0.0))
for (name, target) in sorted(times):
    t = times[name, target]
    print(f"{name:18s} {target:7s} {kernels[target]:32s} median {statistics.median(t):9.1f} ms "
          f"{statistics.median(rates[name, target]):6.0f} GFLOP/s  runs {[round(x) for x in t]}")
PY

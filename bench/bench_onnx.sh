#!/usr/bin/env bash
# lightunet inference against ONNX Runtime running the same exported weights: the BraTS
# program's 2D network (regions head) on a 240x240 slice and its 3D network on a 128^3 patch,
# batch 1, 2 threads each side. Rounds interleave the two sides (the host is shared and its
# speed drifts); the report gives each side's median over the rounds' medians.
#
#   bash bench/bench_onnx.sh [BUILD_DIR]      (default build/release; configured with libonnx-dev)
#
# Env: ROUNDS (default 3), THREADS (default 2), LIGHTUNET_BENCH_3D (cube edge, default 128),
#      OUT (JSON lines, default BUILD_DIR/bench_onnx/results.jsonl).
# Needs onnxruntime-node: scripts/install-onnxruntime.sh (run here when it is missing).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build/release}
rounds=${ROUNDS:-3}
threads=${THREADS:-2}
work=$build/bench_onnx
out=${OUT:-$work/results.jsonl}
cube=${LIGHTUNET_BENCH_3D:-128}
export LIGHTUNET_BENCH_3D=$cube OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

cmake --build "$build" --target bench_onnx -j "${LIGHTUNET_JOBS:-2}" >&2
bash "$root/scripts/install-onnxruntime.sh" >&2
mkdir -p "$work"
: > "$out"
"$build/bench/bench_onnx" --export "$work" >&2

model=$(lscpu | sed -n 's/^Model name: *//p')
family=$(lscpu | sed -n 's/^CPU family: *//p')
cpu_model=$(lscpu | sed -n 's/^Model: *//p')
isa=$(grep -o -w -E 'avx512f|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "host: $model (family $family, model $cpu_model), $(nproc) CPUs, flags: $isa; lightunet: -march=native" \
     "(its kernels' xsimd arch is in each lightunet line); ONNX Runtime: onnxruntime-node, CPU EP (MLAS picks its" \
     "kernels for the CPU at run time)" >&2

run_ours() {  # benchmark name -> median ms (one JSON line)
    "$build/bench/bench_onnx" --threads "$threads" --benchmark_filter="^$1/" --benchmark_format=json 2>/dev/null |
        /usr/bin/python3 -c '
import json, sys
b = json.load(sys.stdin)["benchmarks"][0]
print(json.dumps({"side": "lightunet", "workload": sys.argv[1], "ms": round(b["real_time"], 3), "label": b.get("label", "")}))' "$1"
}
run_ort() {  # name dims warmup repeats -> median ms (one JSON line)
    node "$root/scripts/onnxruntime/run_onnx.cjs" --threads "$threads" --warmup "$3" --repeats "$4" \
        "$work/$1.onnx" "$work/$1.input.f32" "$2" - |
        /usr/bin/python3 -c '
import json, sys
r = json.loads(sys.stdin.readline())
print(json.dumps({"side": "onnxruntime", "workload": sys.argv[1], "ms": r["median_ms"], "label": "onnxruntime-node " + r["onnxruntime_node"]}))' "$1"
}

for ((r = 1; r <= rounds; ++r)); do
    echo "== round $r/$rounds" >&2
    run_ours brats_2d_240 | tee -a "$out" >&2
    run_ort brats_2d 1,4,240,240 2 10 | tee -a "$out" >&2
    run_ours brats_3d | tee -a "$out" >&2
    run_ort brats_3d "1,4,$cube,$cube,$cube" 1 3 | tee -a "$out" >&2
done

/usr/bin/python3 - "$out" "$cube" "$threads" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cube, threads = sys.argv[2], sys.argv[3]
def med(side, names):
    xs = [r["ms"] for r in rows if r["side"] == side and r["workload"] in names]
    return statistics.median(xs), len(xs)
print(f"| network (batch 1, {threads} threads) | lightunet ms | ONNX Runtime ms | ORT / lightunet |")
print("|---|---|---|---|")
for label, ours, ort in [("BraTS 2D, 240x240", "brats_2d_240", "brats_2d"), (f"BraTS 3D, {cube}^3", "brats_3d", "brats_3d")]:
    (a, n), (b, _) = med("lightunet", {ours}), med("onnxruntime", {ort})
    print(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
print(f"(medians over {n} interleaved rounds; {sys.argv[1]})")
EOF

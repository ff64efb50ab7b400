#!/usr/bin/env python3
"""Markdown tables from bench_conv's vs_onednn results (JSON): per convolution of the two BraTS
networks, ours and oneDNN's GFLOP/s in each pass with ours as % of the peak bench_conv measured
in the same run (fma_peak for fp32, bf16_dot_peak for bf16), then each network's summed times.

    OMP_NUM_THREADS=2 build/dev/bench/bench_conv --benchmark_filter='fma_peak|bf16_dot_peak|vs_onednn' \\
        --benchmark_out=conv.json --benchmark_out_format=json
    python3 bench/onednn_table.py conv.json
"""
import json
import re
import sys

PASSES = ("fwd", "dgrad", "wgrad")


def shape_of(name):
    args = dict(re.findall(r"(\w+):(\d+)", name))
    return {k: int(args[k]) for k in ("dims", "size", "cin", "cout", "k", "algo")}


def direct_flops(s):
    voxels = s["size"] ** s["dims"]
    return 2.0 * s["cin"] * s["cout"] * s["k"] ** s["dims"] * voxels


def main(path):
    with open(path) as f:
        results = json.load(f)["benchmarks"]
    peaks = {}
    rows = {0: [], 2: []}
    for r in results:
        if r.get("run_type") == "aggregate":
            continue
        name = r["name"]
        if name.startswith("fma_peak"):
            peaks[0] = r["GFLOPs"]
        elif name.startswith("bf16_dot_peak"):
            peaks[2] = r["GFLOPs"]
        elif name.startswith("vs_onednn/"):
            s = shape_of(name)
            rows[s["algo"]].append((s, r))
    for algo, title in ((0, "fp32 (automatic algorithm)"), (2, "bf16 operands, fp32 results")):
        if not rows[algo]:
            continue
        peak = peaks.get(algo)
        print(f"### {title}; peak {peak:.0f} GFLOP/s\n" if peak else f"### {title}; peak not measured\n")
        print("| shape | fwd ours (% of peak) | fwd oneDNN | dgrad ours | dgrad oneDNN | wgrad ours | wgrad oneDNN | oneDNN kernels (fwd / dgrad / wgrad) |")
        print("|---|---|---|---|---|---|---|---|")
        totals = {}
        for s, r in rows[algo]:
            kernel = "x".join([str(s["k"])] * s["dims"])
            size = f"{s['size']}^{s['dims']}"
            cells = []
            for p in PASSES:
                ours, theirs = r[f"{p}_ours_GFLOPs"], r[f"{p}_onednn_GFLOPs"]
                pct = f" ({100 * ours / peak:.0f} %)" if peak else ""
                cells += [f"{ours:.0f}{pct}", f"{theirs:.0f}"]
                net = totals.setdefault(s["dims"], {q: [0.0, 0.0] for q in PASSES})
                net[p][0] += direct_flops(s) / (ours * 1e9) * 1e3
                net[p][1] += direct_flops(s) / (theirs * 1e9) * 1e3
            onednn = r.get("label", "").split("oneDNN ")[-1]
            print(f"| {s['dims']}D {size}, {s['cin']} -> {s['cout']}, {kernel} | " + " | ".join(cells) + f" | {onednn} |")
        print("\n| network | Fprop ours / oneDNN | Dgrad | Wgrad |")
        print("|---|---|---|---|")
        for dims in sorted(totals):
            cells = [f"{a:.0f} / {b:.0f} ms ({a / b:.2f}x)" for a, b in (totals[dims][p] for p in PASSES)]
            print(f"| {dims}D | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: onednn_table.py RESULTS.json (bench_conv --benchmark_out_format=json)")
    main(sys.argv[1])

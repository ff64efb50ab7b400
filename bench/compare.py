#!/usr/bin/python3
"""Interleaved comparison of lightunet, PyTorch and ONNX Runtime on the BraTS workloads.

The host is shared and its speed drifts, so each round runs every framework on a workload
back to back, and the report gives per-round ratios and their medians.

    /usr/bin/python3 bench/compare.py --lightunet build/release/bench/bench_unet --rounds 3 --out results.json

Needs: bench/reference set up (npm install, export_onnx.py) for ONNX Runtime; skip it with --no-ort.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "reference")
WORKLOADS = {
    # name: (lightunet benchmark, torch workload, onnx model or None, repeats)
    "2d_infer": ("inference_2d", "2d_infer", "unet2d_infer.onnx", 10),
    "2d_train": ("training_step_2d", "2d_train", None, 3),
    "3d_infer": ("inference_3d", "3d_infer", "unet3d_infer.onnx", 3),
    "3d_train": ("training_step_3d", "3d_train", None, 2),
}


def run_json_lines(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_lightunet(binary, bench, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    # Exactly this benchmark: its name is a prefix of others (inference_2d_reprepare, *_bf16).
    out = subprocess.run([binary, f"--benchmark_filter=^{bench}(/|$)", "--benchmark_format=json"], check=True,
                         capture_output=True, text=True, env=env).stdout
    result = json.loads(out)["benchmarks"][0]
    scale = {"ms": 1.0, "us": 1e-3, "ns": 1e-6, "s": 1e3}[result["time_unit"]]
    return {"median_ms": result["real_time"] * scale, "peak_rss_mb": result.get("peak_RSS_MiB")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lightunet", required=True, help="path to the bench_unet binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="lightunet's convolution operands (bf16: the *_bf16 benchmarks; the peers stay fp32)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    rows = {w: {"lightunet": [], "torch": [], "ort": [], "rss": {}} for w in args.workloads.split(",")}
    for r in range(args.rounds):
        for w in rows:
            bench, torch_wl, onnx, repeats = WORKLOADS[w]
            ours = run_lightunet(args.lightunet, bench + ("_bf16" if args.precision == "bf16" else ""), args.threads)
            torch = run_json_lines([sys.executable, os.path.join(REF, "bench_torch.py"), "--workload", torch_wl,
                                    "--threads", str(args.threads), "--warmup", "1", "--repeats", str(repeats)])[0]
            rows[w]["lightunet"].append(ours["median_ms"])
            rows[w]["torch"].append(torch["median_ms"])
            rows[w]["rss"]["lightunet"] = ours["peak_rss_mb"]
            rows[w]["rss"]["torch"] = torch.get("peak_rss_mb")
            line = f"round {r + 1} {w}: lightunet {ours['median_ms']:.1f} ms, torch {torch['median_ms']:.1f} ms"
            if onnx and not args.no_ort:
                ort = run_json_lines(["node", os.path.join(REF, "bench_ort.mjs"), "--model",
                                      os.path.join(REF, "models", onnx), "--workload", w, "--threads",
                                      str(args.threads)])[0]
                rows[w]["ort"].append(ort["median_ms"])
                rows[w]["rss"]["ort"] = ort.get("peak_rss_mb")
                line += f", onnxruntime {ort['median_ms']:.1f} ms"
            print(line, file=sys.stderr, flush=True)

    print("| workload | lightunet ms | PyTorch ms | ONNX Runtime ms | PyTorch / lightunet | ORT / lightunet | peak RSS MB (ours / torch / ort) |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for w, d in rows.items():
        med = {k: statistics.median(v) if v else None for k, v in d.items() if k != "rss"}
        ratio_t = statistics.median(t / o for t, o in zip(d["torch"], d["lightunet"]))
        ratio_o = statistics.median(t / o for t, o in zip(d["ort"], d["lightunet"])) if d["ort"] else None
        summary[w] = {"median_ms": med, "torch_over_lightunet": ratio_t, "ort_over_lightunet": ratio_o,
                      "rounds": d, "peak_rss_mb": d["rss"]}
        fmt = lambda x: "–" if x is None else f"{x:.0f}"
        print(f"| {w} | {fmt(med['lightunet'])} | {fmt(med['torch'])} | {fmt(med['ort'])} | {ratio_t:.2f} | "
              f"{'–' if ratio_o is None else f'{ratio_o:.2f}'} | {fmt(d['rss'].get('lightunet'))} / "
              f"{fmt(d['rss'].get('torch'))} / {fmt(d['rss'].get('ort'))} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()

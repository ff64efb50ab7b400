#!/usr/bin/python3
"""Time the four reference workloads with PyTorch (CPU, float32).

Run with Debian's interpreter, one workload per process so that peak RSS is per workload:

    /usr/bin/python3 bench/reference/bench_torch.py --workload 2d_infer --threads 2

Workloads:
  2d_infer  dims 2, in 4, classes 4, widths 32..512, batch norm, relu, max_pool,
            transposed_conv, softmax; input 1x4x240x240, eval mode, no_grad
  2d_train  same network, batch 8x4x240x240, train mode: forward + Dice + backward + Adam step
  3d_infer  dims 3, in 4, classes 4, widths 16..256, instance norm, relu, max_pool,
            transposed_conv, softmax; input 1x4x128x128x128, eval, no_grad
  3d_train  same network, batch 1, forward + Dice + backward + Adam step

Prints one JSON line per workload: median/min/max ms over --repeats timed runs after
--warmup untimed runs, and peak RSS (ru_maxrss) of the process.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from unet_torch import UNet, dice_loss, one_hot_targets  # noqa: E402

WORKLOADS = {
    "2d_infer": dict(dims=2, widths=[32, 64, 128, 256, 512], norm="batch", batch=1,
                     size=(240, 240), train=False),
    "2d_train": dict(dims=2, widths=[32, 64, 128, 256, 512], norm="batch", batch=8,
                     size=(240, 240), train=True),
    "3d_infer": dict(dims=3, widths=[16, 32, 64, 128, 256], norm="instance", batch=1,
                     size=(128, 128, 128), train=False),
    "3d_train": dict(dims=3, widths=[16, 32, 64, 128, 256], norm="instance", batch=1,
                     size=(128, 128, 128), train=True),
}
DEFAULT_REPEATS = {"2d_infer": 20, "2d_train": 5, "3d_infer": 5, "3d_train": 3}


def blas_libs():
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                if any(k in p for k in ("blas", "dnnl", "mkl")):
                    libs.add(os.path.basename(p))
    except OSError:
        pass
    return sorted(libs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    repeats = args.repeats or DEFAULT_REPEATS[args.workload]
    w = WORKLOADS[args.workload]

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    classes, cin = 4, 4
    model = UNet(dims=w["dims"], in_channels=cin, classes=classes, widths=w["widths"],
                 norm=w["norm"], act="relu", down="max_pool", up="transposed_conv",
                 head="softmax")
    x = torch.randn(w["batch"], cin, *w["size"])

    if w["train"]:
        model.train()
        labels = torch.randint(0, classes, (w["batch"], *w["size"]))
        target = one_hot_targets(labels, classes, dtype=x.dtype)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = dice_loss(model(x), target)
            loss.backward()
            opt.step()
            return loss
    else:
        model.eval()

        def step():
            with torch.no_grad():
                return model(x)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rec = {
        "framework": "torch",
        "workload": args.workload,
        "dims": w["dims"],
        "batch": w["batch"],
        "input": [w["batch"], cin, *w["size"]],
        "widths": w["widths"],
        "norm": w["norm"],
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": repeats,
        "median_ms": round(statistics.median(times), 3),
        "min_ms": round(min(times), 3),
        "max_ms": round(max(times), 3),
        "peak_rss_mb": round(rss_kib / 1024.0, 1),
        "torch": torch.__version__,
        "blas": blas_libs(),
        "host": platform.node(),
    }
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()

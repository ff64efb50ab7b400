#!/usr/bin/python3
"""PyTorch (cuDNN) on the GPU: the same workloads as bench/bench_cuda.cu, timed the same way
(CUDA events around each repetition, median/min/max over --repeats after 2 warm-up runs).

    python3 bench/reference/bench_torch_cuda.py [--repeats 10] [--filter SUBSTRING]

Each case runs twice: with TF32 convolutions off (fp32, as lightunet's default) and on
(PyTorch's default for cuDNN convolutions). cudnn.benchmark is on (best algorithm per shape).
Prints one line per case in bench_cuda's format, then a JSON line with the environment.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from unet_torch import UNet, dice_loss, one_hot_targets  # noqa: E402

NETS = {
    "2d": dict(dims=2, widths=[32, 64, 128, 256, 512], norm="batch"),
    "3d": dict(dims=3, widths=[16, 32, 64, 128, 256], norm="instance"),
}


def time_cuda(fn, repeats):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), min(times), max(times)


def report(name, t, flops=0.0):
    med, lo, hi = t
    line = f"{name:<58s} median {med:9.3f} ms  min {lo:9.3f}  max {hi:9.3f}"
    if flops:
        line += f"  {flops / (med * 1e-3) * 1e-9:8.0f} GFLOP/s"
    print(line, flush=True)


def conv_cases(tag, dims, extent, cin, cout, batch, repeats, suffix):
    dev = "cuda"
    x = torch.full((batch, cin, *extent), 0.5, device=dev, requires_grad=True)
    w = torch.full((cout, cin, *([3] * dims)), 0.01, device=dev, requires_grad=True)
    b = torch.zeros(cout, device=dev)
    conv = F.conv2d if dims == 2 else F.conv3d
    flops = 2.0 * batch * cin * cout * (3 ** dims) * float(torch.tensor(extent).prod())
    y = conv(x, w, b, padding=1)
    dy = torch.full_like(y, 0.25)
    report(f"op/{tag}/conv_fprop{suffix}", time_cuda(lambda: conv(x, w, b, padding=1), repeats), flops)

    def dgrad():
        torch.autograd.grad(conv(x, w.detach(), b, padding=1), x, dy)

    def wgrad():
        torch.autograd.grad(conv(x.detach(), w, b, padding=1), w, dy)

    # Autograd includes the forward: time it alone and subtract (reported as such).
    fwd = time_cuda(lambda: conv(x, w, b, padding=1), repeats)[0]
    for name, fn in (("dgrad", dgrad), ("wgrad", wgrad)):
        med, lo, hi = time_cuda(fn, repeats)
        report(f"op/{tag}/conv_{name}{suffix} (minus fprop)", (med - fwd, lo - fwd, hi - fwd), flops)


def net_cases(key, batch, size, repeats, suffix):
    cfg = NETS[key]
    torch.manual_seed(0)
    model = UNet(dims=cfg["dims"], in_channels=4, classes=4, widths=cfg["widths"], norm=cfg["norm"], act="relu",
                 down="max_pool", up="transposed_conv", head="softmax").cuda()
    x = torch.randn(batch, 4, *size, device="cuda")
    labels = torch.randint(0, 4, (batch, *size), device="cuda")
    target = one_hot_targets(labels, 4, dtype=x.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tag = f"{key}_{'x'.join(map(str, size)) if key == '2d' else size[0]}_b{batch}"

    def infer():
        with torch.no_grad():
            model(x)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = dice_loss(model(x), target)
        loss.backward()
        opt.step()
        return loss.item()  # lightunet's train_step returns the loss to the host too

    model.eval()
    report(f"net/{tag}/infer{suffix}", time_cuda(infer, repeats))
    model.train()
    report(f"net/{tag}/train_step{suffix}", time_cuda(step, repeats))
    del model, opt, x, labels, target
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    print(json.dumps({"torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                      "device": torch.cuda.get_device_name(0)}), flush=True)
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        suffix = "_tf32" if tf32 else "_fp32"
        cases = [
            ("op/2d_240x240_b8_32to32", lambda: conv_cases("2d_240x240_b8_32to32", 2, (240, 240), 32, 32, 8, args.repeats, suffix)),
            ("op/2d_240x240_b32_32to32", lambda: conv_cases("2d_240x240_b32_32to32", 2, (240, 240), 32, 32, 32, args.repeats, suffix)),
            ("op/2d_30x30_b8_256to256", lambda: conv_cases("2d_30x30_b8_256to256", 2, (30, 30), 256, 256, 8, args.repeats, suffix)),
            ("op/3d_128_b2_16to16", lambda: conv_cases("3d_128_b2_16to16", 3, (128, 128, 128), 16, 16, 2, args.repeats, suffix)),
            ("op/3d_32_b2_64to64", lambda: conv_cases("3d_32_b2_64to64", 3, (32, 32, 32), 64, 64, 2, args.repeats, suffix)),
            ("net/2d_240x240_b8", lambda: net_cases("2d", 8, (240, 240), args.repeats, suffix)),
            ("net/2d_240x240_b32", lambda: net_cases("2d", 32, (240, 240), args.repeats, suffix)),
            ("net/3d_128_b2", lambda: net_cases("3d", 2, (128, 128, 128), args.repeats, suffix)),
        ]
        for name, fn in cases:
            if args.filter in name:
                try:
                    fn()
                except Exception as e:  # report and go on (e.g. out of memory)
                    print(f"{name}{suffix} FAILED: {e}", flush=True)
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

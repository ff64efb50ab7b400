#!/usr/bin/python3
"""Export the two reference inference models to ONNX (float32, eval mode).

    /usr/bin/python3 bench/reference/export_onnx.py --out-dir bench/reference/models

Writes unet2d_infer.onnx (input 1x4x240x240, batch norm folded by the exporter in eval
mode) and unet3d_infer.onnx (input 1x4x128x128x128, instance norm). Static shapes.
Weights are random (seeded): only timing matters. torch.onnx.export in torch 1.13 does not
need the `onnx` python package.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from unet_torch import UNet  # noqa: E402

MODELS = {
    "unet2d_infer": dict(dims=2, widths=[32, 64, 128, 256, 512], norm="batch",
                         shape=(1, 4, 240, 240)),
    "unet3d_infer": dict(dims=3, widths=[16, 32, 64, 128, 256], norm="instance",
                         shape=(1, 4, 128, 128, 128)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "models"))
    ap.add_argument("--opset", type=int, default=13)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(0)
    for name, m in MODELS.items():
        model = UNet(dims=m["dims"], in_channels=4, classes=4, widths=m["widths"],
                     norm=m["norm"], act="relu", down="max_pool", up="transposed_conv",
                     head="softmax").eval()
        x = torch.randn(*m["shape"])
        path = os.path.join(args.out_dir, name + ".onnx")
        with torch.no_grad():
            torch.onnx.export(model, x, path, opset_version=args.opset,
                              input_names=["input"], output_names=["probs"],
                              do_constant_folding=True)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB), input {list(m['shape'])}")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""The PyTorch reference recipe of issue 14: a plain 2D U-Net trained on real BraTS NIfTI cases in
a wall-clock budget, then predicted into NIfTI segmentations that `brats evaluate` scores.

Run with Debian's interpreter (/usr/bin/python3), which owns python3-torch:

    /usr/bin/python3 bench/reference/train_brats_reference.py --train DIR --test DIR \
        --out DIR --minutes 38 --threads 2

The recipe (docs/accuracy.md), kept fixed on purpose:
- network: unet_torch.UNet(dims=2, widths 32..512, batch norm, ReLU, softmax head), 7.8 M parameters;
- per case and modality a z-score over the brain (the voxels where any modality is non-zero),
  0 outside it; a fixed window of --window X x Y voxels centred on the brain's bounding box;
- axial slices, batches of --batch with half the slices drawn from slices that hold tumour,
  the other half from any slice of the brain; random flips along both in-plane axes;
- loss: cross-entropy over the 4 classes + soft Dice over the 3 tumour classes (necrosis,
  edema, enhancing) computed over the whole batch;
- Adam, lr 1e-3 with cosine decay over the wall-clock budget (training ends when it is spent);
- prediction: every axial slice of the brain's window, argmax, BraTS labels 0/1/2/4, 0 outside.

Writes <out>/pred/<case>_seg.nii.gz, <out>/model.pt, <out>/train.csv (step, seconds, loss, lr) and
prints a summary line. Cases are folders of <case>_{flair,t1,t1ce,t2}[,_seg].nii.gz (BraTS
2018-2021) or BraTS-...-{t2f,t1n,t1c,t2w}[,-seg].nii.gz (2023+).
"""
from __future__ import annotations

import argparse
import gzip
import math
import os
import random
import struct
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from unet_torch import UNet  # noqa: E402

NAMINGS = (("_", ("flair", "t1", "t1ce", "t2"), "seg", {1: 1, 2: 2, 4: 3}),
           ("-", ("t2f", "t1n", "t1c", "t2w"), "seg", {1: 1, 2: 2, 3: 3}))
NIFTI_DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64,
                256: np.int8, 512: np.uint16, 768: np.uint32}


def read_bytes(path):
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if path.endswith(".gz") else raw


def read_nifti(path):
    """(array indexed [x, y, z], header bytes up to vox_offset) of a NIfTI-1 single file."""
    raw = read_bytes(path)
    if len(raw) < 352 or struct.unpack_from("<i", raw, 0)[0] != 348:
        raise ValueError(f"{path}: not a little-endian NIfTI-1 file")
    dims = struct.unpack_from("<8h", raw, 40)
    datatype = struct.unpack_from("<h", raw, 70)[0]
    offset = int(struct.unpack_from("<f", raw, 108)[0])
    slope, inter = struct.unpack_from("<2f", raw, 112)
    if datatype not in NIFTI_DTYPES:
        raise ValueError(f"{path}: NIfTI datatype {datatype} not supported")
    shape = tuple(int(d) for d in dims[1:1 + dims[0]])[:3]
    count = shape[0] * shape[1] * shape[2]
    data = np.frombuffer(raw, dtype=NIFTI_DTYPES[datatype], count=count, offset=offset)
    data = data.reshape(shape, order="F")
    if slope not in (0.0, 1.0) or inter != 0.0:  # slope 0 means "no scaling" in NIfTI-1
        data = data.astype(np.float32) * (slope if slope != 0.0 else 1.0) + inter
    return data, raw[:offset]


def write_labels(path, labels, template_header):
    """labels (uint8, [x, y, z]) with the template's geometry, as uint8 without scaling."""
    header = bytearray(template_header)
    struct.pack_into("<h", header, 70, 2)  # datatype uint8
    struct.pack_into("<h", header, 72, 8)  # bitpix
    struct.pack_into("<2f", header, 112, 1.0, 0.0)  # scl_slope, scl_inter
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(bytes(header))
        f.write(np.asarray(labels, dtype=np.uint8).tobytes(order="F"))


def case_files(folder):
    case = os.path.basename(os.path.normpath(folder))
    for sep, modalities, seg, mapping in NAMINGS:
        images = [os.path.join(folder, f"{case}{sep}{m}.nii.gz") for m in modalities]
        if all(os.path.exists(p) for p in images):
            labels = os.path.join(folder, f"{case}{sep}{seg}.nii.gz")
            return case, images, labels, mapping
    raise ValueError(f"{folder}: no BraTS images (<case>_flair.nii.gz ... or <case>-t2f.nii.gz ...)")


def window_of(mask, size):
    """Start of a size[0] x size[1] window centred on the mask's in-plane bounding box."""
    starts = []
    for axis, extent in enumerate(size):
        other = tuple(a for a in range(3) if a != axis)
        present = np.nonzero(mask.any(axis=other))[0]
        centre = (present[0] + present[-1] + 1) // 2 if present.size else mask.shape[axis] // 2
        if extent > mask.shape[axis]:
            raise ValueError(f"window {size} larger than the volume {mask.shape}")
        starts.append(int(min(max(centre - extent // 2, 0), mask.shape[axis] - extent)))
    return starts


class Case:
    def __init__(self, folder, window):
        self.id, images, self.labels_path, mapping = case_files(folder)
        volumes = []
        for p in images:
            v, header = read_nifti(p)
            volumes.append(np.asarray(v, dtype=np.float32))
            if p == images[0]:
                self.header = header
        self.shape = volumes[0].shape
        if any(v.shape != self.shape for v in volumes):
            raise ValueError(f"{folder}: modalities differ in shape")
        brain = np.zeros(self.shape, dtype=bool)
        for v in volumes:
            brain |= v != 0
        zs = np.nonzero(brain.any(axis=(0, 1)))[0]
        self.z_range = (int(zs[0]), int(zs[-1]) + 1) if zs.size else (0, self.shape[2])
        self.x0, self.y0 = window_of(brain, window)
        wx, wy = window
        sx, sy = slice(self.x0, self.x0 + wx), slice(self.y0, self.y0 + wy)
        z0, z1 = self.z_range
        # [z, channel, x, y] slices of the window, z-scored over the brain per modality
        self.images = np.zeros((z1 - z0, len(volumes), wx, wy), dtype=np.float32)
        for c, v in enumerate(volumes):
            inside = v[brain]
            mean, std = float(inside.mean()), float(inside.std()) + 1e-8
            normalised = np.where(brain, (v - mean) / std, 0.0).astype(np.float32)
            self.images[:, c] = np.transpose(normalised[sx, sy, z0:z1], (2, 0, 1))
        self.labels = None
        self.tumour_slices = []
        if os.path.exists(self.labels_path):
            seg, _ = read_nifti(self.labels_path)
            seg = np.asarray(seg)
            classes = np.zeros(seg.shape, dtype=np.int64)
            for label, cls in mapping.items():
                classes[seg == label] = cls
            self.labels = np.ascontiguousarray(np.transpose(classes[sx, sy, z0:z1], (2, 0, 1)))
            self.tumour_slices = [z for z in range(z1 - z0) if self.labels[z].any()]


def loss_fn(logits, target):
    """Cross-entropy over all classes + soft Dice over the tumour classes, over the batch."""
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    dice = (2 * intersection + 1e-5) / (probs.sum(dims) + onehot.sum(dims) + 1e-5)
    return ce + (1 - dice).mean()


def batch_of(cases, batch, rng):
    images, labels = [], []
    for i in range(batch):
        if i < batch // 2:
            case = rng.choice([c for c in cases if c.tumour_slices])
            z = rng.choice(case.tumour_slices)
        else:
            case = rng.choice(cases)
            z = rng.randrange(case.images.shape[0])
        x, y = case.images[z], case.labels[z]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[::-1]
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        images.append(np.ascontiguousarray(x))
        labels.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def train(cases, args, log):
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = UNet(dims=2, in_channels=4, classes=4, widths=[32, 64, 128, 256, 512], norm="batch")
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    budget = args.minutes * 60.0
    model.train()
    start = time.monotonic()
    step, losses = 0, []
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= budget:
            break
        lr = args.lr * 0.5 * (1.0 + math.cos(math.pi * elapsed / budget))
        for group in optimiser.param_groups:
            group["lr"] = lr
        images, labels = batch_of(cases, args.batch, rng)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model.forward_logits(images), labels)
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {step}: loss {loss.item()}")
        loss.backward()
        optimiser.step()
        step += 1
        losses.append(loss.item())
        log.write(f"{step},{time.monotonic() - start:.3f},{losses[-1]:.6f},{lr:.3e}\n")
        if step % args.print_every == 0:
            recent = losses[-args.print_every:]
            print(f"[reference] step {step}  {time.monotonic() - start:.0f} s  loss {sum(recent) / len(recent):.4f}"
                  f"  lr {lr:.2e}", flush=True)
    return model, step, time.monotonic() - start


def predict(model, case, window, batch):
    model.eval()
    classes = np.zeros(case.images.shape[0:1] + case.images.shape[2:], dtype=np.int64)
    with torch.no_grad():
        for z in range(0, case.images.shape[0], batch):
            logits = model.forward_logits(torch.from_numpy(case.images[z:z + batch]))
            classes[z:z + batch] = logits.argmax(dim=1).numpy()
    to_brats = np.array([0, 1, 2, 4], dtype=np.uint8)
    labels = np.zeros(case.shape, dtype=np.uint8)
    z0, z1 = case.z_range
    labels[case.x0:case.x0 + window[0], case.y0:case.y0 + window[1], z0:z1] = \
        np.transpose(to_brats[classes], (1, 2, 0))
    return labels


def case_folders(root):
    return sorted(os.path.join(root, d) for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="folder of labelled case folders")
    parser.add_argument("--test", required=True, help="folder of case folders to predict")
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=38.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--window", default="160x192", help="X x Y voxels of the in-plane window")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--print-every", type=int, default=50)
    args = parser.parse_args()
    window = tuple(int(v) for v in args.window.lower().split("x"))
    if len(window) != 2 or min(window) < 16 or any(v % 16 for v in window):
        parser.error(f"--window {args.window}: two multiples of 16 (the network pools 4 times)")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    load_start = time.monotonic()
    cases = [Case(f, window) for f in case_folders(args.train)]
    cases = [c for c in cases if c.labels is not None]
    if not cases or not any(c.tumour_slices for c in cases):
        raise SystemExit(f"{args.train}: no labelled case with tumour")
    print(f"[reference] {len(cases)} training cases loaded in {time.monotonic() - load_start:.1f} s; "
          f"window {window[0]} x {window[1]}, batch {args.batch}, {args.threads} threads, "
          f"{args.minutes} min", flush=True)

    os.makedirs(os.path.join(args.out, "pred"), exist_ok=True)
    with open(os.path.join(args.out, "train.csv"), "w") as log:
        log.write("step,seconds,loss,lr\n")
        model, steps, seconds = train(cases, args, log)
    torch.save(model.state_dict(), os.path.join(args.out, "model.pt"))
    del cases

    predict_start = time.monotonic()
    tests = case_folders(args.test)
    for folder in tests:
        case = Case(folder, window)
        # The prediction takes the name the case's own segmentation has (or would have).
        write_labels(os.path.join(args.out, "pred", os.path.basename(case.labels_path)),
                     predict(model, case, window, 16), case.header)
    print(f"[reference] trained {steps} steps in {seconds:.0f} s ({seconds / max(steps, 1):.2f} s/step); "
          f"predicted {len(tests)} cases in {time.monotonic() - predict_start:.1f} s", flush=True)


if __name__ == "__main__":
    main()

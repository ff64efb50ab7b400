"""PyTorch reference implementation of the lightunet network (docs/design.md).

Run with Debian's interpreter (/usr/bin/python3), which owns python3-torch.

The module mirrors one `lightunet::UNetConfig`:

    UNet(dims=2, in_channels=4, classes=4, widths=[32, 64, 128, 256, 512],
         norm="batch", groups=8, act="relu", leaky_slope=0.01,
         down="max_pool", up="transposed_conv", head="softmax")

`forward` returns head *probabilities* (softmax over channels or per-channel sigmoid);
`forward_logits` returns the pre-activation head output.

`parameters_in_canonical_order(model)` lists the parameter tensors in the exact order
of docs/design.md ("Parameter order and layouts"), `running_stats_in_canonical_order`
the batch-norm buffers (running_mean then running_var per batch-norm layer), and
`dice_loss` is the soft Dice loss of docs/design.md.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("batch", "instance", "group", "none")
ACTS = ("relu", "leaky_relu")
DOWNS = ("max_pool", "strided_conv")
UPS = ("transposed_conv", "interpolate_conv")
HEADS = ("softmax", "sigmoid")

EPS = 1e-5
MOMENTUM = 0.1


def _conv_cls(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _make_norm(kind: str, dims: int, channels: int, groups: int):
    if kind == "batch":
        cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        return cls(channels, eps=EPS, momentum=MOMENTUM, affine=True,
                   track_running_stats=True)
    if kind == "instance":
        # PyTorch's InstanceNorm defaults are affine=False; the design needs gamma/beta
        # and per-sample statistics in both train and eval mode.
        cls = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
        return cls(channels, eps=EPS, affine=True, track_running_stats=False)
    if kind == "group":
        if channels % groups != 0:
            raise ValueError(f"group norm: {channels} channels not divisible by {groups} groups")
        return nn.GroupNorm(groups, channels, eps=EPS, affine=True)
    if kind == "none":
        return None
    raise ValueError(f"unknown norm {kind!r}")


class ConvBlock(nn.Module):
    """conv3 + bias -> norm -> act -> conv3 + bias -> norm -> act"""

    def __init__(self, dims, cin, cout, norm, groups, act, slope):
        super().__init__()
        conv = _conv_cls(dims)
        self.conv1 = conv(cin, cout, kernel_size=3, padding=1, bias=True)
        self.norm1 = _make_norm(norm, dims, cout, groups)
        self.conv2 = conv(cout, cout, kernel_size=3, padding=1, bias=True)
        self.norm2 = _make_norm(norm, dims, cout, groups)
        self.act = act
        self.slope = slope

    def _act(self, x):
        if self.act == "relu":
            return F.relu(x)
        return F.leaky_relu(x, negative_slope=self.slope)

    def forward(self, x):
        x = self.conv1(x)
        if self.norm1 is not None:
            x = self.norm1(x)
        x = self._act(x)
        x = self.conv2(x)
        if self.norm2 is not None:
            x = self.norm2(x)
        return self._act(x)

    def canonical_params(self) -> List[torch.Tensor]:
        out = [self.conv1.weight, self.conv1.bias]
        if self.norm1 is not None:
            out += [self.norm1.weight, self.norm1.bias]
        out += [self.conv2.weight, self.conv2.bias]
        if self.norm2 is not None:
            out += [self.norm2.weight, self.norm2.bias]
        return out

    def batch_norms(self):
        return [n for n in (self.norm1, self.norm2)
                if isinstance(n, nn.modules.batchnorm._BatchNorm)]


class Up(nn.Module):
    def __init__(self, dims, cin, cout, kind):
        super().__init__()
        self.kind = kind
        if kind == "transposed_conv":
            cls = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
            self.conv = cls(cin, cout, kernel_size=2, stride=2, bias=True)
        elif kind == "interpolate_conv":
            self.conv = _conv_cls(dims)(cin, cout, kernel_size=1, bias=True)
        else:
            raise ValueError(f"unknown up {kind!r}")

    def forward(self, x):
        if self.kind == "interpolate_conv":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, dims: int = 2, in_channels: int = 4, classes: int = 4,
                 widths: Sequence[int] = (32, 64, 128, 256, 512), norm: str = "batch",
                 groups: int = 8, act: str = "relu", leaky_slope: float = 0.01,
                 down: str = "max_pool", up: str = "transposed_conv",
                 head: str = "softmax"):
        super().__init__()
        widths = [int(w) for w in widths]
        # depth = number of non-zero entries at the front of widths
        depth = 0
        while depth < len(widths) and widths[depth] != 0:
            depth += 1
        widths = widths[:depth]
        if dims not in (2, 3):
            raise ValueError("dims must be 2 or 3")
        if not 2 <= depth <= 8:
            raise ValueError("depth must be in 2..8")
        for name, val, allowed in (("norm", norm, NORMS), ("act", act, ACTS),
                                   ("down", down, DOWNS), ("up", up, UPS),
                                   ("head", head, HEADS)):
            if val not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {val!r}")
        self.dims, self.in_channels, self.classes = dims, in_channels, classes
        self.widths, self.depth = widths, depth
        self.norm, self.groups, self.act, self.leaky_slope = norm, groups, act, leaky_slope
        self.down_kind, self.up_kind, self.head_kind = down, up, head
        conv = _conv_cls(dims)

        self.downs = nn.ModuleList()      # downs[l-1] feeds encoder level l
        self.enc = nn.ModuleList()
        for l in range(depth):
            if l > 0 and down == "strided_conv":
                self.downs.append(conv(widths[l - 1], widths[l - 1], kernel_size=2,
                                       stride=2, bias=True))
            cin = in_channels if l == 0 else widths[l - 1]
            self.enc.append(ConvBlock(dims, cin, widths[l], norm, groups, act, leaky_slope))

        # decoder modules listed from the deepest level (l = depth-2) to level 0
        self.ups = nn.ModuleList()
        self.dec = nn.ModuleList()
        for l in range(depth - 2, -1, -1):
            self.ups.append(Up(dims, widths[l + 1], widths[l], up))
            self.dec.append(ConvBlock(dims, 2 * widths[l], widths[l], norm, groups, act,
                                      leaky_slope))
        self.head = conv(widths[0], classes, kernel_size=1, bias=True)

    def _down(self, x, l):
        if self.down_kind == "max_pool":
            return F.max_pool2d(x, 2, 2) if self.dims == 2 else F.max_pool3d(x, 2, 2)
        return self.downs[l - 1](x)

    def forward_logits(self, x):
        skips = []
        for l in range(self.depth):
            if l > 0:
                x = self._down(x, l)
            x = self.enc[l](x)
            skips.append(x)
        x = skips.pop()  # deepest level output
        for up, block in zip(self.ups, self.dec):
            skip = skips.pop()
            x = block(torch.cat([skip, up(x)], dim=1))
        return self.head(x)

    def forward(self, x):
        logits = self.forward_logits(x)
        if self.head_kind == "softmax":
            return torch.softmax(logits, dim=1)
        return torch.sigmoid(logits)


def parameters_in_canonical_order(model: UNet) -> List[torch.Tensor]:
    """Parameters in the order of docs/design.md."""
    out: List[torch.Tensor] = []
    for l in range(model.depth):
        if l > 0 and model.down_kind == "strided_conv":
            d = model.downs[l - 1]
            out += [d.weight, d.bias]
        out += model.enc[l].canonical_params()
    for up, block in zip(model.ups, model.dec):
        out += [up.conv.weight, up.conv.bias]
        out += block.canonical_params()
    out += [model.head.weight, model.head.bias]
    # sanity: the canonical list covers every parameter exactly once
    assert len(out) == len(list(model.parameters()))
    assert {id(p) for p in out} == {id(p) for p in model.parameters()}
    return out


def batch_norms_in_canonical_order(model: UNet):
    bns = []
    for l in range(model.depth):
        bns += model.enc[l].batch_norms()
    for block in model.dec:
        bns += block.batch_norms()
    return bns


def running_stats_in_canonical_order(model: UNet) -> List[torch.Tensor]:
    """[running_mean, running_var] per batch-norm layer, canonical order."""
    out = []
    for bn in batch_norms_in_canonical_order(model):
        out += [bn.running_mean, bn.running_var]
    return out


def one_hot_targets(labels: torch.Tensor, classes: int, dtype=None) -> torch.Tensor:
    """(N, *spatial) integer class map -> (N, classes, *spatial) one-hot."""
    oh = F.one_hot(labels.long(), classes)  # N, *spatial, C
    oh = oh.movedim(-1, 1)
    return oh.to(dtype or torch.get_default_dtype())


def dice_loss(probs: torch.Tensor, target: torch.Tensor, include_background: bool = True,
              batch_dice: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice loss of docs/design.md.

    probs:  (N, C, *spatial) head probabilities.
    target: (N, C, *spatial) one-hot (softmax) or region (sigmoid) targets, same dtype.
    include_background=False drops channel 0 (meaningful for softmax heads only).
    Per sample and channel (or summed over the batch with batch_dice):
        dice = (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)
    loss = 1 - mean(dice) over the channels (and samples) taken.
    """
    if target.shape != probs.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != probs {tuple(probs.shape)}")
    target = target.to(probs.dtype)
    if not include_background:
        probs = probs[:, 1:]
        target = target[:, 1:]
    spatial = tuple(range(2, probs.dim()))
    axes = (0,) + spatial if batch_dice else spatial
    inter = (probs * target).sum(dim=axes)
    psum = probs.sum(dim=axes)
    gsum = target.sum(dim=axes)
    dice = (2.0 * inter + smooth) / (psum + gsum + smooth)
    return 1.0 - dice.mean()


def dice_ce_loss(probs, target, logits, head="softmax", **kw):
    """Dice + mean (binary) cross-entropy over voxels, weight 1 (docs/design.md)."""
    d = dice_loss(probs, target, **kw)
    if head == "softmax":
        ce = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    else:
        ce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return d + ce


def model_from_config(cfg: dict) -> UNet:
    """Build from a dict using the keys of tests/fixtures/*/config.txt."""
    widths = cfg["widths"]
    if isinstance(widths, str):
        widths = [int(w) for w in widths.split(",") if w.strip()]
    return UNet(dims=int(cfg["dims"]), in_channels=int(cfg["in_channels"]),
                classes=int(cfg["classes"]), widths=widths, norm=cfg.get("norm", "batch"),
                groups=int(cfg.get("groups", 8)), act=cfg.get("act", "relu"),
                leaky_slope=float(cfg.get("leaky_slope", 0.01)),
                down=cfg.get("down", "max_pool"), up=cfg.get("up", "transposed_conv"),
                head=cfg.get("head", "softmax"))


if __name__ == "__main__":
    m = UNet(dims=2, in_channels=4, classes=4)
    n = sum(p.numel() for p in parameters_in_canonical_order(m))
    print(f"2D reference U-Net: {n} parameters")
    y = m(torch.randn(1, 4, 64, 64))
    print("output", tuple(y.shape), "channel sums ~1:", float(y.sum(1).mean()))

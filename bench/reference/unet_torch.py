"""PyTorch reference implementation of the lightunet network (docs/design.md).

Run with Debian's interpreter (/usr/bin/python3), which owns python3-torch.

The module mirrors one `lightunet::UNetConfig`:

    UNet(dims=2, in_channels=4, classes=4, widths=[32, 64, 128, 256, 512],
         norm="batch", groups=8, act="relu", leaky_slope=0.01,
         down="max_pool", up="transposed_conv", head="softmax",
         encoder="plain", blocks=None, deep_supervision=False)

`forward` returns head *probabilities* (softmax over channels or per-channel sigmoid);
`forward_logits` returns the pre-activation head output; `forward_heads` the logits of every
head, the deep-supervision heads after the top one.

`encoder="residual"` builds nnU-Net's ResEnc encoder (`blocks[l]` residual blocks on level l,
0 meaning 1); `deep_supervision=True` adds the auxiliary 1x1 heads on decoder levels
1 .. depth-3 (`auxiliary_heads.{i}` on level i + 1), trained by `deep_supervision_loss`.
Module paths below a level are lightunet's (`train::parameter_layout`): `enc.{l}` is our
`encoder.{l}`, `dec.{k}` / `ups.{k}.conv` our `decoder.{depth-2-k}` / `decoder.{depth-2-k}.up`,
`downs.{l-1}` our `encoder.{l}.down` (`lightunet_name` maps them).

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
ENCODERS = ("plain", "residual")

EPS = 1e-5
MOMENTUM = 0.1


def _conv_cls(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _activate(x, act, slope):
    if act == "relu":
        return F.relu(x)
    return F.leaky_relu(x, negative_slope=slope)


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


class Projection(nn.Module):
    """A residual block's skip where the channels change: conv1x1 + bias -> norm (no act)."""

    def __init__(self, dims, cin, cout, norm, groups):
        super().__init__()
        self.conv = _conv_cls(dims)(cin, cout, kernel_size=1, bias=True)
        self.norm = _make_norm(norm, dims, cout, groups)

    def forward(self, x):
        x = self.conv(x)
        return x if self.norm is None else self.norm(x)


class ResidualBlock(nn.Module):
    """nnU-Net's ResEnc block: conv3 -> norm -> act -> conv3 -> norm, plus the input (or its
    Projection where the channels change), then act of the sum."""

    def __init__(self, dims, cin, cout, norm, groups, act, slope):
        super().__init__()
        conv = _conv_cls(dims)
        self.conv1 = conv(cin, cout, kernel_size=3, padding=1, bias=True)
        self.norm1 = _make_norm(norm, dims, cout, groups)
        self.conv2 = conv(cout, cout, kernel_size=3, padding=1, bias=True)
        self.norm2 = _make_norm(norm, dims, cout, groups)
        self.skip = Projection(dims, cin, cout, norm, groups) if cin != cout else None
        self.act = act
        self.slope = slope

    def forward(self, x):
        y = self.conv1(x)
        if self.norm1 is not None:
            y = self.norm1(y)
        y = _activate(y, self.act, self.slope)
        y = self.conv2(y)
        if self.norm2 is not None:
            y = self.norm2(y)
        skip = x if self.skip is None else self.skip(x)
        return _activate(y + skip, self.act, self.slope)

    def _norms(self):
        return (self.norm1, self.norm2) + ((self.skip.norm,) if self.skip is not None else ())

    def canonical_params(self) -> List[torch.Tensor]:
        out = [self.conv1.weight, self.conv1.bias]
        if self.norm1 is not None:
            out += [self.norm1.weight, self.norm1.bias]
        out += [self.conv2.weight, self.conv2.bias]
        if self.norm2 is not None:
            out += [self.norm2.weight, self.norm2.bias]
        if self.skip is not None:
            out += [self.skip.conv.weight, self.skip.conv.bias]
            if self.skip.norm is not None:
                out += [self.skip.norm.weight, self.skip.norm.bias]
        return out

    def batch_norms(self):
        return [n for n in self._norms() if isinstance(n, nn.modules.batchnorm._BatchNorm)]


class ResidualStage(nn.Module):
    """An encoder level of residual blocks; the first takes the level's input channels."""

    def __init__(self, dims, cin, cout, blocks, norm, groups, act, slope):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResidualBlock(dims, cin if b == 0 else cout, cout, norm, groups, act, slope)
            for b in range(blocks))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x

    def canonical_params(self) -> List[torch.Tensor]:
        return [p for block in self.blocks for p in block.canonical_params()]

    def batch_norms(self):
        return [n for block in self.blocks for n in block.batch_norms()]


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
                 head: str = "softmax", encoder: str = "plain",
                 blocks: Sequence[int] = None, deep_supervision: bool = False):
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
                                   ("head", head, HEADS), ("encoder", encoder, ENCODERS)):
            if val not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {val!r}")
        # residual blocks per level, 0 meaning 1 (as UNetConfig::encoder_blocks)
        blocks = [max(1, int(b)) for b in (blocks or [])][:depth]
        blocks += [1] * (depth - len(blocks))
        if encoder == "plain" and any(b != 1 for b in blocks):
            raise ValueError("blocks other than 1 need encoder='residual'")
        if deep_supervision and depth < 4:
            raise ValueError("deep supervision needs at least four levels")
        self.dims, self.in_channels, self.classes = dims, in_channels, classes
        self.widths, self.depth = widths, depth
        self.norm, self.groups, self.act, self.leaky_slope = norm, groups, act, leaky_slope
        self.down_kind, self.up_kind, self.head_kind = down, up, head
        self.encoder_kind, self.blocks, self.deep_supervision = encoder, blocks, bool(deep_supervision)
        conv = _conv_cls(dims)

        self.downs = nn.ModuleList()      # downs[l-1] feeds encoder level l
        self.enc = nn.ModuleList()
        for l in range(depth):
            if l > 0 and down == "strided_conv":
                self.downs.append(conv(widths[l - 1], widths[l - 1], kernel_size=2,
                                       stride=2, bias=True))
            cin = in_channels if l == 0 else widths[l - 1]
            if encoder == "plain":
                self.enc.append(ConvBlock(dims, cin, widths[l], norm, groups, act, leaky_slope))
            else:
                self.enc.append(ResidualStage(dims, cin, widths[l], blocks[l], norm, groups, act,
                                              leaky_slope))

        # decoder modules listed from the deepest level (l = depth-2) to level 0
        self.ups = nn.ModuleList()
        self.dec = nn.ModuleList()
        for l in range(depth - 2, -1, -1):
            self.ups.append(Up(dims, widths[l + 1], widths[l], up))
            self.dec.append(ConvBlock(dims, 2 * widths[l], widths[l], norm, groups, act,
                                      leaky_slope))
        self.head = conv(widths[0], classes, kernel_size=1, bias=True)
        if self.deep_supervision:
            # auxiliary_heads[i] reads decoder level i + 1 (levels 1 .. depth-3)
            self.auxiliary_heads = nn.ModuleList(
                conv(widths[l], classes, kernel_size=1, bias=True) for l in range(1, depth - 2))

    def _down(self, x, l):
        if self.down_kind == "max_pool":
            return F.max_pool2d(x, 2, 2) if self.dims == 2 else F.max_pool3d(x, 2, 2)
        return self.downs[l - 1](x)

    def _decode(self, x):
        """The decoder's outputs by level (decoded[l] at resolution 1/2^l)."""
        skips = []
        for l in range(self.depth):
            if l > 0:
                x = self._down(x, l)
            x = self.enc[l](x)
            skips.append(x)
        x = skips.pop()  # deepest level output
        decoded = [None] * (self.depth - 1)
        for k, (up, block) in enumerate(zip(self.ups, self.dec)):
            skip = skips.pop()
            x = block(torch.cat([skip, up(x)], dim=1))
            decoded[self.depth - 2 - k] = x
        return decoded

    def forward_logits(self, x):
        return self.head(self._decode(x)[0])

    def forward_heads(self, x):
        """Logits of the top head, then of the auxiliary heads (decoder levels 1, 2, ...)."""
        decoded = self._decode(x)
        out = [self.head(decoded[0])]
        if self.deep_supervision:
            out += [head(decoded[i + 1]) for i, head in enumerate(self.auxiliary_heads)]
        return out

    def probabilities(self, logits):
        if self.head_kind == "softmax":
            return torch.softmax(logits, dim=1)
        return torch.sigmoid(logits)

    def forward(self, x):
        return self.probabilities(self.forward_logits(x))


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
    if model.deep_supervision:
        for head in model.auxiliary_heads:
            out += [head.weight, head.bias]
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


def lightunet_name(name: str, depth: int) -> str:
    """A parameter's PyTorch name here -> its name in lightunet (train::parameter_layout):
    enc.{l} -> encoder.{l}, downs.{k} -> encoder.{k+1}.down, ups.{k}.conv -> decoder.{depth-2-k}.up,
    dec.{k} -> decoder.{depth-2-k}; head and auxiliary_heads.{i} are the same."""
    parts = name.split(".")
    if parts[0] == "enc":
        return ".".join(["encoder"] + parts[1:])
    if parts[0] == "downs":
        return ".".join(["encoder", str(int(parts[1]) + 1), "down"] + parts[2:])
    if parts[0] == "ups":
        assert parts[2] == "conv"
        return ".".join(["decoder", str(depth - 2 - int(parts[1])), "up"] + parts[3:])
    if parts[0] == "dec":
        return ".".join(["decoder", str(depth - 2 - int(parts[1]))] + parts[2:])
    return name


def lightunet_names_in_canonical_order(model: UNet) -> List[str]:
    """lightunet's names of parameters_in_canonical_order(model)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [lightunet_name(by_id[id(p)], model.depth) for p in parameters_in_canonical_order(model)]


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


def head_weights(heads: int) -> List[float]:
    """nnU-Net's deep-supervision weights 1, 1/2, 1/4, ... normalised to sum 1."""
    w = [2.0 ** -h for h in range(heads)]
    return [v / sum(w) for v in w]


def downsample_targets(labels: torch.Tensor, heads: int, head: str = "softmax") -> List[torch.Tensor]:
    """Targets of each head: the labels, then F.interpolate(scale_factor=0.5, mode='nearest')
    applied level by level (the first voxel of each 2x2(x2) cell). labels: softmax heads the
    class map (N, *spatial), sigmoid heads the region maps (N, C, *spatial)."""
    out = [labels]
    for _ in range(1, heads):
        t = out[-1]
        t = t.unsqueeze(1) if head == "softmax" else t
        t = F.interpolate(t.to(torch.float64), scale_factor=0.5, mode="nearest").to(labels.dtype)
        out.append(t.squeeze(1) if head == "softmax" else t)
    return out


def deep_supervision_loss(model: UNet, logits: List[torch.Tensor], labels: torch.Tensor,
                          ce: bool = False, **kw) -> torch.Tensor:
    """sum_h w_h loss_h over the heads' logits (model.forward_heads), each head against its
    down-sampled targets; loss_h is dice_loss, or dice_ce_loss with ce=True."""
    targets = downsample_targets(labels, len(logits), model.head_kind)
    total = 0.0
    for w, z, t in zip(head_weights(len(logits)), logits, targets):
        probs = model.probabilities(z)
        if model.head_kind == "softmax":
            t = one_hot_targets(t, model.classes, dtype=probs.dtype)
        else:
            t = t.to(probs.dtype)
        loss = dice_ce_loss(probs, t, z, head=model.head_kind, **kw) if ce else dice_loss(probs, t, **kw)
        total = total + w * loss
    return total


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
                head=cfg.get("head", "softmax"), encoder=cfg.get("encoder", "plain"),
                blocks=_int_list(cfg.get("blocks", [])),
                deep_supervision=str(cfg.get("deep_supervision", "0")) in ("1", "True", "true"))


def _int_list(v):
    if isinstance(v, str):
        return [int(x) for x in v.split(",") if x.strip()]
    return [int(x) for x in v]


if __name__ == "__main__":
    m = UNet(dims=2, in_channels=4, classes=4)
    n = sum(p.numel() for p in parameters_in_canonical_order(m))
    print(f"2D reference U-Net: {n} parameters")
    y = m(torch.randn(1, 4, 64, 64))
    print("output", tuple(y.shape), "channel sums ~1:", float(y.sum(1).mean()))

"""The torch side of the Once-for-All super-networks: plain layers, the two networks, and weight slicing.

A sub-network is built as an ordinary static torch module (what OFA's `get_active_subnet` returns), laid out
like OFA's static `MobileNetV3` / `ResNets`. Weights are random (torch's default initialisation) unless a
super-network checkpoint is given, in which case each tensor is sliced from it by OFA's rules:
- channels: the first N (OFA sorts channels by importance during training, so no sorting is needed here);
- depthwise kernels: the centre crop of the largest kernel, passed through the learned kernel-transform
  matrices (`7to5_matrix`, then `5to3_matrix`) one step at a time, as DynamicSeparableConv2d does;
- squeeze-excite: reduce weights [:se_mid, :mid], expand weights [:mid, :se_mid].
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import ofa_mbv3, ofa_resnet50
from .ofa_common import canonical_key, collapse_key, load_state_dict

BN_EPS = 1e-5


def activation(name: str | None) -> nn.Module | None:
    return {"relu": nn.ReLU, "h_swish": nn.Hardswish, None: None}[name]() if name else None


class ConvLayer(nn.Sequential):
    """conv -> bn -> act, named as OFA's ConvLayer (`conv`, `bn`, `act`)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, act: str | None = "relu",
                 use_bn: bool = True, groups: int = 1):
        layers = [("conv", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))]
        if use_bn:
            layers.append(("bn", nn.BatchNorm2d(cout, eps=BN_EPS)))
        if act:
            layers.append(("act", activation(act)))
        super().__init__(OrderedDict(layers))


class SqueezeExcite(nn.Module):
    """OFA's SEModule: x * h_sigmoid(expand(relu(reduce(mean(x)))))."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.fc = nn.Sequential(OrderedDict([
            ("reduce", nn.Conv2d(channels, mid, 1, bias=True)), ("relu", nn.ReLU()),
            ("expand", nn.Conv2d(mid, channels, 1, bias=True)), ("h_sigmoid", nn.Hardsigmoid())]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class MBConv(nn.Module):
    """Inverted bottleneck: [1x1 expand] -> depthwise kxk [-> SE] -> 1x1 project, as OFA's MBConvLayer."""

    def __init__(self, p: ofa_mbv3.BlockPlan):
        super().__init__()
        self.inverted_bottleneck = ConvLayer(p.cin, p.mid, 1, act=p.act) if p.expand else None
        self.depth_conv = ConvLayer(p.mid, p.mid, p.kernel, p.stride, act=p.act, groups=p.mid)
        if p.se_mid:
            self.depth_conv.add_module("se", SqueezeExcite(p.mid, p.se_mid))
        self.point_linear = ConvLayer(p.mid, p.cout, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class ResidualBlock(nn.Module):
    def __init__(self, conv: nn.Module, residual: bool):
        super().__init__()
        self.conv = conv
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x if self.residual else self.conv(x)


class Classifier(nn.Module):
    def __init__(self, cin: int, n_classes: int):
        super().__init__()
        self.linear = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class MobileNetV3(nn.Module):
    def __init__(self, p: ofa_mbv3.Plan):
        super().__init__()
        w = p.widths
        self.first_conv = ConvLayer(3, w[0], 3, 2, act="h_swish")
        self.blocks = nn.ModuleList(ResidualBlock(MBConv(b), b.residual) for b in p.blocks)
        self.final_expand_layer = ConvLayer(w[-3], w[-2], 1, act="h_swish")
        self.feature_mix_layer = ConvLayer(w[-2], w[-1], 1, act="h_swish", use_bn=False)
        self.classifier = Classifier(w[-1], p.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_expand_layer(x)
        x = self.feature_mix_layer(x.mean((2, 3), keepdim=True))
        return self.classifier(torch.flatten(x, 1))


class Bottleneck(nn.Module):
    """ResNet bottleneck 1x1 -> 3x3 (stride) -> 1x1, shortcut identity or [avg-pool ->] 1x1 conv (OFA's ResNet-D)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1, downsample: str = "identity"):
        super().__init__()
        self.conv1 = ConvLayer(cin, mid, 1)
        self.conv2 = ConvLayer(mid, mid, 3, stride)
        self.conv3 = ConvLayer(mid, cout, 1, act=None)
        if downsample == "identity":
            self.downsample = None
        elif downsample == "conv":  # torchvision's ResNet-50: a strided 1x1 conv
            self.downsample = ConvLayer(cin, cout, 1, stride, act=None)
        elif downsample == "avgpool_conv":
            self.downsample = nn.Sequential(OrderedDict([
                ("avg_pool", nn.AvgPool2d(stride, stride, 0, ceil_mode=True)),
                ("conv", nn.Conv2d(cin, cout, 1, bias=False)), ("bn", nn.BatchNorm2d(cout, eps=BN_EPS))]))
        else:
            raise ValueError(f"downsample {downsample!r}: use identity, conv or avgpool_conv")
        self.final_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.final_act(self.conv3(self.conv2(self.conv1(x))) + residual)


class ResNet(nn.Module):
    """input stem -> 3x3/2 max-pool -> bottleneck blocks -> global average -> classifier, as OFA's ResNets."""

    def __init__(self, input_stem: list[nn.Module], blocks: list[nn.Module], classifier: nn.Module):
        super().__init__()
        self.input_stem = nn.ModuleList(input_stem)
        self.max_pooling = nn.MaxPool2d(3, 2, 1)
        self.blocks = nn.ModuleList(blocks)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.input_stem:
            x = layer(x)
        x = self.max_pooling(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.mean((2, 3)))


def ofa_resnet(p: ofa_resnet50.Plan) -> ResNet:
    (c0, m0, s0), (c1, m1, s1), (c2, m2, s2) = p.stem
    stem = [ConvLayer(c0, m0, 3, s0)]
    if not p.stem_skip:
        stem.append(ResidualBlock(ConvLayer(c1, m1, 3, s1), residual=True))
    stem.append(ConvLayer(c2, m2, 3, s2))
    blocks = [Bottleneck(b.cin, b.cout, b.mid, b.stride, "avgpool_conv" if b.downsample else "identity")
              for b in p.blocks]
    return ResNet(stem, blocks, Classifier(p.blocks[-1].cout, p.n_classes))


# ----- building, with or without a checkpoint ------------------------------------------------------
def build_mbv3(p: ofa_mbv3.Plan, weights: Any = None) -> MobileNetV3:
    return _with_weights(MobileNetV3(p), p, weights, _slice_mbv3, "ofa_mbv3")


def build_resnet(p: ofa_resnet50.Plan, weights: Any = None) -> ResNet:
    return _with_weights(ofa_resnet(p), p, weights, _slice_resnet, "ofa_resnet50")


def _with_weights(net: nn.Module, p, weights: Any, slicer, owner: str) -> nn.Module:
    if weights is not None:
        with torch.no_grad():
            slicer(net, p, _Checkpoint(load_state_dict(weights, owner)))
    return net.eval()


class _Checkpoint:
    """Tensors by canonical key, sliced with a clear error when the checkpoint lacks a key or a shape does not fit."""

    def __init__(self, tensors: dict):
        self.tensors = tensors

    def get(self, key: str) -> torch.Tensor:
        key = canonical_key(key)
        if key not in self.tensors:
            raise ValueError(f"the checkpoint has no tensor {key!r} (is it the right super-network?)")
        return self.tensors[key]

    def sliced(self, key: str, shape: tuple[int, ...], cut: int) -> torch.Tensor:
        """The checkpoint tensor `key` as a tensor of `shape`: its first `cut` dimensions (channels, which OFA
        orders by importance) cut to their leading `shape[:cut]`; every other dimension (a fixed kernel's) must
        be `shape[cut:]` already. Checking all of them matters: copy_ would silently broadcast a 1x1 kernel
        into a 3x3 one, and a leading-corner cut of a larger kernel is not OFA's (that is a centre crop)."""
        t = self.get(key)
        have, want = tuple(t.shape), tuple(shape)
        if len(have) != len(want) or have[cut:] != want[cut:] or any(h < w for h, w in zip(have, want[:cut])):
            raise ValueError(f"checkpoint tensor {canonical_key(key)!r} has shape {have}; this sub-network needs "
                             f"{_needed(want, cut)}")
        return t[tuple(slice(0, n) for n in want[:cut])]

    def conv(self, conv: nn.Conv2d, key: str) -> None:
        # The output and input channels are elastic; the kernel is not (depthwise kernels go through `depthwise`).
        conv.weight.copy_(self.sliced(key + ".weight", conv.weight.shape, 2))
        if conv.bias is not None:
            conv.bias.copy_(self.sliced(key + ".bias", conv.bias.shape, 1))

    def bn(self, bn: nn.BatchNorm2d, key: str) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(self.sliced(f"{key}.{name}", (bn.num_features,), 1))

    def conv_layer(self, layer: ConvLayer, key: str) -> None:
        self.conv(layer.conv, key + ".conv")
        if hasattr(layer, "bn"):
            self.bn(layer.bn, key + ".bn")

    def linear(self, linear: nn.Linear, key: str) -> None:
        linear.weight.copy_(self.sliced(key + ".weight", linear.weight.shape, 2))
        linear.bias.copy_(self.sliced(key + ".bias", linear.bias.shape, 1))

    def depthwise(self, conv: nn.Conv2d, key: str, kernel_sizes: tuple[int, ...]) -> None:
        """OFA's DynamicSeparableConv2d.get_active_filter: centre crops through the kernel-transform matrices."""
        channels, kernel = conv.out_channels, conv.kernel_size[0]
        largest = max(kernel_sizes)  # what the super-network stores: every smaller kernel is derived from it
        filters = self.sliced(key + ".weight", (channels, 1, largest, largest), 1)
        ladder = sorted(k for k in kernel_sizes if kernel <= k)
        if not ladder or ladder[0] != kernel:
            raise ValueError(f"cannot derive a {kernel}x{kernel} kernel from {canonical_key(key)!r} "
                             f"({largest}x{largest}) through kernel sizes {kernel_sizes}")
        for src, dst in zip(reversed(ladder), reversed(ladder[:-1])):
            start = (src - dst) // 2
            crop = filters[:, :, start:start + dst, start:start + dst].reshape(-1, dst * dst)
            # A transform maps a flattened dst x dst crop to a dst x dst kernel: exactly (dst², dst²).
            matrix = self.sliced(f"{key}.{src}to{dst}_matrix", (dst * dst, dst * dst), 0)
            filters = F.linear(crop, matrix).reshape(channels, 1, dst, dst)
        conv.weight.copy_(filters)


def _needed(shape: tuple[int, ...], cut: int) -> str:
    """`(≥16, ≥3, 3, 3)`: the first `cut` sizes at least (channels, cut to their first ones), the rest exactly."""
    sizes = [f"≥{n}" if i < cut else str(n) for i, n in enumerate(shape)]
    text = f"({', '.join(sizes)}{',' if len(sizes) == 1 else ''})"
    return text + (": at least the sizes marked ≥, exactly the others" if 0 < cut < len(shape) else "")


def _slice_mbv3(net: MobileNetV3, p: ofa_mbv3.Plan, ck: _Checkpoint) -> None:
    first = ck.get("first_conv.conv.weight")
    if first.dim() and first.shape[0] != p.widths[0]:  # a 0-d tensor is refused, with its shape, by conv_layer
        raise ValueError(f"the checkpoint's first conv has {first.shape[0]} channels but this sub-network's width "
                         f"needs {p.widths[0]}: use the super-network checkpoint of the config's width multiplier")
    ck.conv_layer(net.first_conv, "first_conv")
    for block, bp in zip(net.blocks, p.blocks):
        m, key = block.conv, f"blocks.{bp.index}.conv"
        if m.inverted_bottleneck is not None:
            ck.conv_layer(m.inverted_bottleneck, key + ".inverted_bottleneck")
        ck.depthwise(m.depth_conv.conv, key + ".depth_conv.conv", ofa_mbv3.KERNELS if bp.expand else (bp.kernel,))
        ck.bn(m.depth_conv.bn, key + ".depth_conv.bn")
        if bp.se_mid:
            ck.conv(m.depth_conv.se.fc.reduce, key + ".depth_conv.se.fc.reduce")
            ck.conv(m.depth_conv.se.fc.expand, key + ".depth_conv.se.fc.expand")
        ck.conv_layer(m.point_linear, key + ".point_linear")
    ck.conv_layer(net.final_expand_layer, "final_expand_layer")
    ck.conv_layer(net.feature_mix_layer, "feature_mix_layer")
    ck.linear(net.classifier.linear, "classifier.linear")


def _slice_resnet(net: ResNet, p: ofa_resnet50.Plan, ck: _Checkpoint) -> None:
    stem = list(net.input_stem)
    ck.conv_layer(stem[0], "input_stem.0")
    if not p.stem_skip:
        ck.conv_layer(stem[1].conv, "input_stem.1.conv")
    ck.conv_layer(stem[-1], "input_stem.2")
    for block, bp in zip(net.blocks, p.blocks):
        key = f"blocks.{bp.index}"
        for name in ("conv1", "conv2", "conv3"):
            ck.conv_layer(getattr(block, name), f"{key}.{name}")
        if block.downsample is not None:
            ck.conv(block.downsample.conv, key + ".downsample.conv")
            ck.bn(block.downsample.bn, key + ".downsample.bn")
    ck.linear(net.classifier.linear, "classifier.linear")


# ----- random super-network checkpoints in OFA's layout (for tests; nothing is ever downloaded) --------------
def _random_tensors(shapes: dict[str, tuple], seed: int, layout: str) -> dict:
    if layout not in ("nested", "flat"):
        raise ValueError(f"layout {layout!r}: use nested (OFA's module layout) or flat")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            t = torch.tensor(0, dtype=torch.long)
        elif leaf == "running_var":
            t = torch.rand(shape, generator=g) + 0.5
        elif leaf.endswith("_matrix"):  # a kernel transform near the identity, so that a wrong slice shows
            t = torch.eye(shape[0]) + 0.1 * torch.randn(shape, generator=g)
        elif leaf == "weight" and len(shape) > 1:
            t = torch.randn(shape, generator=g) * (2.0 / math.prod(shape[1:])) ** 0.5  # He initialisation
        elif leaf == "weight":  # a batch-norm scale
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        out[collapse_key(key) if layout == "flat" else key] = t
    return out


def _bn_shapes(key: str, n: int) -> dict:
    return {f"{key}.{name}": (n,) for name in ("weight", "bias", "running_mean", "running_var")} | {
        f"{key}.num_batches_tracked": ()}


def _dyn(key: str) -> str:
    """A dynamic layer's key in OFA's module layout: `x.conv.weight` -> `x.conv.conv.weight`, `bn.` -> `bn.bn.`."""
    head, leaf = key.rsplit(".", 1)
    return f"{head}.{head.rsplit('.', 1)[-1]}.{leaf}"


def _conv_bn_shapes(key: str, cout: int, cin: int, k: int, dynamic: bool, bn: bool = True) -> dict:
    name = _dyn if dynamic else (lambda x: x)
    shapes = {name(f"{key}.conv.weight"): (cout, cin, k, k)}
    if bn:
        shapes.update({name(k_): v for k_, v in _bn_shapes(f"{key}.bn", cout).items()})
    return shapes


def random_mbv3_state_dict(p: ofa_mbv3.Plan, seed: int = 0, layout: str = "nested") -> dict:
    """The published `ofa_mbv3_d234_e346_k357_w*` layout for the super-network plan `p` (every block at its largest)."""
    w = p.widths
    shapes = _conv_bn_shapes("first_conv", w[0], 3, 3, False)
    b0 = "blocks.0.mobile_inverted_conv"
    shapes.update({f"{b0}.depth_conv.conv.weight": (w[0], 1, 3, 3), **_bn_shapes(f"{b0}.depth_conv.bn", w[0]),
                   **_conv_bn_shapes(f"{b0}.point_linear", w[1], w[0], 1, False)})
    for b in p.blocks[1:]:
        key = f"blocks.{b.index}.mobile_inverted_conv"
        shapes.update(_conv_bn_shapes(f"{key}.inverted_bottleneck", b.mid, b.cin, 1, True))
        shapes[f"{key}.depth_conv.conv.conv.weight"] = (b.mid, 1, 7, 7)
        shapes[f"{key}.depth_conv.conv.7to5_matrix"] = (25, 25)
        shapes[f"{key}.depth_conv.conv.5to3_matrix"] = (9, 9)
        shapes.update({_dyn(k): v for k, v in _bn_shapes(f"{key}.depth_conv.bn", b.mid).items()})
        if b.se_mid:
            se = f"{key}.depth_conv.se.fc"
            shapes.update({f"{se}.reduce.weight": (b.se_mid, b.mid, 1, 1), f"{se}.reduce.bias": (b.se_mid,),
                           f"{se}.expand.weight": (b.mid, b.se_mid, 1, 1), f"{se}.expand.bias": (b.mid,)})
        shapes.update(_conv_bn_shapes(f"{key}.point_linear", b.cout, b.mid, 1, True))
    shapes.update(_conv_bn_shapes("final_expand_layer", w[-2], w[-3], 1, False))
    shapes.update(_conv_bn_shapes("feature_mix_layer", w[-1], w[-2], 1, False, bn=False))
    shapes.update({"classifier.linear.weight": (p.n_classes, w[-1]), "classifier.linear.bias": (p.n_classes,)})
    return _random_tensors(shapes, seed, layout)


def random_resnet_state_dict(p: ofa_resnet50.Plan, seed: int = 0, layout: str = "nested") -> dict:
    """OFA's `ofa_resnet50` module layout for the super-network plan `p` (every choice at its largest)."""
    (c0, m0, _), (c1, m1, _), (c2, m2, _) = p.stem
    shapes = {**_conv_bn_shapes("input_stem.0", m0, c0, 3, True),
              **_conv_bn_shapes("input_stem.1.conv", m1, c1, 3, True),
              **_conv_bn_shapes("input_stem.2", m2, c2, 3, True)}
    for b in p.blocks:
        key = f"blocks.{b.index}"
        shapes.update(_conv_bn_shapes(f"{key}.conv1", b.mid, b.cin, 1, True))
        shapes.update(_conv_bn_shapes(f"{key}.conv2", b.mid, b.mid, 3, True))
        shapes.update(_conv_bn_shapes(f"{key}.conv3", b.cout, b.mid, 1, True))
        if b.downsample:
            shapes.update(_conv_bn_shapes(f"{key}.downsample", b.cout, b.cin, 1, True))
    cout = p.blocks[-1].cout
    shapes.update({"classifier.linear.linear.weight": (p.n_classes, cout), "classifier.linear.linear.bias": (p.n_classes,)})
    return _random_tensors(shapes, seed, layout)

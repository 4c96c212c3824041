"""Image encoders from the CNN lectures: LeNet-5, a small ResNet and VGG-style blocks.

All take (N, C, H, W) images, uint8 (scaled to [0, 1] inside forward, like NatureCNN) or float, of any size
from 8x8 digits up, and share four kwargs: `norm` (batch | layer | group | none; layer normalises each
example over (C, H, W), as GroupNorm with one group), `groups` (for group norm), `init` (kaiming | xavier |
orthogonal, biases zero) and `dropout` (on the fully connected features). Activations are modules, not
functional calls, so diagnostics can hook them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rl_lab.backbone.encoders import (
    ACTIVATIONS,
    Encoder,
    EncoderSpec,
    _activation,
    _positive_int,
    _positive_int_list,
    channels_last_on_cpu,
)
from rl_lab.errors import UserError

NORMS = ("batch", "layer", "group", "none")
INITS = ("kaiming", "xavier", "orthogonal")
COMMON: dict[str, Any] = {"activation": "relu", "groups": 2, "init": "kaiming", "dropout": 0.0}


def norm_layer(kind: str, channels: int, groups: int, image: bool) -> nn.Module:
    """Normalisation over a conv map (image=True) or a feature vector; `none` is the identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if image else nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # one group: all of (C, H, W) per example, i.e. layer norm
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def init_weights(module: nn.Module, scheme: str, activation: str) -> None:
    """Re-initialise every conv and linear weight; kaiming and orthogonal use the activation's gain."""
    nonlinearity = "tanh" if activation == "tanh" else "relu"
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
            elif scheme == "xavier":
                nn.init.xavier_normal_(m.weight)
            else:
                nn.init.orthogonal_(m.weight, gain=nn.init.calculate_gain(nonlinearity))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_common(spec: EncoderSpec, widths: list[int]) -> None:
    """Checks shared by the image encoders; `widths` are the channel/feature counts a norm layer sees."""
    name, kw = spec.name, spec.kwargs
    if len(spec.input_shape) != 3:
        raise UserError(
            f"encoder '{name}' needs input_shape (C, H, W), got {spec.input_shape}; use 'mlp' for flat observations"
        )
    _activation(name, "activation", kw["activation"])
    _positive_int(name, "groups", kw["groups"])
    if kw["norm"] not in NORMS:
        raise UserError(f"encoder '{name}' kwarg 'norm' must be one of {list(NORMS)}, got {kw['norm']!r}")
    if kw["init"] not in INITS:
        raise UserError(f"encoder '{name}' kwarg 'init' must be one of {list(INITS)}, got {kw['init']!r}")
    dropout = kw["dropout"]
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise UserError(f"encoder '{name}' kwarg 'dropout' must be a number in [0, 1), got {dropout!r}")
    if kw["norm"] == "group":
        bad = [w for w in widths if w % kw["groups"]]
        if bad:
            raise UserError(
                f"encoder '{name}': groups={kw['groups']} must divide every layer width, not {bad[0]}; "
                "change kwargs.groups or the widths"
            )


def _fc_layers(in_dim: int, hidden_sizes: list[int], kw: dict) -> list[nn.Module]:
    """Linear -> norm -> activation -> dropout for each hidden size."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [
            nn.Linear(in_dim, size, bias=kw["norm"] == "none"),
            norm_layer(kw["norm"], size, kw["groups"], False),
        ]
        layers += [ACTIVATIONS[kw["activation"]](), nn.Dropout(kw["dropout"])]
        in_dim = size
    return layers


def _conv(in_ch: int, out_ch: int, kernel: int, kw: dict, stride: int = 1, padding: int | None = None) -> list:
    """Conv -> norm -> activation (no conv bias under a norm: the norm's shift replaces it)."""
    padding = kernel // 2 if padding is None else padding
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=kw["norm"] == "none")
    return [conv, norm_layer(kw["norm"], out_ch, kw["groups"], True), ACTIVATIONS[kw["activation"]]()]


def _check_conv_fc(spec: EncoderSpec, unit: str) -> None:
    """Checks shared by LeNet and VGG: `channels` per conv stage, then `hidden_sizes` fully connected."""
    kw = spec.kwargs
    _positive_int_list(spec.name, "channels", kw["channels"])
    if not kw["channels"]:
        raise UserError(f"encoder '{spec.name}' kwarg 'channels' needs at least one {unit}, got []")
    _positive_int_list(spec.name, "hidden_sizes", kw["hidden_sizes"])
    _check_common(spec, kw["channels"] + kw["hidden_sizes"])


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x


def feature_map(encoder: Encoder, x: torch.Tensor) -> torch.Tensor:
    """The last conv map (N, C, h, w) of an image encoder, before it is flattened or pooled: the grid that soft
    attention looks at (captioning). Works for every encoder whose `net` runs its convs first (lenet, resnet, vgg,
    nature_cnn)."""
    x = _as_float(x)
    for layer in getattr(encoder, "net", ()):
        if isinstance(layer, (nn.Flatten, nn.AdaptiveAvgPool2d)):
            return x
        x = layer(x)
    raise UserError(f"encoder '{encoder.spec.name}' has no conv feature map; use lenet, resnet, vgg or nature_cnn")


def _too_small(spec: EncoderSpec, what: str) -> UserError:
    _, height, width = spec.input_shape
    return UserError(f"encoder '{spec.name}': images of {height}x{width} are too small for {what}; use fewer blocks")


class LeNet(Encoder):
    """LeNet-5 (LeCun et al. 1998): 5x5 convs each followed by 2x2 pooling, then fully connected layers.

    The first conv pads by 2 (MNIST's 28x28 digits act like LeNet's 32x32 inputs); later convs pad only
    when the map is smaller than 6, so 8x8 digits still fit. Features: the last hidden layer (84 by default).
    """

    names = ("lenet",)

    defaults: ClassVar[dict[str, Any]] = {
        "channels": [6, 16],
        "hidden_sizes": [120, 84],
        "pool": "max",
        "norm": "none",
        **COMMON,
    }

    @staticmethod
    def _paddings(size: int, n_convs: int) -> tuple[list[int], int]:
        """Padding of each conv and the side of the final map, starting from side `size`."""
        pads = []
        for i in range(n_convs):
            pads.append(2 if i == 0 or size < 6 else 0)
            size = (size + 2 * pads[-1] - 4) // 2
        return pads, size

    def __init__(self, spec: EncoderSpec) -> None:
        kw = spec.kwargs
        channels, height, width = spec.input_shape
        pads, h = self._paddings(height, len(kw["channels"]))
        _, w = self._paddings(width, len(kw["channels"]))
        flat = kw["channels"][-1] * h * w
        super().__init__(spec, kw["hidden_sizes"][-1] if kw["hidden_sizes"] else flat)
        pool = nn.MaxPool2d if kw["pool"] == "max" else nn.AvgPool2d
        layers: list[nn.Module] = []
        for out_ch, pad in zip(kw["channels"], pads, strict=True):
            layers += [*_conv(channels, out_ch, 5, kw, padding=pad), pool(2)]
            channels = out_ch
        self.net = nn.Sequential(*layers, nn.Flatten(), *_fc_layers(flat, kw["hidden_sizes"], kw))
        init_weights(self, kw["init"], kw["activation"])

    @classmethod
    def check(cls, spec: EncoderSpec) -> None:
        kw = spec.kwargs
        if kw["pool"] not in ("max", "avg"):
            raise UserError(f"encoder '{spec.name}' kwarg 'pool' must be 'max' or 'avg', got {kw['pool']!r}")
        _check_conv_fc(spec, "conv")
        if min(cls._paddings(side, len(kw["channels"]))[1] for side in spec.input_shape[1:]) < 1:
            raise _too_small(spec, f"{len(kw['channels'])} conv+pool stages")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_as_float(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut (He et al. 2016); a 1x1 conv shortcut where the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kw: dict) -> None:
        super().__init__()
        conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=kw["norm"] == "none")
        self.body = nn.Sequential(
            *_conv(in_ch, out_ch, 3, kw, stride), conv2, norm_layer(kw["norm"], out_ch, kw["groups"], True)
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=kw["norm"] == "none"),
                norm_layer(kw["norm"], out_ch, kw["groups"], True),
            )
        self.act = ACTIVATIONS[kw["activation"]]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(Encoder):
    """A small ResNet in the style of He et al.'s CIFAR nets: a 3x3 stem, stages of basic blocks whose width
    doubles (and resolution halves) from one stage to the next, then global average pooling.

    `blocks` holds the number of blocks per stage: [n, n, n] is ResNet-(6n+2). Features: the last width.
    """

    names = ("resnet",)

    defaults: ClassVar[dict[str, Any]] = {"width": 16, "blocks": [2, 2, 2], "norm": "batch", **COMMON}

    def __init__(self, spec: EncoderSpec) -> None:
        kw = spec.kwargs
        widths = self._widths(kw)
        super().__init__(spec, widths[-1])
        layers: list[nn.Module] = _conv(spec.input_shape[0], kw["width"], 3, kw)
        in_ch = kw["width"]
        for stage, (n_blocks, out_ch) in enumerate(zip(kw["blocks"], widths, strict=True)):
            for b in range(n_blocks):
                layers.append(BasicBlock(in_ch, out_ch, 2 if stage > 0 and b == 0 else 1, kw))
                in_ch = out_ch
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(kw["dropout"]))
        init_weights(self, kw["init"], kw["activation"])

    @staticmethod
    def _widths(kw: dict) -> list[int]:
        return [kw["width"] * 2**i for i in range(len(kw["blocks"]))]

    @classmethod
    def check(cls, spec: EncoderSpec) -> None:
        kw = spec.kwargs
        _positive_int(spec.name, "width", kw["width"])
        _positive_int_list(spec.name, "blocks", kw["blocks"])
        if not kw["blocks"]:
            raise UserError(f"encoder '{spec.name}' kwarg 'blocks' needs at least one stage, got []")
        _check_common(spec, cls._widths(kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(channels_last_on_cpu(_as_float(x)))


class VGG(Encoder):
    """VGG-style blocks (Simonyan & Zisserman 2015): `convs_per_block` 3x3 convs then 2x2 max pooling, per
    entry of `channels`; then fully connected layers. Features: the last hidden layer, else the flat map.
    """

    names = ("vgg",)

    defaults: ClassVar[dict[str, Any]] = {
        "channels": [32, 64],
        "convs_per_block": 2,
        "hidden_sizes": [128],
        "norm": "batch",
        **COMMON,
    }

    def __init__(self, spec: EncoderSpec) -> None:
        kw = spec.kwargs
        channels, height, width = spec.input_shape
        shrink = 2 ** len(kw["channels"])
        flat = kw["channels"][-1] * (height // shrink) * (width // shrink)
        super().__init__(spec, kw["hidden_sizes"][-1] if kw["hidden_sizes"] else flat)
        layers: list[nn.Module] = []
        for out_ch in kw["channels"]:
            for _ in range(kw["convs_per_block"]):
                layers += _conv(channels, out_ch, 3, kw)
                channels = out_ch
            layers.append(nn.MaxPool2d(2))
        self.net = nn.Sequential(*layers, nn.Flatten(), *_fc_layers(flat, kw["hidden_sizes"], kw))
        init_weights(self, kw["init"], kw["activation"])

    @classmethod
    def check(cls, spec: EncoderSpec) -> None:
        kw = spec.kwargs
        _positive_int(spec.name, "convs_per_block", kw["convs_per_block"])
        _check_conv_fc(spec, "block")
        if min(spec.input_shape[1:]) < 2 ** len(kw["channels"]):
            raise _too_small(spec, f"{len(kw['channels'])} blocks of 2x2 pooling")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_as_float(x))


def fit_images(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Images resized (bilinear) and their channels averaged/repeated to fit an encoder made for `shape`."""
    channels, height, width = shape
    if x.shape[2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1)
    return x

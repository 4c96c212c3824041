"""Encoders built by name from a JSON-able spec.

A checkpoint stores the spec next to the weights, so a model can be rebuilt (or checked) without code
that remembers how it was constructed. Adding an encoder is one Encoder subclass that lists its `names`
(rl_lab.backbone imports every module that defines one, so the registry is complete whatever is imported first).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from rl_lab.errors import UserError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def _jsonable(value: Any) -> Any:
    """Copy value with tuples turned into lists, so a spec compares equal to its own JSON round trip."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class EncoderSpec:
    """What to build: encoder name, per-sample input shape (no batch dim) and encoder kwargs."""

    name: str
    input_shape: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "kwargs", _jsonable(dict(self.kwargs)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape), "kwargs": _jsonable(self.kwargs)}

    @classmethod
    def from_dict(cls, d: Any) -> EncoderSpec:
        """Parse a spec from config or JSON; anything malformed is a UserError, not a KeyError."""
        if not isinstance(d, dict):
            raise UserError(f"invalid encoder spec: expected a mapping with name and input_shape, got {d!r}")
        extra = sorted(set(d) - {"name", "input_shape", "kwargs"})
        if extra:
            raise UserError(f"invalid encoder spec: unknown key(s) {extra}; allowed: name, input_shape, kwargs")
        name, shape, kwargs = d.get("name"), d.get("input_shape"), d.get("kwargs", {})
        if not isinstance(name, str):
            raise UserError(f"invalid encoder spec: 'name' must be a string, got {name!r}")
        if not isinstance(shape, (list, tuple)):
            raise UserError(f"invalid encoder spec: 'input_shape' must be a list of ints, got {shape!r}")
        if not isinstance(kwargs, dict):
            raise UserError(f"invalid encoder spec: 'kwargs' must be a mapping, got {kwargs!r}")
        return cls(name=name, input_shape=tuple(shape), kwargs=kwargs)

    def describe(self, keys: list[str] | None = None) -> str:
        """One line such as `mlp(input_shape=(4,), hidden_sizes=[64, 64])`; keys limits the kwargs shown."""
        shown = sorted(self.kwargs) if keys is None else [k for k in keys if k in self.kwargs]
        parts = [f"input_shape={self.input_shape}"] + [f"{k}={self.kwargs[k]!r}" for k in shown]
        return f"{self.name}({', '.join(parts)})"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(name: str, key: str, value: Any) -> None:
    if not (_is_int(value) and value > 0):
        raise UserError(f"encoder '{name}' kwarg '{key}' must be a positive int, got {value!r}")


def _positive_int_list(name: str, key: str, value: Any) -> None:
    if not (isinstance(value, list) and all(_is_int(v) and v > 0 for v in value)):
        raise UserError(f"encoder '{name}' kwarg '{key}' must be a list of positive ints, got {value!r}")


def _activation(name: str, key: str, value: Any) -> None:
    if value not in ACTIVATIONS:
        raise UserError(f"encoder '{name}' kwarg '{key}' must be one of {sorted(ACTIVATIONS)}, got {value!r}")


def mlp_layers(in_dim: int, hidden_sizes: list[int], activation: str) -> nn.Sequential:
    """Linear + activation per hidden size; shared by the mlp encoder and MLPHead."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_dim, size), ACTIVATIONS[activation]()]
        in_dim = size
    return nn.Sequential(*layers)


WEIGHT_INITS = ("torch", "orthogonal")


def orthogonal_init(module: nn.Module) -> None:
    """Orthogonal weights with gain sqrt(2) and zero biases for every conv and linear layer, whatever the activation:
    the convention of the A2C/PPO reference implementations (OpenAI baselines, SB3, CleanRL; Engstrom et al. 2020)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, math.sqrt(2))
            nn.init.zeros_(m.bias)


def _check_weight_init(spec: EncoderSpec) -> None:
    if spec.kwargs["init"] not in WEIGHT_INITS:
        raise UserError(
            f"encoder '{spec.name}' kwarg 'init' must be one of {list(WEIGHT_INITS)}, got {spec.kwargs['init']!r}"
        )


ENCODERS: dict[str, type[Encoder]] = {}  # name -> class; filled by Encoder subclasses as they are defined


class Encoder(nn.Module):
    """Base for registered encoders: `names` it is built by, `defaults` lists every kwarg, `check` validates a
    resolved spec."""

    names: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}
    recurrent: ClassVar[bool] = False  # recurrent encoders take (T, B, ...) inputs and a state

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        ENCODERS.update(dict.fromkeys(cls.names, cls))

    def __init__(self, spec: EncoderSpec, out_dim: int) -> None:
        super().__init__()
        self.spec = spec
        self.out_dim = out_dim

    @classmethod
    def check(cls, spec: EncoderSpec) -> None:
        """Raise UserError for kwargs or input shapes this encoder cannot build."""


class MLPEncoder(Encoder):
    names = ("mlp",)
    """Flattens any input shape and applies an MLP; for vector observations."""

    # init: torch's default (uniform, fan-in scaled) or orthogonal (gain sqrt(2)) as the A2C/PPO references use
    defaults: ClassVar[dict[str, Any]] = {"hidden_sizes": [64, 64], "activation": "relu", "init": "torch"}

    def __init__(self, spec: EncoderSpec) -> None:
        hidden = spec.kwargs["hidden_sizes"]
        in_dim = math.prod(spec.input_shape)
        super().__init__(spec, hidden[-1] if hidden else in_dim)
        self.net = mlp_layers(in_dim, hidden, spec.kwargs["activation"])
        if spec.kwargs["init"] == "orthogonal":
            orthogonal_init(self.net)

    @classmethod
    def check(cls, spec: EncoderSpec) -> None:
        _positive_int_list(spec.name, "hidden_sizes", spec.kwargs["hidden_sizes"])
        _activation(spec.name, "activation", spec.kwargs["activation"])
        _check_weight_init(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.net(x if x.is_floating_point() else x.float())


class NatureCNN(Encoder):
    names = ("nature_cnn",)
    """Nature DQN torso (Mnih et al. 2015) over (C, H, W) frames, e.g. (4, 84, 84).

    uint8 frames are scaled to [0, 1] inside forward, on whatever device the model is on, so replay
    buffers can keep frames as uint8 (4x less memory and host-to-device traffic). `convs` lists
    [channels, kernel, stride] per layer; small frames take smaller stacks (MinAtar: [[16, 3, 1]], features 128).
    """

    defaults: ClassVar[dict[str, Any]] = {
        "features": 512,
        "convs": [[32, 8, 4], [64, 4, 2], [64, 3, 1]],
        "init": "torch",  # or orthogonal (gain sqrt(2)), as the A2C/PPO references initialise this torso
    }

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec, spec.kwargs["features"])
        channels, height, width = spec.input_shape
        convs = spec.kwargs["convs"]
        layers: list[nn.Module] = []
        for out_channels, kernel, stride in convs:
            layers += [nn.Conv2d(channels, out_channels, kernel, stride), nn.ReLU()]
            channels = out_channels
        h, w = self._conv_out(height, convs), self._conv_out(width, convs)
        layers += [nn.Flatten(), nn.Linear(channels * h * w, self.out_dim), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        if spec.kwargs["init"] == "orthogonal":
            orthogonal_init(self.net)

    @staticmethod
    def _conv_out(size: int, convs: list[list[int]]) -> int:
        for _, kernel, stride in convs:
            size = (size - kernel) // stride + 1
        return size

    @classmethod
    def check(cls, spec: EncoderSpec) -> None:
        if len(spec.input_shape) != 3:
            raise UserError(
                f"encoder 'nature_cnn' needs input_shape (C, H, W), got {spec.input_shape}; "
                "use 'mlp' for flat observations"
            )
        convs = spec.kwargs["convs"]
        if not (isinstance(convs, list) and convs and all(isinstance(c, list) and len(c) == 3 for c in convs)):
            raise UserError(f"encoder 'nature_cnn' kwarg 'convs' must list [channels, kernel, stride], got {convs!r}")
        for layer in convs:
            _positive_int_list(spec.name, "convs", layer)
        _, height, width = spec.input_shape
        if min(cls._conv_out(height, convs), cls._conv_out(width, convs)) < 1:
            least = next(size for size in range(1, 10_000) if cls._conv_out(size, convs) >= 1)
            raise UserError(
                f"encoder 'nature_cnn' needs frames of at least {least}x{least}, got {height}x{width}; "
                "resize observations (84x84 is standard) or choose smaller convs"
            )
        _positive_int(spec.name, "features", spec.kwargs["features"])
        _check_weight_init(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255
        return self.net(channels_last_on_cpu(x))


def channels_last_on_cpu(x: torch.Tensor) -> torch.Tensor:
    """Image batches of at least 32x32 in channels-last memory take oneDNN's faster conv kernels: training steps of
    the Nature CNN 1.2-1.5x and of the ResNet 1.3x faster on this CPU (benchmarks/conv_layout.py, docs/
    BENCHMARKS.md); smaller frames (MinAtar's 10x10) gain nothing. Only the input's layout changes: results agree
    to float rounding, and weights, hence checkpoints, keep the usual layout."""
    if x.device.type == "cpu" and x.dim() == 4 and min(x.shape[-2:]) >= 32:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def encoder_names() -> list[str]:
    return sorted(ENCODERS)


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def resolve_spec(spec: EncoderSpec) -> EncoderSpec:
    """Validate spec and fill in default kwargs, so equal models have equal specs however written."""
    if spec.name not in ENCODERS:
        names = encoder_names()
        raise UserError(
            f"unknown encoder '{spec.name}'; {_did_you_mean(spec.name, names)}valid names: {', '.join(names)}"
        )
    cls = ENCODERS[spec.name]
    for key in spec.kwargs:
        if key not in cls.defaults:
            valid = sorted(cls.defaults)
            raise UserError(
                f"encoder '{spec.name}' has no kwarg '{key}'; {_did_you_mean(key, valid)}"
                f"valid kwargs: {', '.join(valid)}"
            )
    if not (spec.input_shape and all(_is_int(d) and d > 0 for d in spec.input_shape)):
        raise UserError(
            f"encoder '{spec.name}' input_shape must be a non-empty list of positive ints, got {spec.input_shape}"
        )
    resolved = EncoderSpec(spec.name, spec.input_shape, {**cls.defaults, **spec.kwargs})
    cls.check(resolved)
    return resolved


def build_encoder(spec: EncoderSpec) -> Encoder:
    """Build the encoder named by spec; its `.spec` is the resolved spec (defaults filled in)."""
    resolved = resolve_spec(spec)
    return ENCODERS[resolved.name](resolved)

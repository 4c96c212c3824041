"""Every supervised task's settings (`task.*` in a config), as plain dataclasses with no torch, so a config can be
read, checked and printed without loading the models. ClassificationConfig is read by tasks/classification.py,
CaptioningConfig by tasks/captioning.py, RAMTaskConfig by rl_lab/ram/task.py, AugmentConfig by tasks/augment.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rl_lab.agents.configs import RAMConfig
from rl_lab.config import EncoderConfig, OptimConfig, check


@dataclass
class AugmentConfig:
    crop_padding: int = 0  # pad by this many pixels (zeros), then crop back at a random offset
    translate: float = 0.0  # random shift of up to this fraction of the width/height (bilinear, zero fill)
    hflip: bool = False  # mirror left-right with probability 1/2 (not for digits: a mirrored 2 is not a 2)
    brightness: float = 0.0  # add a uniform offset in [-b, b]
    contrast: float = 0.0  # scale around the image mean by a factor in [1 - c, 1 + c]

    def __post_init__(self):
        check(self.crop_padding >= 0, "crop_padding", "must be >= 0")
        check(0.0 <= self.translate < 1.0, "translate", "must be in [0, 1)")
        check(self.brightness >= 0, "brightness", "must be >= 0")
        check(0.0 <= self.contrast < 1.0, "contrast", "must be in [0, 1)")

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.translate or self.hflip or self.brightness or self.contrast)


@dataclass
class ClassificationConfig:
    name: str = "classification"
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig("lenet"))
    head_hidden: list[int] = field(default_factory=list)  # hidden layers of the head; [] = a linear head
    head_dropout: float = 0.0  # dropout on the encoder's features, before the head
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(amp=True))  # schedules step once per epoch
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    label_smoothing: float = 0.0
    ema_decay: float | None = None  # e.g. 0.99: validate and test with an exponential moving average of the weights

    def __post_init__(self):
        check(0.0 <= self.head_dropout < 1.0, "head_dropout", "must be in [0, 1)")
        check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        check(self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "ema_decay", "must be in (0, 1) or null")


def _small_cnn() -> EncoderConfig:
    """Three conv+pool blocks: 32x32 scenes -> a 4x4 grid of 64-d vectors (a grid cell per quarter object cell)."""
    return EncoderConfig("vgg", {"channels": [16, 32, 64], "convs_per_block": 1, "hidden_sizes": []})


@dataclass
class CaptioningConfig:
    name: str = "captioning"
    encoder: EncoderConfig = field(default_factory=_small_cnn)
    rnn: Literal["lstm", "gru"] = "lstm"
    attention: bool = True  # false: Show and Tell (image -> initial state only)
    embed_dim: int = 32
    hidden_size: int = 128
    attention_dim: int = 64
    dropout: float = 0.0  # before the output layer
    doubly_stochastic: float = 1.0  # lambda of the attention regulariser (Xu et al. eq. 14); 0 = off
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, grad_clip=5.0))
    min_count: int = 1  # rarer training words become <unk>
    max_length: int = 32  # words per caption; longer training captions are cut, generation stops there
    beam: int = 3  # decoding for evaluation; 1 = greedy
    length_alpha: float = 0.7  # beam ranking: log p / length**length_alpha
    final_beams: list[int] = field(default_factory=lambda: [1, 3, 5])  # the test set is also scored at each

    def __post_init__(self):
        for key in ("embed_dim", "hidden_size", "attention_dim", "min_count", "max_length", "beam"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(self.doubly_stochastic >= 0, "doubly_stochastic", "must be >= 0")
        check(self.length_alpha >= 0, "length_alpha", "must be >= 0")
        check(all(b >= 1 for b in self.final_beams), "final_beams", "beam sizes must be >= 1")


@dataclass
class RAMTaskConfig(RAMConfig):
    name: str = "ram"
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ema_decay: float | None = None
    eval_samples: int = 10  # M: sampled trajectories averaged per image at evaluation; 0 = mean locations only
    figure_examples: int = 8  # validation images whose glimpse paths are drawn after each epoch; 0 = none

    def __post_init__(self):
        super().__post_init__()
        check(self.eval_samples >= 0, "eval_samples", "must be >= 0")
        check(self.figure_examples >= 0, "figure_examples", "must be >= 0")
        check(self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "ema_decay", "must be in (0, 1) or null")

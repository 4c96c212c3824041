"""Encoders built by name from a spec, heads kept separate, and pickle-free save/load."""

from rl_lab.backbone.encoders import (
    ENCODERS,
    Encoder,
    EncoderSpec,
    MLPEncoder,
    NatureCNN,
    build_encoder,
    encoder_names,
    resolve_spec,
)
from rl_lab.backbone.heads import LinearHead, MLPHead
from rl_lab.backbone.io import load_encoder, load_encoder_weights, save_encoder
from rl_lab.backbone.recurrent import RNNEncoder  # registers lstm and gru
from rl_lab.backbone.vision import VGG, LeNet, ResNet  # register lenet, resnet and vgg

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncoderSpec",
    "LinearHead",
    "MLPEncoder",
    "MLPHead",
    "NatureCNN",
    "RNNEncoder",
    "LeNet",
    "ResNet",
    "VGG",
    "build_encoder",
    "encoder_names",
    "load_encoder",
    "load_encoder_weights",
    "resolve_spec",
    "save_encoder",
]

"""Heads map encoder features to outputs (Q-values, logits, values); kept apart from encoders so one
encoder can feed several heads and encoder checkpoints stay reusable across tasks."""

from __future__ import annotations

import torch
from torch import nn

from rl_lab.backbone.encoders import ACTIVATIONS, mlp_layers
from rl_lab.errors import UserError


class LinearHead(nn.Module):
    """A single linear layer from features to outputs."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class MLPHead(nn.Module):
    """Hidden layers with activations, then a linear output layer (no activation on the output)."""

    def __init__(self, in_dim: int, hidden_sizes: list[int], out_dim: int, activation: str = "relu") -> None:
        super().__init__()
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in hidden_sizes):
            raise UserError(f"head hidden_sizes must be positive ints, got {list(hidden_sizes)!r}")
        if activation not in ACTIVATIONS:
            raise UserError(f"head activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hidden = mlp_layers(in_dim, list(hidden_sizes), activation)
        self.out = nn.Linear(hidden_sizes[-1] if hidden_sizes else in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(features))

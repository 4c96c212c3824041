"""Recurrent cores (`lstm`, `gru`): a feed-forward torso from the registry, then an LSTM or GRU cell.

The cell is stepped through time rather than run as one cuDNN sequence, so the hidden state can be zeroed at the
exact steps where an episode begins inside a rollout (truncated BPTT over the rollout, resets included).
State is one tensor of shape (parts, batch, hidden_size): parts = 2 for LSTM (h, c), 1 for GRU (h).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from rl_lab.backbone.encoders import ENCODERS, Encoder, EncoderSpec, _positive_int, build_encoder, resolve_spec
from rl_lab.errors import UserError


class RNNEncoder(Encoder):
    """Registered twice: as `lstm` and as `gru`; the spec's name picks the cell."""

    names = ("lstm", "gru")
    recurrent = True
    defaults: ClassVar[dict[str, Any]] = {"torso": "mlp", "torso_kwargs": {"hidden_sizes": [64]}, "hidden_size": 128}

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec, spec.kwargs["hidden_size"])
        self.torso = build_encoder(self.torso_spec(spec))
        self.parts = 2 if spec.name == "lstm" else 1
        cell = nn.LSTMCell if spec.name == "lstm" else nn.GRUCell
        self.cell = cell(self.torso.out_dim, self.out_dim)

    @staticmethod
    def torso_spec(spec: EncoderSpec) -> EncoderSpec:
        return EncoderSpec(spec.kwargs["torso"], spec.input_shape, spec.kwargs["torso_kwargs"])

    @classmethod
    def check(cls, spec: EncoderSpec) -> None:
        _positive_int(spec.name, "hidden_size", spec.kwargs["hidden_size"])
        torso = spec.kwargs["torso"]
        if not isinstance(spec.kwargs["torso_kwargs"], dict):
            raise UserError(f"encoder '{spec.name}' kwarg 'torso_kwargs' must be a mapping, got {torso!r}")
        if torso in ENCODERS and ENCODERS[torso].recurrent:
            raise UserError(f"encoder '{spec.name}' needs a feed-forward torso, got '{torso}'")
        resolve_spec(cls.torso_spec(spec))

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(self.parts, batch, self.out_dim, device=device)

    def forward(self, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, B, *input_shape); starts: (T, B), True where an episode begins (the state is zeroed first).

        Returns features (T, B, hidden_size) and the state after the last step.
        """
        steps, batch = starts.shape
        inputs = self.torso(x.reshape(steps * batch, *x.shape[2:])).reshape(steps, batch, -1)
        keep = (~starts).to(inputs.dtype).unsqueeze(-1)
        outputs = []
        for t in range(steps):
            state = state * keep[t]
            if self.parts == 2:
                state = torch.stack(self.cell(inputs[t], (state[0], state[1])))
            else:
                state = self.cell(inputs[t], state[0]).unsqueeze(0)
            outputs.append(state[0])
        return torch.stack(outputs), state

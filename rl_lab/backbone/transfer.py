"""Transfer both ways: start any agent or task from a saved encoder, freeze it or fine-tune it slower, and find
the encoder of any agent or model (rl_lab.runs.export_encoder saves a finished run's for the next one).

Config (`agent.encoder` / `task.encoder`): `init: PATH` (a directory written by save_encoder), `freeze`,
`lr_mult` (the encoder's learning rate is lr * lr_mult, through rl_lab.optim.param_groups).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from rl_lab.backbone.encoders import Encoder, EncoderSpec
from rl_lab.backbone.io import SPEC_FILE, _parse_spec, load_encoder_weights
from rl_lab.errors import UserError


def saved_spec(path: str | Path) -> EncoderSpec:
    """The spec of an encoder saved at path (its encoder.json), e.g. to build a model with its input shape."""
    file = Path(path) / SPEC_FILE
    if not file.is_file():
        raise UserError(f"encoder.init={path}: no {SPEC_FILE} there; export one with rl-lab export-encoder RUN_DIR OUT")
    return _parse_spec(file.read_text(encoding="utf-8"), file)


def init_encoder(encoder: Encoder, cfg) -> None:
    """Apply an EncoderConfig's `init` (load weights, same spec required) and `freeze` to a built encoder."""
    if cfg.init:
        load_encoder_weights(encoder, cfg.init)
    if cfg.freeze:
        encoder.requires_grad_(False)
        encoder.eval()  # BatchNorm statistics stay those of the saved encoder too


def find_encoder(obj) -> Encoder:
    """The encoder of an agent or a model: the first Encoder inside the first network that has one.

    Agents keep their networks as attributes (DQN: q_net, then target_net), so this is the online network's.
    """
    modules = [obj] if isinstance(obj, nn.Module) else [v for v in vars(obj).values() if isinstance(v, nn.Module)]
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, Encoder):
                return sub
    raise UserError(f"{type(obj).__name__} has no backbone encoder to export")

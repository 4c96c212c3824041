"""Transfer both ways: start any agent or task from a saved encoder, freeze it or fine-tune it slower, and
export the encoder of any finished run (agent or task) for the next one.

Config (`agent.encoder` / `task.encoder`): `init: PATH` (a directory written by save_encoder), `freeze`,
`lr_mult` (the encoder's learning rate is lr * lr_mult, set through optimiser param groups).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rl_lab.backbone.encoders import Encoder, EncoderSpec
from rl_lab.backbone.io import SPEC_FILE, _parse_spec, load_encoder_weights, save_encoder
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


def param_groups(model: nn.Module, encoder: Encoder, cfg, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Optimiser param groups: the encoder's parameters at lr * cfg.lr_mult, the rest at lr; frozen ones left out.

    Each group carries its `lr_mult`, which set_lr honours. With weight decay, biases and normalisation weights
    (1-d tensors) get none, as usual.
    """
    in_encoder = {id(p) for p in encoder.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in in_encoder, weight_decay > 0 and p.ndim >= 2), []).append(p)
    if not groups:
        raise UserError("every parameter is frozen: nothing to train (set encoder.freeze=false or add a head)")
    out = []
    for (enc, decay), params in groups.items():
        mult = cfg.lr_mult if enc else 1.0
        out.append({"params": params, "lr": lr * mult, "lr_mult": mult, "weight_decay": weight_decay * decay})
    return out


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the base learning rate of every param group, scaled by the group's lr_mult."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


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


def load_run(run_dir: str | Path):
    """(config, latest checkpoint, trainer) of a run, rebuilt from its config.yaml; no weights loaded yet."""
    from rl_lab.checkpoint import latest_checkpoint
    from rl_lab.config import load_config
    from rl_lab.run import build

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    return config, checkpoint, build(config).trainer


def load_run_weights(run_dir: str | Path):
    """The trained agent (RL runs) or model (task runs: the tested weights) of a run's latest checkpoint."""
    from rl_lab.checkpoint import load_checkpoint
    from rl_lab.config import TaskConfig

    config, checkpoint, trainer = load_run(run_dir)
    if isinstance(config, TaskConfig):
        return trainer.load_weights(checkpoint)
    torch_state, _, _ = load_checkpoint(checkpoint, trainer.agent.device)
    trainer.agent.load_state_dict(torch_state["agent"], weights_only=True)
    return trainer.agent


def export_encoder(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Save the encoder of a run's latest checkpoint (agent or task) with save_encoder; returns out_dir."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"cannot export to {out_dir}: it is a file; pass a directory")
    encoder = find_encoder(load_run_weights(run_dir))
    save_encoder(encoder, out_dir)
    return out_dir

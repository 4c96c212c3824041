"""One optimiser vocabulary for agents and tasks (OptimConfig, `agent.optim` / `task.optim`): the optimiser, its
parameter groups (encoder learning-rate multiplier, frozen parts, no weight decay on biases), the learning-rate
schedule, gradient clipping and bf16 autocast, written once.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from rl_lab.config import OptimConfig
from rl_lab.errors import UserError


def param_groups(model: nn.Module, encoders, encoder_cfg, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Optimiser param groups: the encoders' parameters at lr * encoder_cfg.lr_mult, the rest at lr; frozen ones
    left out. Each group carries its `lr_mult`, which set_lr honours. With weight decay, biases and normalisation
    weights (1-d tensors) get none, as usual. `encoders`: one module or several."""
    encoders = encoders if isinstance(encoders, (list, tuple, nn.ModuleList)) else [encoders]
    in_encoder = {id(p) for encoder in encoders for p in encoder.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in in_encoder, weight_decay > 0 and p.ndim >= 2), []).append(p)
    if not groups:
        raise UserError("every parameter is frozen: nothing to train (set encoder.freeze=false or add a head)")
    out = []
    for (enc, decay), params in groups.items():
        mult = encoder_cfg.lr_mult if enc else 1.0
        out.append({"params": params, "lr": lr * mult, "lr_mult": mult, "weight_decay": weight_decay * decay})
    return out


def make_optimizer(
    model: nn.Module, encoders, encoder_cfg, cfg: OptimConfig, fused: bool = False
) -> torch.optim.Optimizer:
    """The optimiser `cfg` names over `model`'s trainable parameters (encoders at lr * encoder.lr_mult)."""
    groups = param_groups(model, encoders, encoder_cfg, cfg.lr, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "rmsprop":  # alpha 0.99 as in the A3C paper and SB3's A2C
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.99, momentum=cfg.momentum, eps=cfg.eps)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    # fused: one kernel for all parameters instead of a dozen small ops per tensor (matters for small nets)
    return cls(groups, lr=cfg.lr, eps=cfg.eps, **({"fused": True} if fused else {}))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the base learning rate of every param group, scaled by the group's lr_mult."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate before the encoder's multiplier (what `optim.lr` and the schedule speak of)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_mult", 1.0)


def scheduled_lr(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """The learning rate at `step` of `total_steps` (agents: environment steps) for constant, linear, cosine."""
    progress = min(step / total_steps, 1.0) if total_steps > 0 else 1.0
    if cfg.schedule == "linear":
        return cfg.lr + progress * (cfg.lr_end - cfg.lr)
    if cfg.schedule == "cosine":
        return cfg.lr_end + 0.5 * (cfg.lr - cfg.lr_end) * (1 + math.cos(math.pi * progress))
    return cfg.lr


def anneal(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int, total_steps: int) -> None:
    """Agents call this before an update: the schedule as a pure function of the env step (nothing to checkpoint)."""
    if cfg.schedule != "constant":
        set_lr(optimizer, scheduled_lr(cfg, step, total_steps))


def make_epoch_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int):
    """Tasks: a torch scheduler stepped once per epoch (plateau: with the validation loss)."""
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "step":
        return sched.StepLR(optimizer, cfg.step_size, cfg.decay)
    if cfg.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, epochs, eta_min=cfg.lr_end)
    if cfg.schedule == "exponential":
        return sched.ExponentialLR(optimizer, cfg.decay)
    if cfg.schedule == "plateau":
        return sched.ReduceLROnPlateau(optimizer, factor=cfg.decay, patience=cfg.patience)
    if cfg.schedule == "linear":
        return sched.LambdaLR(optimizer, lambda epoch: scheduled_lr(cfg, epoch, epochs) / cfg.lr)
    return sched.LambdaLR(optimizer, lambda epoch: 1.0)


def clip_gradients(parameters, cfg: OptimConfig) -> float:
    """Clip the global gradient norm to `grad_clip` (if set); returns the norm before clipping."""
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
    return float(nn.utils.clip_grad_norm_(parameters, max_norm))


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when `amp` (OptimConfig.amp); elsewhere no context at all (a disabled autocast still
    costs time per step)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

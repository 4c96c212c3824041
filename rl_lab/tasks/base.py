"""What every epoch-based task trainer shares (classification, captioning, RAM): the epoch loop, validation and
the best weights, early stopping, the schedule step, the final held-out scores, checkpoints with exact resume,
and loading the tested weights. A task writes its model, `train_epoch`, `validate`, `test` and `summary`.

It keeps the trainer contract of rl_lab.trainer, like the env loops, so rl_lab.runs drives both the same way.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import rl_lab.distributed as distributed
from rl_lab.checkpoint import (
    load_checkpoint,
    load_module_state,
    nonfinite_tensors,
    reading_checkpoint,
    save_checkpoint,
    state_from_meta,
)
from rl_lab.config import TaskConfig
from rl_lab.errors import Diverged
from rl_lab.logger import RunLogger
from rl_lab.optim import base_lr
from rl_lab.seeding import rng_state, set_rng_state


@dataclass
class EpochState:
    epoch: int = 0  # finished epochs
    step: int = 0  # optimiser steps
    metrics_lines: int = 0
    best_val: dict = field(default_factory=dict)  # validation scores of the best weights
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best validation score (early stopping)
    stopped_early: bool = False
    train_examples: int = 0  # images (or captions) trained on, summed over processes
    train_time_s: float = 0.0  # time in training epochs, summed over processes of this run
    wall_time_s: float = 0.0
    final: dict | None = None  # held-out scores of the best weights, once logged


def fingerprint(model: nn.Module) -> str:
    """A short hash of the initial weights: soups need runs fine-tuned from one initialisation."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """Independent seeds per (run seed, epoch, stream): shuffling and augmentation depend on nothing else."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


class LossWatch:
    """The run's logger for `train_epoch`: a logged row with a NaN or infinite loss stops the run (Diverged) at
    that step, not an epoch later; tasks compute their loss on the host only for these rows (no sync per step)."""

    def __init__(self, logger: RunLogger):
        self.logger = logger

    def log(self, step: int, metrics: dict, extra: dict | None = None) -> None:
        Diverged.check(step, {k: v for k, v in metrics.items() if "loss" in k}, "training loss")
        self.logger.log(step, metrics, extra)

    def __getattr__(self, name: str):
        return getattr(self.logger, name)


class EpochTrainer:
    """Subclasses call `super().__init__`, build `data`, `model`, `optimizer`, `schedule` (and `ema`), then
    `ready()`; they write `train_epoch(logger)`, `validate() -> scores`, `test(model) -> scores`, `summary()`,
    `evaluate_checkpoint` and `report`."""

    selection = ("loss", "min")  # the validation score that picks the best weights, and its better direction
    ema = None  # an rl_lab.tasks.training.EMA when the task validates averaged weights

    def __init__(self, config: TaskConfig, device: torch.device, rng: np.random.Generator):
        self.config, self.device, self.rng = config, device, rng
        self.rank, self.world = distributed.rank_and_world()
        self.state = EpochState()

    def ready(self) -> None:
        """After the model is built: remember its initial weights' fingerprint and start the best weights there."""
        self.init_fingerprint = fingerprint(self.model)
        self.best = copy.deepcopy(self.eval_model.state_dict())

    @property
    def total_steps(self) -> int:
        return self.config.train.epochs * max(len(self.data["train"]) // self.config.train.batch_size, 1)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema else self.model

    def run(self, run_dir: Path, logger: RunLogger) -> dict:
        config, state = self.config, self.state
        self.run_dir = run_dir
        start = time.perf_counter()
        while state.epoch < config.train.epochs and not state.stopped_early:
            self.train_epoch(LossWatch(logger))
            val = self.validate()
            self.check_finite(val)
            self.end_epoch(val, logger)
            self.save(run_dir, logger, start)
        if state.final is None:  # a run resumed after its final checkpoint has logged this already
            state.final = self.test(self.best_model())
            logger.log(state.step, {"epoch": state.epoch, **self.final_row(state.final)})
            self.save(run_dir, logger, start)
        return {
            **self.summary(),
            "best_epoch": state.best_epoch,
            "epochs": state.epoch,
            "steps": state.step,
            "dataset": config.data.name,
            "wall_time_s": state.wall_time_s + time.perf_counter() - start,
        }

    def end_epoch(self, val: dict[str, float], logger: RunLogger) -> None:
        """Step the schedule, remember the best weights, decide on early stopping, log the epoch."""
        config, state = self.config, self.state
        key, direction = self.selection
        lr = base_lr(self.optimizer)
        if config.task.optim.schedule == "plateau":
            self.schedule.step(val[key] if direction == "min" else -val[key])
        else:
            self.schedule.step()
        state.epoch += 1
        best = state.best_val.get(key)
        if best is None or (val[key] < best if direction == "min" else val[key] > best):
            state.best_val, state.best_epoch, state.bad_epochs = dict(val), state.epoch, 0
            self.best = copy.deepcopy(self.eval_model.state_dict())
        else:
            state.bad_epochs += 1
        patience = config.train.early_stopping
        state.stopped_early = bool(patience) and state.bad_epochs >= patience and state.epoch < config.train.epochs
        row = {"epoch": state.epoch, "lr": lr, **self.epoch_row(), **{f"val/{k}": v for k, v in val.items()}}
        per_s = state.train_examples / max(state.train_time_s, 1e-9)
        logger.log(state.step, row, extra={"time/train_examples_per_s": per_s})

    def check_finite(self, val: dict) -> None:
        """Stop the run (Diverged, exit status 3) after an epoch that left NaN or infinite weights or validation loss,
        before it is checkpointed, so the last finite checkpoint stays the latest."""
        step, key = self.state.step, self.selection[0]
        bad = nonfinite_tensors(self.model.state_dict())
        if bad:
            raise Diverged(step, f"non-finite weights in {', '.join(bad[:3])}")
        Diverged.check(step, {k: v for k, v in val.items() if "loss" in k or k == key}, "validation scores")

    def epoch_row(self) -> dict[str, float]:
        """Training figures of the epoch just ended, logged with its validation scores."""
        return {}

    def final_row(self, final: dict) -> dict[str, float]:
        """The held-out scores as logged once at the end."""
        return {f"test/{k}": v for k, v in final.items()}

    def best_model(self) -> nn.Module:
        model = copy.deepcopy(self.eval_model)
        model.load_state_dict(self.best)
        return model.eval()

    def checkpoint_meta(self) -> dict:
        """What else a checkpoint should tell (JSON), e.g. how to rebuild the model without the data."""
        return {}

    def save(self, run_dir: Path, logger: RunLogger, start: float) -> None:
        s = self.state
        if not distributed.is_main_process():
            return
        json_rng, tensor_rng = rng_state(self.rng)
        torch_state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "best": self.best,
            "rng": tensor_rng,
        }
        if self.ema:
            torch_state["ema"] = self.ema.model.state_dict()
        meta = {**vars(s), "metrics_lines": logger.lines, "rng": json_rng, "init_fingerprint": self.init_fingerprint}
        meta.update(self.checkpoint_meta(), wall_time_s=s.wall_time_s + time.perf_counter() - start)
        save_checkpoint(run_dir / "checkpoints", s.step, torch_state, {}, meta, self.config.run.keep_checkpoints)

    def resume(self, checkpoint: Path) -> None:
        """Load a checkpoint of this run: weights, optimiser, schedule, EMA, best weights, RNGs and counters."""
        torch_state, _, meta = load_checkpoint(checkpoint, self.device)
        with reading_checkpoint(checkpoint):
            load_module_state(self.model, torch_state["model"], "model")
            self.optimizer.load_state_dict(torch_state["optimizer"])
            self.schedule.load_state_dict(torch_state["schedule"])
            if self.ema:
                load_module_state(self.ema.model, torch_state["ema"], "ema")
            self.best = torch_state["best"]
            set_rng_state(self.rng, meta["rng"], torch_state["rng"])
            self.init_fingerprint = meta["init_fingerprint"]
            self.state = state_from_meta(EpochState, meta, checkpoint)

    def load_weights(self, checkpoint: Path) -> nn.Module:
        """The model a finished run was tested with (best validation weights, EMA if used), in eval mode."""
        torch_state, _, meta = load_checkpoint(checkpoint, self.device)
        model = copy.deepcopy(self.eval_model)
        load_module_state(model, torch_state["best"], f"{checkpoint} best weights")
        self.init_fingerprint = meta.get("init_fingerprint", self.init_fingerprint)
        return model.eval()

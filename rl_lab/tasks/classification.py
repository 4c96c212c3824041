"""Image classification on the shared backbone: a backbone encoder plus a head, trained with the lectures' toolkit.

Read top to bottom: the config, the model, evaluation, then the trainer: epochs of shuffled, augmented batches
(optionally data-parallel under torchrun), validation after each epoch with EMA weights if asked, a learning-rate
schedule, early stopping, a checkpoint per epoch, and the test set once at the end with the best validation
weights. Logging, checkpoints and the run directory are rl_lab's.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_lab.backbone import EncoderSpec, LinearHead, MLPHead, build_encoder
from rl_lab.backbone.transfer import init_encoder, param_groups, saved_spec
from rl_lab.checkpoint import latest_checkpoint, load_checkpoint, load_module_state, reading_checkpoint, save_checkpoint
from rl_lab.config import EncoderConfig, TaskConfig, check
from rl_lab.data import load_dataset
from rl_lab.diagnostics import snapshot, update_ratios
from rl_lab.errors import UserError
from rl_lab.logger import RunLogger
from rl_lab.seeding import rng_state, set_rng_state
from rl_lab.tasks import distributed
from rl_lab.tasks.augment import AugmentConfig, augment
from rl_lab.tasks.training import EMA, OptimConfig, ScheduleConfig, batches, make_optimizer, make_schedule


@dataclass
class ClassificationConfig:
    name: str = "classification"
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig("lenet"))
    head_hidden: list[int] = field(default_factory=list)  # hidden layers of the head; [] = a linear head
    head_dropout: float = 0.0  # dropout on the encoder's features, before the head
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    label_smoothing: float = 0.0
    ema_decay: float | None = None  # e.g. 0.99: validate and test with an exponential moving average of the weights
    amp: bool = True  # bf16 autocast on CUDA; CPU runs are always full precision

    def __post_init__(self):
        check(0.0 <= self.head_dropout < 1.0, "head_dropout", "must be in [0, 1)")
        check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        check(self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "ema_decay", "must be in (0, 1) or null")


class Classifier(nn.Module):
    """Logits of images: encoder features -> (dropout) -> head. Takes uint8 (scaled to [0, 1]) or float images.

    Images whose shape differs from the encoder's input shape (an encoder made for other inputs, e.g. an agent's
    84x84 frame stack) are resized and their channels repeated or averaged to fit.
    """

    def __init__(self, spec: EncoderSpec, num_classes: int, head_hidden: list[int], head_dropout: float = 0.0):
        super().__init__()
        self.encoder = build_encoder(spec)
        self.dropout = nn.Dropout(head_dropout)
        dim = self.encoder.out_dim
        self.head = MLPHead(dim, head_hidden, num_classes) if head_hidden else LinearHead(dim, num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        if not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images
        shape = self.encoder.spec.input_shape
        if len(shape) == 3 and tuple(x.shape[1:]) != shape:
            x = fit_images(x, shape)
        return self.head(self.dropout(self.encoder(x)))


def fit_images(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    channels, height, width = shape
    if x.shape[2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1)
    return x


def encoder_spec(cfg: EncoderConfig, image_shape: tuple[int, ...]) -> EncoderSpec:
    """The encoder to build: for `init`, the saved encoder's input shape (images are fitted to it)."""
    shape = saved_spec(cfg.init).input_shape if cfg.init else image_shape
    if len(shape) != 3 and np.prod(shape) != np.prod(image_shape):
        raise UserError(
            f"encoder.init={cfg.init} takes inputs of shape {tuple(shape)}, which images of shape "
            f"{tuple(image_shape)} cannot be fitted to; use an image encoder"
        )
    return EncoderSpec(cfg.name, tuple(shape), cfg.kwargs)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA only; elsewhere no context at all (a disabled autocast still costs time per step)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, amp: bool = True):
    """Logits (float32, on the CPU) of all images, in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        with autocast(device, amp):
            out.append(model(images[start : start + batch_size].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "acc": (logits.argmax(1) == labels).float().mean().item(),
    }


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


@dataclass
class EpochState:
    epoch: int = 0  # finished epochs
    step: int = 0  # optimiser steps
    metrics_lines: int = 0
    best_val_loss: float = float("inf")  # the best weights are those of the lowest validation loss
    best_val_acc: float = 0.0  # validation accuracy of the best weights
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the lowest validation loss (early stopping)
    stopped_early: bool = False
    train_images: int = 0
    train_time_s: float = 0.0  # time in training epochs, summed over processes of this run
    wall_time_s: float = 0.0
    test: dict | None = None  # test scores, once logged


class ClassificationTrainer:
    """The task's training loop; rl_lab.run drives it like an agent's loop (run, resume, state)."""

    def __init__(self, config: TaskConfig, device: torch.device, rng: np.random.Generator):
        self.config, self.device, self.rng = config, device, rng
        c, d = config.task, config.data
        self.data = {
            split: load_dataset(d.name, split, config.seed, d.cache_dir, d.val_fraction, **d.kwargs)
            for split in ("train", "val", "test")
        }
        train = self.data["train"]
        self.num_classes = train.num_classes
        spec = encoder_spec(c.encoder, tuple(train.images.shape[1:]))
        self.model = Classifier(spec, self.num_classes, c.head_hidden, c.head_dropout)
        init_encoder(self.model.encoder, c.encoder)
        self.model.to(device)
        self.init_fingerprint = fingerprint(self.model)
        self.rank, self.world = distributed.rank_and_world()
        if config.train.batch_size % self.world:
            raise UserError(f"train.batch_size={config.train.batch_size} must be divisible by {self.world} processes")
        self.net = distributed.wrap(self.model, device)  # the model itself in a single process
        groups = param_groups(self.model, self.model.encoder, c.encoder, c.optim.lr, c.optim.weight_decay)
        self.optimizer = make_optimizer(groups, c.optim)
        self.schedule = make_schedule(self.optimizer, c.schedule, config.train.epochs)
        self.ema = EMA(self.model, c.ema_decay) if c.ema_decay else None
        self.best = copy.deepcopy(self.eval_model.state_dict())
        self.state = EpochState()

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema else self.model

    def run(self, run_dir: Path, logger: RunLogger) -> dict:
        config, state = self.config, self.state
        start = time.perf_counter()
        while state.epoch < config.train.epochs and not state.stopped_early:
            self.train_epoch(logger)
            self.end_epoch(logger)
            self.save(run_dir, logger, start)
        best = self.best_model()
        self.test_logits = predict(best, self.data["test"].images, config.train.eval_batch_size, self.device)
        if state.test is None:  # a run resumed after its final checkpoint has logged this already
            state.test = scores(self.test_logits, self.data["test"].labels)
            logger.log(state.step, {"epoch": state.epoch, **{f"test/{k}": v for k, v in state.test.items()}})
            self.save(run_dir, logger, start)
        wall = state.wall_time_s + time.perf_counter() - start
        parallel = {"processes": self.world, "replica_max_abs_diff": distributed.replica_divergence(self.model)}
        return {
            "test_acc": state.test["acc"],
            "test_loss": state.test["loss"],
            "best_val_acc": state.best_val_acc,
            "best_val_loss": state.best_val_loss,
            "best_epoch": state.best_epoch,
            "epochs": state.epoch,
            "stopped_early": state.stopped_early,
            "steps": state.step,
            "dataset": config.data.name,
            "num_classes": self.num_classes,
            "init_fingerprint": self.init_fingerprint,
            "wall_time_s": wall,
            "train_images_per_s": state.train_images / max(state.train_time_s, 1e-9),
            **(parallel if self.world > 1 else {}),
        }

    def train_epoch(self, logger: RunLogger) -> None:
        config, c, state = self.config, self.config.task, self.state
        train = self.data["train"]
        epoch = state.epoch
        loader = batches(
            train.images,
            train.labels,
            config.train.batch_size,
            seed=epoch_seed(config.seed, epoch, 0),
            num_workers=config.train.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        aug_gen = torch.Generator().manual_seed(epoch_seed(config.seed, epoch, 1))
        self.net.train()
        totals = torch.zeros(3, device=self.device)  # summed loss, correct, examples (this process's shards)
        start = time.perf_counter()
        for images, labels in loader:
            x = images.to(self.device, non_blocking=True).float() / 255
            y = labels.to(self.device, non_blocking=True)
            if c.augment.enabled:
                x = augment(x, c.augment, aug_gen)  # on the global batch, so every process draws the same numbers
            x, y = distributed.shard(x, self.rank, self.world), distributed.shard(y, self.rank, self.world)
            with autocast(self.device, c.amp):
                logits = self.net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=c.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.optim.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip)
            log_now = (state.step + 1) % config.logger.log_every == 0
            before = snapshot(self.model) if log_now else None
            self.optimizer.step()
            if self.ema:
                self.ema.update(self.model)
            state.step += 1
            with torch.no_grad():
                totals[0] += loss.detach() * len(y)
                totals[1] += (logits.argmax(1) == y).sum()
                totals[2] += len(y)
            if log_now:
                row = {"epoch": epoch, "train/loss": distributed.mean(loss.detach()).item()}
                row["train/lr"] = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0]["lr_mult"]
                ratios = update_ratios(self.model, before)  # |dW| / |W| per weight tensor; ~1e-3 is healthy
                row["train/update_ratio"] = float(np.mean(list(ratios.values()))) if ratios else 0.0
                logger.log(state.step, row, extra={f"update_ratio/{k}": v for k, v in ratios.items()})
                logger.progress(state.step, epoch=epoch, loss=f"{row['train/loss']:.4f}")
        totals = distributed.total(totals)
        state.train_images += int(totals[2].item())
        state.train_time_s += time.perf_counter() - start
        self.epoch_train = {"loss": (totals[0] / totals[2]).item(), "acc": (totals[1] / totals[2]).item()}

    def end_epoch(self, logger: RunLogger) -> None:
        """Validate, step the schedule, remember the best weights, decide on early stopping, log the epoch."""
        config, state = self.config, self.state
        val_data = self.data["val"]
        val = scores(
            predict(self.eval_model, val_data.images, config.train.eval_batch_size, self.device), val_data.labels
        )
        lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0]["lr_mult"]
        if config.task.schedule.name == "plateau":
            self.schedule.step(val["loss"])
        else:
            self.schedule.step()
        state.epoch += 1
        if val["loss"] < state.best_val_loss:  # less noisy than accuracy on a few hundred images
            state.best_val_loss, state.best_val_acc = val["loss"], val["acc"]
            state.best_epoch, state.bad_epochs = state.epoch, 0
            self.best = copy.deepcopy(self.eval_model.state_dict())
        else:
            state.bad_epochs += 1
        patience = config.train.early_stopping
        state.stopped_early = bool(patience) and state.bad_epochs >= patience and state.epoch < config.train.epochs
        row = {"epoch": state.epoch, "lr": lr}
        row.update({f"train/epoch_{k}": v for k, v in self.epoch_train.items()})
        row.update({f"val/{k}": v for k, v in val.items()})
        logger.log(state.step, row, extra={"time/train_images_per_s": state.train_images / state.train_time_s})

    def best_model(self) -> nn.Module:
        model = copy.deepcopy(self.eval_model)
        model.load_state_dict(self.best)
        return model.eval()

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
        meta["wall_time_s"] = s.wall_time_s + time.perf_counter() - start
        save_checkpoint(run_dir / "checkpoints", s.step, torch_state, {}, meta, self.config.run.keep_checkpoints)

    def resume(self, run_dir: Path) -> None:
        """Load the latest checkpoint: weights, optimiser, schedule, EMA, best weights, RNGs and counters."""
        path = latest_checkpoint(run_dir / "checkpoints")
        torch_state, _, meta = load_checkpoint(path, self.device)
        with reading_checkpoint(path):
            load_module_state(self.model, torch_state["model"], "model")
            self.optimizer.load_state_dict(torch_state["optimizer"])
            self.schedule.load_state_dict(torch_state["schedule"])
            if self.ema:
                load_module_state(self.ema.model, torch_state["ema"], "ema")
            self.best = torch_state["best"]
            set_rng_state(self.rng, meta.pop("rng"), torch_state["rng"])
            self.init_fingerprint = meta.pop("init_fingerprint")
            self.state = EpochState(**meta)

    def load_weights(self, checkpoint: Path) -> nn.Module:
        """The model a finished run was tested with (best validation weights, EMA if used), in eval mode."""
        torch_state, _, meta = load_checkpoint(checkpoint, self.device)
        model = copy.deepcopy(self.eval_model)
        load_module_state(model, torch_state["best"], f"{checkpoint} best weights")
        self.init_fingerprint = meta.get("init_fingerprint", self.init_fingerprint)
        return model.eval()

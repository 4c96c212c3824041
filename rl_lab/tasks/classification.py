"""Image classification on the shared backbone: a backbone encoder plus a head, trained with the lectures' toolkit.

Read top to bottom: the model, evaluation, then the trainer: epochs of shuffled, augmented batches (optionally
data-parallel under torchrun), validation after each epoch with EMA weights if asked, and the test set once at the
end with the best validation weights. Settings: tasks/configs.py; the epoch loop, schedule, early stopping and
checkpoints: tasks/base.py; logging and the run directory: rl_lab.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import rl_lab.distributed as distributed
from rl_lab.backbone import EncoderSpec, LinearHead, MLPHead, build_encoder
from rl_lab.backbone.transfer import init_encoder, saved_spec
from rl_lab.backbone.vision import fit_images
from rl_lab.config import EncoderConfig, TaskConfig
from rl_lab.data import load_dataset
from rl_lab.diagnostics import snapshot, update_ratios
from rl_lab.errors import UserError
from rl_lab.figures import confusion_matrix, plot_confusion_matrix, plot_epochs
from rl_lab.logger import RunLogger
from rl_lab.optim import autocast, base_lr, make_epoch_schedule, make_optimizer
from rl_lab.tasks.augment import augment
from rl_lab.tasks.base import EpochTrainer, epoch_seed
from rl_lab.tasks.training import EMA, batches


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


def encoder_spec(cfg: EncoderConfig, image_shape: tuple[int, ...]) -> EncoderSpec:
    """The encoder to build: for `init`, the saved encoder's input shape (images are fitted to it)."""
    shape = saved_spec(cfg.init).input_shape if cfg.init else image_shape
    if len(shape) != 3 and np.prod(shape) != np.prod(image_shape):
        raise UserError(
            f"encoder.init={cfg.init} takes inputs of shape {tuple(shape)}, which images of shape "
            f"{tuple(image_shape)} cannot be fitted to; use an image encoder"
        )
    return EncoderSpec(cfg.name, tuple(shape), cfg.kwargs)


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


def load_splits(config: TaskConfig) -> dict:
    d = config.data
    return {
        split: load_dataset(d.name, split, config.seed, d.cache_dir, d.val_fraction, **d.kwargs)
        for split in ("train", "val", "test")
    }


class ClassificationTrainer(EpochTrainer):
    """Epochs of shuffled, augmented batches (data-parallel under torchrun), validated by loss (EMA weights if
    asked), the test set once at the end with the best weights."""

    def __init__(self, config: TaskConfig, device: torch.device, rng: np.random.Generator):
        super().__init__(config, device, rng)
        c = config.task
        self.data = load_splits(config)
        self.num_classes = self.data["train"].num_classes
        self.model, encoder = self.build_model()
        init_encoder(encoder, c.encoder)
        self.model.to(device)
        if config.train.batch_size % self.world:
            raise UserError(f"train.batch_size={config.train.batch_size} must be divisible by {self.world} processes")
        self.net = distributed.wrap(self.model, device)  # the model itself in a single process
        self.optimizer = make_optimizer(self.model, encoder, c.encoder, c.optim)
        self.schedule = make_epoch_schedule(self.optimizer, c.optim, config.train.epochs)
        self.ema = EMA(self.model, c.ema_decay) if c.ema_decay else None
        self.ready()

    def build_model(self) -> tuple[nn.Module, nn.Module]:
        """(model: images -> logits, its backbone encoder)."""
        c = self.config.task
        spec = encoder_spec(c.encoder, tuple(self.data["train"].images.shape[1:]))
        model = Classifier(spec, self.num_classes, c.head_hidden, c.head_dropout)
        return model, model.encoder

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
            with autocast(self.device, c.optim.amp):
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
                row["train/lr"] = base_lr(self.optimizer)
                ratios = update_ratios(self.model, before)  # |dW| / |W| per weight tensor; ~1e-3 is healthy
                row["train/update_ratio"] = float(np.mean(list(ratios.values()))) if ratios else 0.0
                logger.log(state.step, row, extra={f"update_ratio/{k}": v for k, v in ratios.items()})
                logger.progress(state.step, epoch=epoch, loss=f"{row['train/loss']:.4f}")
        totals = distributed.total(totals)
        state.train_examples += int(totals[2].item())
        state.train_time_s += time.perf_counter() - start
        self.epoch_train = {"loss": (totals[0] / totals[2]).item(), "acc": (totals[1] / totals[2]).item()}

    def epoch_row(self) -> dict[str, float]:
        return {f"train/epoch_{k}": v for k, v in self.epoch_train.items()}

    def validate(self, model: nn.Module | None = None, split: str = "val") -> dict[str, float]:
        data = self.data[split]
        logits = predict(model or self.eval_model, data.images, self.config.train.eval_batch_size, self.device)
        return scores(logits, data.labels)

    def test(self, model: nn.Module) -> dict[str, float]:
        return self.validate(model, "test")

    def summary(self) -> dict:
        state = self.state
        self.test_logits = predict(
            self.best_model(), self.data["test"].images, self.config.train.eval_batch_size, self.device
        )
        parallel = {"processes": self.world, "replica_max_abs_diff": distributed.replica_divergence(self.model)}
        return {
            "test_acc": state.final["acc"],
            "test_loss": state.final["loss"],
            "best_val_acc": state.best_val["acc"],
            "best_val_loss": state.best_val["loss"],
            "stopped_early": state.stopped_early,
            "num_classes": self.num_classes,
            "init_fingerprint": self.init_fingerprint,
            "train_images_per_s": state.train_examples / max(state.train_time_s, 1e-9),
            **(parallel if self.world > 1 else {}),
        }

    def evaluate_checkpoint(self, checkpoint: Path, **options) -> tuple[dict, str]:
        """Validation and test accuracy of a run's checkpoint (its best validation weights), as a table."""
        model = self.load_weights(checkpoint)
        result = {split: self.validate(model, split) for split in ("val", "test")}
        lines = [f"{checkpoint.parent.parent} at {checkpoint.name} ({self.config.data.name})"]
        for split, s in result.items():
            n = len(self.data[split])
            lines.append(f"  {split:<5} accuracy {s['acc']:.2%}   loss {s['loss']:.4f}   ({n} images)")
        return result, "\n".join(lines)

    @property
    def model_name(self) -> str:
        """What the run trains, as its header, report and figures name it: the encoder."""
        return self.config.task.encoder.name

    def report(self, summary: dict, run_dir: Path) -> str:
        """The confusion matrix and the learning curves (plots/), and the scores as text."""
        config, test = self.config, self.data["test"]
        what = f"{self.model_name} on {config.data.name} (seed {config.seed})"
        counts = confusion_matrix(self.test_logits.argmax(1).numpy(), test.labels.numpy(), self.num_classes)
        matrix = plot_confusion_matrix(
            counts,
            list(test.class_names),
            run_dir / "plots" / "confusion_matrix.png",
            f"test confusion matrix: {what}, accuracy {summary['test_acc']:.2%}",
        )
        curve = plot_epochs(run_dir / "metrics.jsonl", run_dir / "plots" / "learning_curve.png", what)
        best = f"epoch {summary['best_epoch']}: lowest val loss, tested"
        return "\n".join(
            [
                f"{what}: {summary['epochs']} epochs, {summary['steps']} steps",
                f"  test accuracy  {summary['test_acc']:.2%}   (loss {summary['test_loss']:.4f}, {len(test)} images)",
                f"  best val acc   {summary['best_val_acc']:.2%}   ({best})",
                f"training: {summary['wall_time_s']:.1f} s, {summary['train_images_per_s']:.0f} train images/s",
                f"run dir: {run_dir}",
                f"plots: {curve}, {matrix}",
            ]
        )

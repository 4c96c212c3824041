"""RAM trained as a supervised task: `rl-lab train configs/ram_mnist.yaml` (task.name: ram).

The classification task's trainer does the rest unchanged: data splits, epochs, validation and best weights,
schedules, EMA, checkpoints with exact resume, the test at the end, summary.json, `rl-lab eval`. RAM enters it as a
classifier whose logits are the log of its Monte-Carlo averaged class probabilities (M = task.eval_samples sampled
trajectories), and with its own training step (the hybrid loss). After every epoch it also reports the deterministic
mean-location accuracy and draws where it looked (plots/glimpses.png, plots/glimpses.gif, W&B).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from rl_lab.agents.ram import RAM, predict, ram_losses
from rl_lab.errors import UserError
from rl_lab.logger import RunLogger
from rl_lab.optim import base_lr
from rl_lab.ram.figures import glimpse_figures
from rl_lab.tasks.augment import augment
from rl_lab.tasks.base import epoch_seed
from rl_lab.tasks.classification import ClassificationTrainer, encoder_spec, scores
from rl_lab.tasks.classification import predict as predict_logits
from rl_lab.tasks.training import batches


class RAMClassifier(nn.Module):
    """RAM as the classification task sees a model: images (uint8 or [0, 1] floats) -> log class probabilities.

    `samples` trajectories are averaged (Monte Carlo); samples = 0 follows the mean locations, deterministically.
    """

    def __init__(self, ram: RAM, samples: int):
        super().__init__()
        self.ram, self.samples = ram, samples

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images
        return predict(self.ram, x, self.samples).clamp_min(1e-12).log()


class RAMTrainer(ClassificationTrainer):
    """The classification task with RAM as the model, its hybrid loss as the training step, and after every epoch
    the mean-location accuracy and the glimpse figures."""

    @property
    def model_name(self) -> str:
        return f"ram ({self.config.task.glimpses} glimpses)"

    def build_model(self) -> tuple[nn.Module, nn.Module]:
        c, train = self.config.task, self.data["train"]
        if self.world > 1:
            raise UserError("task ram trains in one process; run it without torchrun")
        sensor = (c.scales * train.images.shape[1], c.glimpse_size, c.glimpse_size)
        ram = RAM(c, tuple(train.images.shape[1:]), self.num_classes, encoder_spec(c.encoder, sensor).input_shape)
        return RAMClassifier(ram, c.eval_samples), ram.what

    def train_epoch(self, logger: RunLogger) -> None:
        """One pass of the hybrid loss over shuffled batches; the classification task's batches and augmentation."""
        config, c, state = self.config, self.config.task, self.state
        train = self.data["train"]
        loader = batches(
            train.images,
            train.labels,
            config.train.batch_size,
            seed=epoch_seed(config.seed, state.epoch, 0),
            num_workers=config.train.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        aug_gen = torch.Generator().manual_seed(epoch_seed(config.seed, state.epoch, 1))
        ram = self.model.ram.train()
        totals = torch.zeros(3, device=self.device)  # summed cross-entropy, correct (sampled trajectories), examples
        start = time.perf_counter()
        for images, labels in loader:
            x = images.to(self.device, non_blocking=True).float() / 255
            y = labels.to(self.device, non_blocking=True)
            if c.augment.enabled:
                x = augment(x, c.augment, aug_gen)
            trajectory = ram(x)
            losses = ram_losses(trajectory, y, c)
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if c.optim.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip)
            self.optimizer.step()
            if self.ema:
                self.ema.update(self.model)
            state.step += 1
            with torch.no_grad():
                n = torch.tensor(float(len(y)), device=self.device)
                totals += torch.stack([losses["classification"].detach() * n, losses["reward"] * n, n])
            if state.step % config.logger.log_every == 0:
                row = {"epoch": state.epoch, **{f"train/{k}": v.item() for k, v in losses.items()}}
                row["train/lr"] = base_lr(self.optimizer)
                logger.log(state.step, row)
                logger.progress(state.step, epoch=state.epoch, reward=f"{row['train/reward']:.3f}")
        state.train_examples += int(totals[2].item())
        state.train_time_s += time.perf_counter() - start
        self.epoch_train = {"loss": (totals[0] / totals[2]).item(), "acc": (totals[1] / totals[2]).item()}

    def end_epoch(self, val: dict[str, float], logger: RunLogger) -> None:
        """The classification task's epoch end (Monte-Carlo validation), then the mean-location accuracy and the
        figures."""
        super().end_epoch(val, logger)
        val = self.data["val"]
        row = {"epoch": self.state.epoch, **{f"val/{k}_mean_location": v for k, v in self.mean_location(val).items()}}
        logger.log(self.state.step, row)
        if self.config.task.figure_examples:
            png, gif = self.figures(val, self.run_dir / "plots")
            logger.log_media(self.state.step, {"glimpses/paths": png, "glimpses/animation": gif})

    def mean_location(self, data, model: nn.Module | None = None) -> dict[str, float]:
        """Scores of the deterministic trajectories that look at the location policy's mean."""
        deterministic = RAMClassifier((model or self.eval_model).ram, samples=0)
        logits = predict_logits(deterministic, data.images, self.config.train.eval_batch_size, self.device)
        return scores(logits, data.labels)

    @torch.no_grad()
    def figures(self, data, out_dir: Path) -> tuple[Path, Path]:
        pick = torch.linspace(0, len(data) - 1, min(self.config.task.figure_examples, len(data))).long()
        ram = self.eval_model.ram
        x = data.images[pick].to(self.device).float() / 255
        trajectory = ram(x, sample=False)
        return glimpse_figures(
            x,
            data.labels[pick],
            trajectory.locations,
            trajectory.logits.argmax(-1),
            ram.patch_sides(),
            out_dir,
        )

    def summary(self) -> dict:
        summary = super().summary()
        test = self.mean_location(self.data["test"], self.best_model())
        return {
            **summary,
            "test_acc_mean_location": test["acc"],
            "test_error": 1 - summary["test_acc"],
            "test_error_mean_location": 1 - test["acc"],
            "eval_samples": self.config.task.eval_samples,
            "glimpses": self.config.task.glimpses,
            "train_image_glimpses_per_s": summary["train_images_per_s"] * self.config.task.glimpses,
        }

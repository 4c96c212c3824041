"""How rl_lab.run drives a supervised task: build it, train it into its run directory, evaluate it later."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rl_lab.checkpoint import latest_checkpoint
from rl_lab.config import TaskConfig
from rl_lab.device import select_device
from rl_lab.fileio import write_atomic
from rl_lab.logger import RunLogger
from rl_lab.seeding import seed_everything
from rl_lab.tasks import TASKS, distributed


def build_task(config: TaskConfig):
    """Device, seeds, data and model; every UserError from here happens before any file is written."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    device = select_device(distributed.setup(config.device))
    rng = seed_everything(config.seed)
    return TASKS[config.task.name](config, device, rng)


def train_task(config: TaskConfig, trainer, run_dir: Path, resume: bool) -> dict:
    main = distributed.is_main_process()
    train = trainer.data["train"]
    total_steps = config.train.epochs * max(len(train) // config.train.batch_size, 1)
    logger = (
        RunLogger.for_run(run_dir, config, total_steps, trainer.state, resume) if main else distributed.NullLogger()
    )
    try:
        summary = trainer.run(run_dir, logger)
        if main:
            write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            logger.summary(summary)
    finally:
        logger.close()
        distributed.cleanup()
    if main and hasattr(trainer, "report"):  # a task with results of its own kind (captioning)
        trainer.report(summary, run_dir)
    elif main:
        _report(config, trainer, summary, run_dir)
    return summary


def _report(config: TaskConfig, trainer, summary: dict, run_dir: Path) -> None:
    from rl_lab.tasks.plots import confusion_matrix, plot_confusion_matrix, plot_epochs

    test = trainer.data["test"]
    what = f"{config.task.encoder.name} on {config.data.name} (seed {config.seed})"
    counts = confusion_matrix(trainer.test_logits.argmax(1).numpy(), test.labels.numpy(), trainer.num_classes)
    matrix = plot_confusion_matrix(
        counts,
        list(test.class_names),
        run_dir / "plots" / "confusion_matrix.png",
        f"test confusion matrix: {what}, accuracy {summary['test_acc']:.2%}",
    )
    curve = plot_epochs(run_dir / "metrics.jsonl", run_dir / "plots" / "learning_curve.png", what)
    print(f"{what}: {summary['epochs']} epochs, {summary['steps']} steps")
    print(f"  test accuracy  {summary['test_acc']:.2%}   (loss {summary['test_loss']:.4f}, {len(test)} images)")
    print(f"  best val acc   {summary['best_val_acc']:.2%}   (epoch {summary['best_epoch']}: lowest val loss, tested)")
    print(f"training: {summary['wall_time_s']:.1f} s, {summary['train_images_per_s']:.0f} train images/s")
    print(f"run dir: {run_dir}")
    print(f"plots: {curve}, {matrix}")


def evaluate_task(run_dir: Path, config: TaskConfig) -> dict:
    """Test accuracy of a run's latest checkpoint (its best validation weights), printed as a table."""
    from rl_lab.tasks.classification import predict, scores

    trainer = build_task(config)
    if hasattr(trainer, "evaluate"):  # a task with results of its own kind (captioning)
        return trainer.evaluate(run_dir)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    model = trainer.load_weights(checkpoint)
    result = {}
    for split in ("val", "test"):
        data = trainer.data[split]
        result[split] = scores(predict(model, data.images, config.train.eval_batch_size, trainer.device), data.labels)
    print(f"{run_dir} at {checkpoint.name} ({config.data.name})")
    for split, s in result.items():
        print(f"  {split:<5} accuracy {s['acc']:.2%}   loss {s['loss']:.4f}   ({len(trainer.data[split])} images)")
    return result

"""The classification task from the command line: it learns MNIST, its run directory, exact resume, `rl-lab eval`,
config and data errors (exit 2, one line, nothing written); and its parts in process: augmentation, optimisers,
schedules, DataLoader workers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.image
import pytest
import torch
from conftest import REPO, run_many, run_rl_lab, user_error_line

from rl_lab.distributed import NullLogger
from rl_lab.errors import UserError
from rl_lab.loader import build_trainer, load_config
from rl_lab.tasks.augment import AugmentConfig, augment, random_crop
from rl_lab.tasks.classification import Classifier, encoder_spec

MNIST_CNN = REPO / "configs" / "mnist_cnn.yaml"
QUIET = ["device=cpu", "torch_threads=1", "logger.wandb.mode=disabled", "logger.progress=false"]
# A second-scale run: a small MLP on sklearn's 8x8 digits.
DIGITS = [
    *QUIET,
    "data.name=digits",
    "task.encoder.name=mlp",
    "task.encoder.kwargs={hidden_sizes: [32]}",
    "task.augment={}",
    "task.ema_decay=null",
    "train.batch_size=16",
]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> Path:
    """LeNet on the bundled 5,000 MNIST digits, 5 epochs, with augmentation, EMA and dropout (RNG use to resume)."""
    d = tmp_path_factory.mktemp("mnist")
    args = [*QUIET, "train.epochs=5", "run.keep_checkpoints=5", "task.head_dropout=0.1", f"run.dir={d / 'run'}"]
    result = run_rl_lab("train", MNIST_CNN, *args, cwd=d)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    return d / "run"


@pytest.mark.learning
def test_cnn_reaches_97_percent_on_bundled_mnist(mnist_run):
    summary = json.loads((mnist_run / "summary.json").read_text())
    assert summary["test_acc"] >= 0.97, summary
    assert summary["dataset"] == "mnist" and summary["num_classes"] == 10 and summary["epochs"] == 5
    rows = [json.loads(line) for line in (mnist_run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "val/acc" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1]["train/epoch_loss"] < epochs[0]["train/epoch_loss"]
    assert rows[-1]["test/acc"] == summary["test_acc"]
    assert all(1e-5 < r["train/update_ratio"] < 1e-1 for r in rows if "train/update_ratio" in r)
    lrs = [r["lr"] for r in epochs]  # cosine schedule: decreasing every epoch
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)), lrs
    for name in ("confusion_matrix.png", "learning_curve.png"):
        assert matplotlib.image.imread(mnist_run / "plots" / name).ndim == 3
    assert (mnist_run / "checkpoints" / "latest").is_file()


def test_resume_from_an_earlier_epoch_gives_the_same_run(mnist_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mnist_run, run)
    checkpoints = sorted((run / "checkpoints").glob("step_*"))
    assert len(checkpoints) >= 3
    for later in checkpoints[2:]:  # as if killed after epoch 2
        shutil.rmtree(later)
    (run / "checkpoints" / "latest").write_text(checkpoints[1].name + "\n")
    (run / "summary.json").unlink()
    shutil.rmtree(run / "plots")
    (run / "plots").mkdir()
    result = run_rl_lab("train", "--resume", run, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert (run / "metrics.jsonl").read_text() == (mnist_run / "metrics.jsonl").read_text()
    original = json.loads((mnist_run / "summary.json").read_text())
    resumed = json.loads((run / "summary.json").read_text())
    for key in ("test_acc", "test_loss", "best_val_loss", "best_epoch", "steps", "init_fingerprint"):
        assert resumed[key] == original[key], key


def test_eval_reports_the_summary_test_accuracy(mnist_run, tmp_path):
    result = run_rl_lab("eval", mnist_run, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((mnist_run / "summary.json").read_text())
    assert f"test  accuracy {summary['test_acc']:.2%}" in result.stdout


# (overrides, substrings of the error); the first three also run through the CLI (exit 2, one line, no run dir).
ERROR_CASES = {
    "unknown_key": (["task.optim.lrr=0.1"], ["task.optim.lrr", "did you mean task.optim.lr?"]),
    "corrupt_dataset": (["data.name=mnist_full", "data.cache_dir={d}/cache"], ["corrupt or incomplete"]),
    "missing_init": (["task.encoder.init={d}/nowhere"], ["nowhere", "export-encoder"]),
    "rl_key_in_task": (["train.total_steps=10"], ["train.total_steps", "unknown key"]),
    "wrong_type": (["train.epochs=abc"], ["train.epochs='abc'", "expected int"]),
    "invalid_value": (["task.optim.lr=-1"], ["task.optim.lr=-1", "must be > 0"]),
    "invalid_choice": (["task.optim.schedule=cosin"], ["task.optim.schedule='cosin'", "cosine"]),
    "nesterov_with_adam": (["task.optim.nesterov=true"], ["task.optim.nesterov", "sgd"]),
    "unknown_task": (["task.name=clasification"], ["task.name='clasification'", "classification"]),
    "agent_and_task": (["agent.name=dqn"], ["both agent: and task:"]),
    "unknown_dataset": (["data.name=mnst"], ["data.name='mnst'", "mnist"]),
    "unknown_data_option": (["data.kwargs.canvas=60"], ["no option 'canvas'"]),
    "unknown_encoder_kwarg": (["task.encoder.kwargs.chanels=[4]"], ["chanels", "channels"]),
    "zero_batch_size": (["train.batch_size=0"], ["train.batch_size=0", ">= 1"]),
}
CLI_CASES = list(ERROR_CASES)[:3]


def _error_case(case: str, d: Path) -> tuple[list[str], list[str]]:
    (d / "cache" / "mnist").mkdir(parents=True)
    for part in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (d / "cache" / "mnist" / f"{part}-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    overrides, expected = ERROR_CASES[case]
    return [o.replace("{d}", str(d)) for o in overrides], [e.replace("{d}", str(d)) for e in expected]


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_task_config_or_data_is_a_user_error(case, tmp_path):
    overrides, expected = _error_case(case, tmp_path)
    with pytest.raises(UserError) as err:
        build_trainer(load_config(MNIST_CNN, [*QUIET, *overrides]))
    assert "\n" not in str(err.value)
    for text in expected:
        assert text in str(err.value)


def test_bad_task_config_or_data_exits_2_with_one_line_and_writes_nothing(tmp_path):
    commands, expectations = [], []
    for case in CLI_CASES:
        overrides, expected = _error_case(case, tmp_path / case)
        commands.append(("train", MNIST_CNN, *QUIET, *overrides, f"run.dir={tmp_path / case / 'run'}"))
        expectations.append(expected)
    for case, result, expected in zip(CLI_CASES, run_many(commands, tmp_path), expectations, strict=True):
        line = user_error_line(result)
        assert all(text in line for text in expected), line
        assert not (tmp_path / case / "run").exists()


class Recorder(NullLogger):
    def __init__(self):
        self.rows = []

    def log(self, step, metrics, extra=None):
        self.rows.append((step, metrics))


def _train(overrides: list[str], epochs: int) -> tuple:
    trainer = build_trainer(load_config(MNIST_CNN, [*DIGITS, *overrides]))
    logger = Recorder()
    for _ in range(epochs):
        trainer.train_epoch(logger)
        trainer.end_epoch(trainer.validate(), logger)
    return trainer, logger.rows


def test_data_loader_workers_give_the_same_run():
    augment = "task.augment={translate: 0.1, contrast: 0.2, crop_padding: 1}"
    _, rows = _train([augment, "logger.log_every=5"], 1)
    _, rows_with_workers = _train([augment, "logger.log_every=5", "train.num_workers=2"], 1)
    assert len(rows) > 3 and rows_with_workers == rows


@pytest.mark.parametrize(
    "optim",
    [
        "{name: sgd, lr: 0.05, momentum: 0.9, nesterov: true}",
        "{name: adam, lr: 0.003}",
        "{name: adamw, lr: 0.003, weight_decay: 0.01}",
        "{name: rmsprop, lr: 0.001, momentum: 0.0}",
    ],
)
def test_every_optimiser_learns_digits(optim):
    trainer, _ = _train([f"task.optim={optim}", "train.epochs=2"], 2)
    assert trainer.state.best_val["acc"] > 0.75, (optim, trainer.state)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("{schedule: step, step_size: 2, decay: 0.5}", [1.0, 1.0, 0.5, 0.5, 0.25]),
        ("{schedule: exponential, decay: 0.5}", [1.0, 0.5, 0.25, 0.125, 0.0625]),
        ("{schedule: cosine}", [1.0, 0.9045, 0.6545, 0.3455, 0.0955]),
        ("{schedule: linear, lr_end: 0.0}", [1.0, 0.8, 0.6, 0.4, 0.2]),
        ("{schedule: constant}", [1.0] * 5),
    ],
)
def test_schedules_step_once_per_epoch(schedule, expected):
    config = load_config(MNIST_CNN, [*DIGITS, f"task.optim={schedule}", "task.optim.lr=1.0", "train.epochs=5"])
    trainer = build_trainer(config)
    lrs = []
    for _ in range(5):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()  # no gradients: a no-op, in the order torch expects
        trainer.schedule.step()
    assert lrs == pytest.approx(expected, abs=1e-4)


def test_plateau_schedule_decays_when_val_loss_stalls():
    config = load_config(MNIST_CNN, [*DIGITS, "task.optim={schedule: plateau, decay: 0.1, patience: 1}"])
    trainer = build_trainer(config)
    for loss in (1.0, 0.5, 0.6, 0.6):
        trainer.schedule.step(loss)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(config.task.optim.lr * 0.1)


def test_augmentation_is_seeded_and_keeps_pixels_in_range():
    x = torch.rand(16, 1, 12, 12)
    cfg = AugmentConfig(crop_padding=2, translate=0.1, hflip=True, brightness=0.2, contrast=0.3)
    a = augment(x, cfg, torch.Generator().manual_seed(3))
    b = augment(x, cfg, torch.Generator().manual_seed(3))
    c = augment(x, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_random_crop_shifts_content_by_at_most_the_padding():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the middle
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    rows, cols = out[:, 0].nonzero()[:, 1], out[:, 0].nonzero()[:, 2]
    assert len(rows) == 64  # never cropped away with padding 2
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 10  # many different shifts


def test_classifier_fits_images_to_an_encoder_made_for_other_inputs():
    """An agent's encoder for 4 stacked 36x36 frames classifies 1x8x8 digits: resized, channels repeated."""
    model = Classifier(encoder_spec(load_config(MNIST_CNN).task.encoder, (4, 36, 36)), 10, [])
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    assert model(images).shape == (5, 10)

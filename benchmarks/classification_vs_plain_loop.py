"""Classification: our task loop vs a plain hand-written PyTorch loop (training images/s, same model and data),
and an accuracy table on the bundled MNIST digits (MLP vs LeNet vs ResNet, augmentation, EMA, ensemble, soups).

    .venv/bin/python benchmarks/classification_vs_plain_loop.py --out docs/classification_benchmark.json

Speed: the same LeNet, the same 3,600 training digits, batch 64, AdamW, one torch thread for both; trials
alternate (ours, plain, ours, plain, ...) so machine load hits both alike; each trial times whole epochs of
training only (validation, checkpoints and the run directory excluded from both). Ours is
ClassificationTrainer.train_epoch exactly as `rl-lab train` runs it (DataLoader of index batches, logging every
50 steps with the update-to-weight ratio); plain is a permutation + tensor slicing loop, the fastest a user
would write, and a DataLoader(TensorDataset) loop, the most common one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rl_lab.commands.ensemble import compare
from rl_lab.distributed import NullLogger
from rl_lab.loader import build_trainer, load_config
from rl_lab.runs import export_encoder, train_new

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "mnist_cnn.yaml"
QUIET = ["device=cpu", "torch_threads=1", "logger.wandb.mode=disabled", "logger.progress=false"]
SPEED = [*QUIET, "task.augment={}", "task.ema_decay=null", "task.optim.schedule=constant"]


def ours(epochs: int) -> float:
    trainer = build_trainer(load_config(CONFIG, SPEED))
    trainer.train_epoch(NullLogger())  # warm-up epoch, as for plain
    start, images = time.perf_counter(), trainer.state.train_examples
    for _ in range(epochs):
        trainer.train_epoch(NullLogger())
    return (trainer.state.train_examples - images) / (time.perf_counter() - start)


def plain(epochs: int, dataloader: bool) -> float:
    trainer = build_trainer(load_config(CONFIG, SPEED))  # the same model, initial weights and data
    model, train = trainer.model, trainer.data["train"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train.images, train.labels), batch_size=64, shuffle=True, drop_last=True
    )

    def epoch() -> int:
        model.train()
        if dataloader:
            batches = iter(loader)
        else:
            perm = torch.randperm(len(train))
            batches = (
                (train.images[perm[i : i + 64]], train.labels[perm[i : i + 64]]) for i in range(0, len(train) - 63, 64)
            )
        seen = 0
        for x, y in batches:
            loss = F.cross_entropy(model(x.float() / 255), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        return seen

    epoch()
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        seen += epoch()
    return seen / (time.perf_counter() - start)


def speed(trials: int, epochs: int) -> dict:
    results = {"ours": [], "plain_slicing": [], "plain_dataloader": []}
    for _ in range(trials):
        results["ours"].append(ours(epochs))
        results["plain_slicing"].append(plain(epochs, dataloader=False))
        results["plain_dataloader"].append(plain(epochs, dataloader=True))
    medians = {k: statistics.median(v) for k, v in results.items()}
    print(f"\ntraining images/s, LeNet on 3,600 MNIST digits, batch 64, 1 thread ({trials} trials x {epochs} epochs)")
    for name, value in medians.items():
        print(f"  {name:<17} {value:8.0f}   ours / this = {medians['ours'] / value:.2f}x")
    return {"trials": results, "median": medians}


VARIANTS = {
    "MLP 256": ["task.encoder={name: mlp, kwargs: {hidden_sizes: [256]}}", "task.augment={}", "task.ema_decay=null"],
    "MLP 256 + aug": ["task.encoder={name: mlp, kwargs: {hidden_sizes: [256]}}", "task.ema_decay=null"],
    "LeNet": ["task.augment={}", "task.ema_decay=null"],
    "LeNet + aug": ["task.ema_decay=null"],
    "LeNet + aug + EMA": [],
    "ResNet-8 (w16) + aug + EMA": ["task.encoder={name: resnet, kwargs: {width: 16, blocks: [1, 1, 1]}}"],
}


def accuracy(root: Path, epochs: int) -> dict:
    common = [*QUIET, f"train.epochs={epochs}"]
    table = {}
    for name, overrides in VARIANTS.items():
        run = root / name.replace(" ", "_").replace("+", "")
        train_new(CONFIG, [*common, *overrides, f"run.dir={run}"])
        table[name] = json.loads((run / "summary.json").read_text())["test_acc"]
    lenet = root / "LeNet__aug__EMA"
    seeds = [lenet]
    for seed in (1, 2):
        train_new(CONFIG, [*common, f"seed={seed}", f"run.dir={root / f'ens{seed}'}"])
        seeds.append(root / f"ens{seed}")
    table["ensemble of 3 LeNet + aug + EMA (seeds 0-2)"] = compare(seeds, soups=False)[-1]["test_acc"]
    encoder = export_encoder(lenet, root / "encoder")
    recipes = {
        "a": ["task.optim={name: adamw, lr: 1.0e-3, weight_decay: 1.0e-4}"],
        "b": ["task.optim={name: adamw, lr: 3.0e-4, weight_decay: 1.0e-4}", "task.augment={translate: 0.1}"],
        "c": ["task.optim={name: sgd, lr: 0.01, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}"],
    }
    finetuned = []
    for key, recipe in recipes.items():
        run = root / f"ft_{key}"
        train_new(CONFIG, [*common, "train.epochs=3", f"task.encoder.init={encoder}", *recipe, f"run.dir={run}"])
        finetuned.append(run)
    soup = compare(finetuned, soups=True)
    for row in soup:
        table[f"fine-tuned from LeNet + aug + EMA: {row['model']}"] = row["test_acc"]
    print(f"\ntest accuracy on the bundled MNIST digits (1,000 test images), {epochs} epochs")
    for name, acc in table.items():
        print(f"  {name:<70} {acc:.2%}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per speed trial")
    parser.add_argument("--train-epochs", type=int, default=10, help="epochs of each accuracy-table run")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"speed": speed(args.trials, args.epochs)}
    if not args.skip_accuracy:
        with tempfile.TemporaryDirectory() as root:
            result["accuracy"] = accuracy(Path(root), args.train_epochs)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

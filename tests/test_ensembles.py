"""Ensembles (mean probabilities of finished runs) and model soups (Wortsman et al. 2022): uniform and greedy
soups of runs fine-tuned from one pretrained encoder, the table `rl-lab soup` prints, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_rl_lab

from rl_lab.commands.ensemble import accuracy, average_weights, compare, load_members, probabilities
from rl_lab.errors import UserError
from rl_lab.runs import export_encoder, train_new

MNIST_CNN = REPO / "configs" / "mnist_cnn.yaml"
DIGITS = [
    "device=cpu",
    "torch_threads=1",
    "logger.wandb.mode=disabled",
    "logger.progress=false",
    "data.name=digits",
    "task.ema_decay=null",
    "train.batch_size=16",
    "train.epochs=2",
]
MLP = "task.encoder={name: mlp, kwargs: {hidden_sizes: [32]}"
# Fine-tuning recipes that differ as in the paper: learning rate, augmentation, weight decay.
RECIPES = {
    "lr3e-3": ["task.optim={name: adam, lr: 0.003}", "task.augment={}"],
    "lr1e-3-aug": ["task.optim={name: adam, lr: 0.001}", "task.augment={translate: 0.1}"],
    "sgd-wd": ["task.optim={name: sgd, lr: 0.05, weight_decay: 0.001}", "task.augment={}"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three runs fine-tuned from one digits-pretrained encoder (same seed: same head init), and two from scratch."""
    d = tmp_path_factory.mktemp("soup")
    train_new(MNIST_CNN, [*DIGITS, f"{MLP}}}", "task.augment={}", f"run.dir={d / 'pre'}"])
    encoder = export_encoder(d / "pre", d / "encoder")
    out = {}
    for name, recipe in RECIPES.items():
        train_new(MNIST_CNN, [*DIGITS, f"{MLP}, init: {encoder}}}", *recipe, f"run.dir={d / name}"])
        out[name] = d / name
    for seed in (1, 2):  # different initialisations: fine for an ensemble, not for a soup
        train_new(MNIST_CNN, [*DIGITS, f"{MLP}}}", "task.augment={}", f"seed={seed}", f"run.dir={d / f's{seed}'}"])
        out[f"s{seed}"] = d / f"s{seed}"
    return out


def test_soup_command_prints_runs_ensemble_and_soups(runs, tmp_path):
    fine_tuned = [runs[name] for name in RECIPES]
    result = run_rl_lab("soup", *fine_tuned, "--out", tmp_path / "soup.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = json.loads((tmp_path / "soup.json").read_text())
    names = [row["model"] for row in table]
    assert names[:3] == list(RECIPES)
    assert names[3].startswith("ensemble of 3") and names[4] == "uniform soup of 3"
    assert names[5].startswith("greedy soup of")
    for row in table:
        assert row["model"] in result.stdout and f"{row['test_acc']:.2%}" in result.stdout
    summaries = [json.loads((r / "summary.json").read_text()) for r in fine_tuned]
    for row, summary in zip(table, summaries, strict=False):  # each run's own row is its summary's test accuracy
        assert row["test_acc"] == pytest.approx(summary["test_acc"])
    best_single = max(row["val_acc"] for row in table[:3])
    assert table[5]["val_acc"] >= best_single  # greedy: starts from the best run, never lowers val accuracy
    assert table[4]["test_acc"] > 0.8  # averaging weights of runs from one init gives a working model


def test_uniform_soup_is_the_mean_of_the_weights(runs):
    members, _ = load_members([runs[name] for name in RECIPES])
    soup = average_weights([m.model for m in members]).state_dict()
    for key, tensor in soup.items():
        expected = torch.stack([m.model.state_dict()[key] for m in members]).mean(0)
        assert torch.allclose(tensor, expected), key


def test_ensemble_averages_probabilities_of_any_runs(runs):
    members, trainer = load_members([runs["s1"], runs["s2"], runs["lr3e-3"]])
    test = trainer.data["test"]
    probs = probabilities([m.model for m in members], test.images, trainer)
    single = [probabilities([m.model], test.images, trainer) for m in members]
    assert torch.allclose(probs, torch.stack(single).mean(0), atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(len(test)), atol=1e-5)
    results = compare([runs["s1"], runs["s2"], runs["lr3e-3"]], soups=False)
    assert results[-1]["test_acc"] == pytest.approx(accuracy([m.model for m in members], test, trainer))


def test_soup_of_runs_from_different_inits_is_refused(runs):
    with pytest.raises(UserError, match="do not share an initialisation"):
        compare([runs["s1"], runs["s2"]], soups=True)


def test_ensemble_of_runs_on_different_data_is_refused(runs, tmp_path):
    train_new(MNIST_CNN, [*DIGITS, f"{MLP}}}", "data.val_fraction=0.2", f"run.dir={tmp_path / 'other'}"])
    with pytest.raises(UserError, match="other data"):
        compare([runs["s1"], tmp_path / "other"], soups=False)
    with pytest.raises(UserError, match="at least two"):
        compare([runs["s1"]], soups=False)

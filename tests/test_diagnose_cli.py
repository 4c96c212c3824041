"""`rl-lab diagnose RUN_DIR` runs the lectures' diagnostics on a run's network, task or agent, and writes their
PNG and JSON files into the run directory."""

from __future__ import annotations

import json

import matplotlib.image
import pytest
from conftest import CARTPOLE_CONFIG, REPO, TINY, run_rl_lab

from rl_lab.commands.diagnose import diagnose
from rl_lab.errors import UserError
from rl_lab.runs import train_new

MNIST_CNN = REPO / "configs" / "mnist_cnn.yaml"
LENET_DIGITS = [
    "device=cpu",
    "torch_threads=1",
    "logger.wandb.mode=disabled",
    "logger.progress=false",
    "data.name=digits",
    "task.encoder={name: lenet, kwargs: {channels: [8], hidden_sizes: [32]}}",
    "task.augment={}",
    "train.batch_size=16",
    "train.epochs=3",
]
PICTURES = ["activation_stats", "overfit_tiny", "update_ratio", "filters", "saliency", "occlusion", "embedding_pca"]


def test_diagnose_a_task_run_writes_every_diagnostic(tmp_path):
    run = tmp_path / "run"
    train_new(MNIST_CNN, [*LENET_DIGITS, f"run.dir={run}"])
    result = run_rl_lab("diagnose", run, "--n", "200", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = run / "diagnostics"
    for name in PICTURES:
        assert matplotlib.image.imread(out / f"{name}.png").ndim == 3, name
    initial = json.loads((out / "initial_loss.json").read_text())
    assert initial["num_classes"] == 10 and initial["ok"]  # at init: about log 10
    assert json.loads((out / "overfit_tiny.json").read_text())["train_accuracy"] == 1.0
    knn = json.loads((out / "embedding_pca.json").read_text())["knn_accuracy"]
    assert knn > 0.5  # the trained encoder's features separate the digits (chance: 0.1)
    assert "skipped" not in result.stdout


def test_diagnose_an_agent_run_uses_its_q_network(tmp_path):
    run = tmp_path / "dqn"
    train_new(CARTPOLE_CONFIG, [*TINY, "train.total_steps=1000", "eval.every=0", f"run.dir={run}"])
    results = diagnose(run, ["initial_loss", "activation_stats", "embeddings"], n=100)
    assert results["initial_loss"]["num_classes"] == 2  # CartPole's two actions are the classes
    assert (run / "diagnostics" / "activation_stats.png").is_file()
    assert results["embeddings"]["n"] == 100
    with pytest.raises(UserError, match="unknown diagnostic"):
        diagnose(run, ["saliencey"])

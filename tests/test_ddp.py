"""Data-parallel classification: `torchrun --nproc_per_node 2` with gloo on the CPU keeps the replicas in sync and
matches single-process training on the same global batches up to float noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from rl_lab.checkpoint import latest_checkpoint, load_checkpoint
from rl_lab.runs import train_new

MNIST_CNN = REPO / "configs" / "mnist_cnn.yaml"
SETTINGS = [
    "device=cpu",
    "torch_threads=1",
    "logger.wandb.mode=disabled",
    "logger.progress=false",
    "logger.log_every=10",
    "data.name=digits",
    "task.encoder={name: mlp, kwargs: {hidden_sizes: [32]}}",
    "task.optim={name: sgd, lr: 0.05, momentum: 0.9}",
    "task.augment={translate: 0.1}",  # drawn for the global batch, then sharded: the same images either way
    "task.ema_decay=0.9",
    "train.batch_size=32",
    "train.epochs=2",
]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_with_gloo_match_one_process(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "rl_lab.cli", "train", str(MNIST_CNN), *SETTINGS, f"run.dir={tmp_path / 'ddp'}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("test accuracy") == 1  # only rank 0 reports and writes

    train_new(MNIST_CNN, [*SETTINGS, f"run.dir={tmp_path / 'single'}"])

    ddp, single = tmp_path / "ddp", tmp_path / "single"
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["replica_max_abs_diff"] == 0.0  # the two replicas hold identical weights at the end
    rows, reference = _rows(ddp), _rows(single)
    assert [r["step"] for r in rows] == [r["step"] for r in reference]
    for row, ref in zip(rows, reference, strict=True):
        assert row.keys() == ref.keys()
        for key, value in ref.items():
            assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (row["step"], key)
    weights = load_checkpoint(latest_checkpoint(ddp / "checkpoints"))[0]["model"]
    reference_weights = load_checkpoint(latest_checkpoint(single / "checkpoints"))[0]["model"]
    for key, tensor in reference_weights.items():
        assert torch.allclose(weights[key], tensor, atol=1e-5), key
    single_summary = json.loads((single / "summary.json").read_text())
    assert summary["test_acc"] == pytest.approx(single_summary["test_acc"], abs=1 / 359)  # at most 1 of 359 flips

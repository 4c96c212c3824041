"""Ensembles and model soups of finished classification runs.

An ensemble averages the predicted probabilities of several models (any architectures, one dataset). A soup
averages their weights into one model (Wortsman et al. 2022, "Model soups"), which only works for runs
fine-tuned from one initialisation: the uniform soup averages all of them; the greedy soup goes through the
runs from the best validation accuracy down and keeps each one whose addition does not lower the soup's
validation accuracy. Validation picks; the test set only reports.

    rl-lab ensemble RUN_DIR RUN_DIR ...
    rl-lab soup RUN_DIR RUN_DIR ...
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rl_lab.errors import UserError
from rl_lab.fileio import write_atomic


@dataclass
class Member:
    name: str
    model: nn.Module
    fingerprint: str


def load_members(run_dirs: list[str | Path]):
    """The tested model of each classification run, and the first run's trainer (its data and device)."""
    from rl_lab.config import TaskConfig
    from rl_lab.runs import open_run

    if len(run_dirs) < 2:
        raise UserError(f"give at least two run directories, got {len(run_dirs)}")
    members, first, first_data = [], None, None
    for run in map(open_run, run_dirs):
        config = run.config
        if not isinstance(config, TaskConfig) or config.task.name != "classification":
            raise UserError(f"{run.dir} is not a classification run")
        data = (config.data.name, config.data.val_fraction, config.data.kwargs)
        if first_data is not None and data != first_data:
            raise UserError(f"{run.dir} used other data {data} than {run_dirs[0]} {first_data}; compare like with like")
        checkpoint = run.checkpoint  # found before the trainer is built
        members.append(Member(run.dir.name, run.trainer.load_weights(checkpoint), run.trainer.init_fingerprint))
        first, first_data = first or run.trainer, first_data or data
    return members, first


def probabilities(models: list[nn.Module], images: torch.Tensor, trainer) -> torch.Tensor:
    from rl_lab.tasks.classification import predict

    batch = trainer.config.train.eval_batch_size
    return torch.stack([predict(m, images, batch, trainer.device).softmax(1) for m in models]).mean(0)


def accuracy(models: list[nn.Module], split, trainer) -> float:
    return (probabilities(models, split.images, trainer).argmax(1) == split.labels).float().mean().item()


def average_weights(models: list[nn.Module]) -> nn.Module:
    """A copy of models[0] holding the mean of all their weights and float buffers (BatchNorm statistics)."""
    states = [m.state_dict() for m in models]
    soup = {}
    for key, first in states[0].items():
        soup[key] = torch.stack([s[key] for s in states]).mean(0) if first.is_floating_point() else first
    model = copy.deepcopy(models[0]).eval()
    model.load_state_dict(soup)
    return model


def greedy_soup(members: list[Member], trainer) -> tuple[nn.Module, list[str]]:
    val = trainer.data["val"]
    ranked = sorted(members, key=lambda m: accuracy([m.model], val, trainer), reverse=True)
    chosen = [ranked[0]]
    soup, best = ranked[0].model, accuracy([ranked[0].model], val, trainer)
    for member in ranked[1:]:
        candidate = average_weights([m.model for m in chosen + [member]])
        score = accuracy([candidate], val, trainer)
        if score >= best:
            chosen, soup, best = chosen + [member], candidate, score
    return soup, [m.name for m in chosen]


def compare(run_dirs: list[str | Path], soups: bool, out: str | Path | None = None) -> list[dict]:
    """Accuracy of each run, their ensemble and (soups=True) the uniform and greedy soups; printed as a table."""
    members, trainer = load_members(run_dirs)
    val, test = trainer.data["val"], trainer.data["test"]
    rows = [(m.name, [m.model]) for m in members]
    rows.append((f"ensemble of {len(members)} (mean probabilities)", [m.model for m in members]))
    if soups:
        if len({m.fingerprint for m in members}) > 1:
            raise UserError(
                "the runs do not share an initialisation (their init_fingerprint differs), and soups average "
                "weights: fine-tune them from one init (same seed, same encoder.init); use rl-lab ensemble instead"
            )
        rows.append((f"uniform soup of {len(members)}", [average_weights([m.model for m in members])]))
        soup, names = greedy_soup(members, trainer)
        rows.append((f"greedy soup of {len(names)}: {', '.join(names)}", [soup]))
    results = [
        {"model": name, "val_acc": accuracy(models, val, trainer), "test_acc": accuracy(models, test, trainer)}
        for name, models in rows
    ]
    width = max(len(r["model"]) for r in results)
    print(f"{'model':<{width}}  val acc  test acc   ({trainer.config.data.name}: {len(val)} val, {len(test)} test)")
    for r in results:
        print(f"{r['model']:<{width}}  {r['val_acc']:7.2%}  {r['test_acc']:8.2%}")
    if out:
        write_atomic(Path(out), json.dumps(results, indent=2) + "\n")
    return results

"""Runs from start to finish: make a run directory, train into it or resume it, open a finished one.

Run directory: config.yaml (fully resolved), metrics.jsonl, summary.json, checkpoints/, plots/. Everything that
user input can break (config, env id, encoder, device, data) is built before the directory exists, so a bad
command leaves nothing behind. Env runs and supervised tasks go through the same steps: their trainers keep one
contract (rl_lab.trainer.Trainer). Nothing here prints; rl_lab.commands tells the user.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_lab import distributed
from rl_lab.backbone import save_encoder
from rl_lab.backbone.transfer import find_encoder
from rl_lab.checkpoint import latest_checkpoint
from rl_lab.config import to_yaml
from rl_lab.errors import UserError
from rl_lab.fileio import write_atomic
from rl_lab.loader import build_trainer, load_config
from rl_lab.logger import RunLogger


@dataclass
class Run:
    """A run directory opened for reading: its resolved config, its latest checkpoint, its rebuilt trainer."""

    dir: Path
    config: Any  # Config (an agent in envs) or TaskConfig (a supervised task)

    @property
    def checkpoint(self) -> Path:
        """The latest complete checkpoint (UserError when there is none)."""
        return latest_checkpoint(self.dir / "checkpoints")

    @functools.cached_property
    def trainer(self):
        """The run's trainer rebuilt from its config.yaml (envs or data, networks), no weights loaded."""
        return build_trainer(self.config)

    def load_weights(self):
        """The trained agent (env runs) or the tested model (task runs) of the latest checkpoint."""
        checkpoint = self.checkpoint  # a run without one fails here, before envs or data are built
        return self.trainer.load_weights(checkpoint)


def open_run(run_dir: str | Path) -> Run:
    """Open an existing run directory: one clear error when it is missing or is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} does not exist")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    return Run(run_dir, load_config(run_dir / "config.yaml"))


def default_run_dir(config_path: Path, seed: int) -> Path:
    return Path("runs") / f"{config_path.stem}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_run(config_path: str | Path, overrides: list[str]) -> Run:
    """A new run: config validated, trainer built, then the directory made with its config.yaml."""
    config_path = Path(config_path)
    config = load_config(config_path, overrides)
    run_dir = Path(config.run.dir) if config.run.dir else default_run_dir(config_path, config.seed)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} is a file, not a directory; choose another run.dir=...")
    if run_dir.exists() and any(run_dir.iterdir()) and distributed.is_main_process():  # torchrun: rank 0 makes it
        raise UserError(
            f"run dir {run_dir} exists and is not empty; choose another run.dir=... "
            f"or continue it with: rl-lab train --resume {run_dir}"
        )
    run = Run(run_dir, config)
    run.trainer  # built before the directory exists  # noqa: B018
    config.run.dir = str(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "plots").mkdir(exist_ok=True)
    write_atomic(run_dir / "config.yaml", to_yaml(config))
    return run


def reopen_run(run_dir: str | Path) -> tuple[Run, Path]:
    """An interrupted run with its trainer restored from the latest checkpoint (returned too)."""
    run = open_run(run_dir)
    if (run.dir / "summary.json").is_file():
        raise UserError(f"run {run.dir} already finished (summary.json exists); evaluate it: rl-lab eval {run.dir}")
    checkpoint = run.checkpoint
    run.trainer.resume(run.dir)
    return run, checkpoint


def train(run: Run, resume: bool = False) -> dict:
    """Train a started or reopened run to its end; write summary.json (rank 0 under torchrun); return it."""
    trainer, main = run.trainer, distributed.is_main_process()
    if main:
        logger = RunLogger.for_run(run.dir, run.config, trainer.total_steps, trainer.state, resume)
    else:
        logger = distributed.NullLogger()
    try:
        summary = trainer.run(run.dir, logger)
        if main:
            write_atomic(run.dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            logger.summary(summary)
    finally:
        logger.close()
        distributed.cleanup()
    return summary


def train_new(config_path: str | Path, overrides: list[str]) -> Path:
    """Start a run and train it to the end, quietly (sweeps, studies, tests); returns its directory."""
    run = start_run(config_path, overrides)
    train(run)
    return run.dir


def export_encoder(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Save the encoder of a run's latest checkpoint (agent or task) with save_encoder; returns out_dir."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"cannot export to {out_dir}: it is a file; pass a directory")
    save_encoder(find_encoder(open_run(run_dir).load_weights()), out_dir)
    return out_dir

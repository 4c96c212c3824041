"""The one contract every trainer keeps, so rl_lab.runs drives an agent in its envs and a supervised task alike.

Two bases implement it: rl_lab.rl.loop.EnvLoop (off- and on-policy loops over environment steps) and
rl_lab.tasks.base.EpochTrainer (classification, captioning, RAM: epochs over a dataset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Trainer(Protocol):
    config: Any  # the run's resolved Config or TaskConfig
    state: Any  # counters a checkpoint restores; has `step` and `metrics_lines`

    @property
    def total_steps(self) -> int:
        """Steps of the whole run as the progress bar counts them (environment steps or optimiser steps)."""

    def run(self, run_dir: Path, logger) -> dict:
        """Train to the end (from wherever `state` is), checkpointing into run_dir; returns summary.json's content.
        Raises rl_lab.errors.Diverged at a NaN or infinite loss or weights, before checkpointing them."""

    def resume(self, checkpoint: Path) -> str | None:
        """Load a checkpoint of the run (rl_lab.checkpoint.resume_checkpoint picks it): weights, optimiser,
        counters, RNG states, everything run() needs. Returns a one-line note for the user when something could
        not be restored exactly (envs that cannot be snapshotted restart their episodes), else None."""

    def load_weights(self, checkpoint: Path) -> Any:
        """What the run trained, ready to use: the agent (env runs) or the tested model (task runs)."""

    def evaluate_checkpoint(self, checkpoint: Path, **options) -> tuple[dict, str]:
        """`rl-lab eval`: results of the checkpoint's weights and a table of them (options: episodes, epsilon,
        seed for env runs, and film: an rl_lab.rl.video.Film that films episodes of the evaluation)."""

    def report(self, summary: dict, run_dir: Path) -> str:
        """Draw the run's figures into run_dir/plots and return the text that tells how it went."""

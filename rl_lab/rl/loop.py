"""What the off-policy and on-policy training loops share: episode bookkeeping, evaluation, the final evaluation
and the run's result, and checkpoints that let a killed run resume to the same metrics.jsonl.

A loop subclasses `EnvLoop`, writes its own `run()` (the algorithm's order of acting, storing and learning), and
adds what only it needs to a checkpoint through `checkpoint_extras` / `load_extras`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rl_lab.checkpoint import load_checkpoint, reading_checkpoint, save_checkpoint, state_from_meta
from rl_lab.config import Config
from rl_lab.envs import can_snapshot, restore_vector_env, snapshot_vector_env
from rl_lab.envs.atari import learning_signals
from rl_lab.errors import Diverged, UserError
from rl_lab.figures import plot_learning_curve
from rl_lab.logger import RunLogger
from rl_lab.rl.evaluation import eval_stats, evaluate_run, format_eval_table
from rl_lab.schedules import crossed
from rl_lab.seeding import rng_state, set_rng_state

RECENT_EPISODES = 20  # episodes averaged for the logged training return


@dataclass
class LoopState:
    step: int = 0
    episodes: int = 0
    recent_returns: list[float] = field(default_factory=list)
    recent_lengths: list[int] = field(default_factory=list)
    last_train: dict = field(default_factory=dict)  # the most recent update's metrics (loss, Q, entropy, ...)
    wall_time_s: float = 0.0  # time spent by earlier processes of this run (before a resume)
    metrics_lines: int = 0  # lines of metrics.jsonl written when the checkpoint was saved
    final_eval: dict | None = None  # set once the final evaluation has been logged and saved


class EnvLoop:
    """N envs stepped together; raw episode scores tracked per env; learning signals (Atari: clipped rewards,
    loss of life as a terminal) kept apart from them."""

    env_seed_offset = 0  # added to the seed of every env reset (a data-parallel process's first global env)

    def __init__(self, config: Config, agent, envs, rng: np.random.Generator):
        self.config, self.agent, self.envs, self.rng = config, agent, envs, rng
        n = envs.num_envs
        self.state = LoopState()
        self.episode_return = np.zeros(n)
        self.episode_length = np.zeros(n, dtype=np.int64)
        self.signals = learning_signals(config.env.id, config.env.kwargs)
        self.obs, infos = envs.reset(seed=config.seed + self.env_seed_offset)
        self.signals.start(infos)

    @property
    def total_steps(self) -> int:
        return self.config.train.total_steps

    def evaluate(
        self,
        episodes: int | None = None,
        epsilon: float | None = None,
        seed: int | None = None,
        film=None,
        deterministic: bool | None = None,
    ) -> dict:
        """The agent's greedy (or epsilon-greedy, or with deterministic false sampled) returns on fresh evaluation
        envs; defaults from `eval.*`."""
        c = self.config
        episodes = episodes or c.eval.episodes
        epsilon = c.eval.epsilon if epsilon is None else epsilon
        seed = c.seed + c.eval.seed_offset if seed is None else seed
        result = evaluate_run(self.agent.greedy, c, episodes, seed, epsilon, film, deterministic)
        return eval_stats(result, c.env.id)

    def evaluate_checkpoint(
        self, checkpoint: Path, episodes=None, epsilon=None, seed=None, film=None, deterministic=None
    ) -> tuple[dict, str]:
        """`rl-lab eval`: the checkpoint's agent re-evaluated, and its table; `film` (rl_lab.rl.video.Film) films
        episodes of it; `deterministic` overrides eval.deterministic (greedy or sampled actions)."""
        step = self._load_weights(checkpoint)["step"]
        c = self.config
        stats = self.evaluate(episodes, epsilon, seed, film, deterministic)
        epsilon = c.eval.epsilon if epsilon is None else epsilon
        greedy = c.eval.deterministic if deterministic is None else deterministic
        how = f"epsilon {epsilon}" if greedy else f"sampled actions, epsilon {epsilon}"
        title = f"{checkpoint.parent.parent} at step {step} ({c.env.id}, {how})"
        return stats, format_eval_table(title, stats)

    def report(self, summary: dict, run_dir: Path) -> str:
        """The learning curve (plots/learning_curve.png) and the final evaluation as a table."""
        c = self.config
        curve = plot_learning_curve(
            run_dir / "metrics.jsonl",
            run_dir / "plots" / "learning_curve.png",
            f"{c.agent.name} on {c.env.id} (seed {c.seed})",
        )
        title = f"Final evaluation: {c.agent.name} on {c.env.id}, {summary['env_steps']} steps"
        return "\n".join(
            [
                format_eval_table(title, summary["final_eval"]),
                f"training: {summary['wall_time_s']:.1f} s, {summary['sps']:.0f} steps/s",
                f"run dir: {run_dir}",
                f"learning curve: {curve}",
            ]
        )

    def track_episodes(self, rewards: np.ndarray, done: np.ndarray, counted: np.ndarray | None = None) -> None:
        """Running raw returns and lengths; a finished episode counts unless `counted` masks it out."""
        self.episode_return += rewards
        self.episode_length += 1
        counted = done if counted is None else done & counted
        if counted.any():
            ended = np.flatnonzero(counted)
            self.add_episodes(self.episode_return[ended].tolist(), self.episode_length[ended].tolist(), ended)
        self.episode_return[done] = 0.0
        self.episode_length[done] = 0

    def add_episodes(self, returns: list[float], lengths: list[int], envs: np.ndarray) -> None:
        """Episodes that ended (raw returns, lengths, the envs they ran in) into the run's counters."""
        s = self.state
        s.recent_returns = (s.recent_returns + returns)[-RECENT_EPISODES:]
        s.recent_lengths = (s.recent_lengths + lengths)[-RECENT_EPISODES:]
        s.episodes += len(returns)

    def train_metrics(self) -> dict[str, float]:
        s = self.state
        row = {"train/episodes": s.episodes}
        if s.recent_returns:
            row["train/episode_return"] = float(np.mean(s.recent_returns))
            row["train/episode_length"] = float(np.mean(s.recent_lengths))
        row.update({f"train/{k}": v for k, v in s.last_train.items()})
        return row

    def due_row(self, steps_taken: int) -> dict[str, float]:
        """What the last `steps_taken` env steps made due: training metrics (a log line), an evaluation."""
        c, step = self.config, self.state.step
        row = self.train_metrics() if crossed(step, steps_taken, c.logger.log_every) else {}
        if c.eval.every and crossed(step, steps_taken, c.eval.every) and step < c.train.total_steps:
            row.update({f"eval/{k}": v for k, v in self.evaluate().items()})
        return row

    def progress_fields(self, row: dict[str, float], sps: float) -> dict[str, str]:
        """What the progress bar (or line) shows: speed, the recent training return, the latest evaluation and
        the loss, each only once it exists (no `loss=nan` before learning starts)."""
        fields = {"sps": f"{sps:.0f}"}
        if "train/episode_return" in row:
            fields["ret"] = f"{row['train/episode_return']:.1f}"
        if "eval/return_mean" in row:
            fields["eval"] = f"{row['eval/return_mean']:.1f}"
        if "loss" in self.state.last_train:
            fields["loss"] = f"{self.state.last_train['loss']:.4f}"
        return fields

    def check_finite(self, metrics: dict | None) -> None:
        """Stop the run (Diverged, exit status 3) when an update's loss or other figures are NaN or infinite; the
        weights are checked again before every checkpoint, so the last finite checkpoint is never replaced."""
        Diverged.check(self.state.step, metrics)

    def checkpoint_due(self, steps_taken: int) -> bool:
        every = self.config.run.checkpoint_every
        return bool(every) and crossed(self.state.step, steps_taken, every)

    def finish(self, run_dir: Path, logger: RunLogger, start_step: int, start_time: float) -> dict:
        """The final evaluation (logged and checkpointed once, even across a resume) and the run's result."""
        state = self.state
        train_time = state.wall_time_s + time.perf_counter() - start_time
        if state.final_eval is None:  # a run resumed after its final checkpoint has logged this already
            state.final_eval = self.evaluate()
            logger.log(state.step, {**self.train_metrics(), **{f"eval/{k}": v for k, v in state.final_eval.items()}})
            self.save(run_dir, start_time, logger)
        return {
            "final_eval": state.final_eval,
            "env_steps": state.step,
            "episodes": state.episodes,
            "wall_time_s": train_time,
            "sps": state.step / train_time if train_time > 0 else 0.0,
            "steps_this_process": state.step - start_step,
        }

    def checkpoint_extras(self) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """What only this loop needs to resume: (tensors, arrays)."""
        return {}, {}

    def load_extras(self, tensors: dict, arrays: dict[str, np.ndarray]) -> None:
        """Restore what `checkpoint_extras` saved."""

    def save(self, run_dir: Path, start_time: float, logger: RunLogger) -> None:
        self.write_checkpoint(run_dir, start_time, logger, *self.env_state())

    def env_state(self) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], list[dict]]:
        """What a checkpoint keeps of this process's envs and loop: (tensors, arrays, the envs' snapshots)."""
        tensors, arrays = self.checkpoint_extras()
        arrays = {"episode_return": self.episode_return, "episode_length": self.episode_length, **arrays}
        if self.signals.lives is not None:
            arrays["lives"] = self.signals.lives
        return tensors, arrays, snapshot_vector_env(self.envs)

    def write_checkpoint(
        self, run_dir: Path, start_time: float, logger: RunLogger, tensors: dict, arrays: dict, envs: list, **meta
    ) -> None:
        s = self.state
        json_rng, tensor_rng = rng_state(self.rng)
        meta = {
            **asdict(s),
            "wall_time_s": s.wall_time_s + time.perf_counter() - start_time,
            "metrics_lines": logger.lines,
            "rng": json_rng,
            "envs": envs,
            **meta,
        }
        torch_state = {"agent": self.agent.state_dict(), "rng": tensor_rng, **tensors}
        save_checkpoint(run_dir / "checkpoints", s.step, torch_state, arrays, meta, self.config.run.keep_checkpoints)

    def load_weights(self, checkpoint: Path):
        """The agent with the trained weights of `checkpoint` (no optimiser state), ready to act."""
        self._load_weights(checkpoint)
        return self.agent

    def _load_weights(self, checkpoint: Path) -> dict:
        torch_state, _, meta = load_checkpoint(checkpoint, self.agent.device)
        self.agent.load_state_dict(torch_state["agent"], weights_only=True)
        return meta

    def resume(self, checkpoint: Path) -> str | None:
        """Load a checkpoint of this run: agent, RNGs, counters, the envs' episodes in progress and the extras.
        Returns a note for the user when the episodes in progress could not be restored but were restarted."""
        with reading_checkpoint(checkpoint):
            return self._load(checkpoint)

    def restart_episodes(self, kept: str = "model, optimiser and counters") -> str:
        """Fresh episodes in every env, for envs whose state a checkpoint cannot hold (ale-py's AtariVectorEnv):
        the resumed run keeps its model, optimiser, counters and replay, not the episodes that were in progress."""
        seed = int(np.random.SeedSequence([self.config.seed, self.state.step]).generate_state(1)[0] >> 1)
        self.obs, infos = self.envs.reset(seed=seed + self.env_seed_offset)
        self.signals.start(infos)
        self.episode_return[:], self.episode_length[:] = 0.0, 0
        return (
            f"the {self.envs.num_envs} episodes in progress were restarted (ale-py's AtariVectorEnv cannot save "
            f"them); {kept} are restored. env.vector=sync resumes exactly"
        )

    def read_checkpoint(self, path: Path) -> tuple[dict, dict[str, np.ndarray], dict]:
        """(torch_state, arrays, meta) of a checkpoint, as this process resumes from them."""
        return load_checkpoint(path, self.agent.device)

    def _load(self, path: Path) -> str | None:
        torch_state, arrays, meta = self.read_checkpoint(path)
        if len(meta["envs"]) != self.envs.num_envs:
            raise UserError(
                f"checkpoint {path} holds {len(meta['envs'])} envs but the config has env.num_envs="
                f"{self.envs.num_envs}; resume with the run's original config"
            )
        self.agent.load_state_dict(torch_state["agent"])
        self.load_extras(torch_state, arrays)
        self.episode_return[:] = arrays["episode_return"]
        self.episode_length[:] = arrays["episode_length"]
        if "lives" in arrays:
            self.signals.lives = arrays["lives"].copy()
        set_rng_state(self.rng, meta["rng"], torch_state["rng"])
        if can_snapshot(self.envs):
            self.obs = restore_vector_env(self.envs, meta["envs"])
        self.state = state_from_meta(LoopState, meta, path)
        return None if can_snapshot(self.envs) else self.restart_episodes()

"""The off-policy training loop shared by replay-based agents: step N envs, store, learn, evaluate, log, save.

The agent supplies `act(obs, step, rng)`, `train(buffer, step, steps_taken, rng) -> metrics | None`,
`greedy(obs)`, `epsilon(step)` and `state_dict()/load_state_dict()`. Everything the loop owns that a resumed run
needs (counters, RNG states, replay, env episodes in progress) goes into each checkpoint, so a run killed at any
point and resumed writes the same metrics.jsonl as an uninterrupted one.

Episode returns are the env's raw scores; the replay stores the learning signals (for Atari: clipped rewards,
loss of life as a terminal). Steps/s and the split of wall time between env, acting and learning go to W&B.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gymnasium.vector import SyncVectorEnv

from envs import make_vector_env, restore_vector_env, snapshot_vector_env
from envs.atari import is_atari, learning_signals
from rl_lab.checkpoint import latest_checkpoint, load_checkpoint, reading_checkpoint, save_checkpoint
from rl_lab.config import Config
from rl_lab.errors import UserError
from rl_lab.evaluation import eval_stats, evaluate
from rl_lab.frame_replay import FrameReplay
from rl_lab.logger import RunLogger
from rl_lab.prioritized import Prioritized
from rl_lab.replay import ReplayBuffer
from rl_lab.schedules import crossed
from rl_lab.seeding import rng_state, set_rng_state

RECENT_EPISODES = 20  # episodes averaged for the logged training return


@dataclass
class LoopState:
    step: int = 0
    episodes: int = 0
    recent_returns: list[float] = field(default_factory=list)
    recent_lengths: list[int] = field(default_factory=list)
    last_train: dict = field(default_factory=dict)  # the most recent training phase's loss and Q
    wall_time_s: float = 0.0  # time spent by earlier processes of this run (before a resume)
    metrics_lines: int = 0  # lines of metrics.jsonl written when the checkpoint was saved
    final_eval: dict | None = None  # set once the final evaluation has been logged and saved


class OffPolicyTrainer:
    def __init__(self, config: Config, agent, envs, rng: np.random.Generator):
        self.config, self.agent, self.envs, self.rng = config, agent, envs, rng
        n = envs.num_envs
        self.buffer = make_replay(config, envs, agent.device)
        self.signals = learning_signals(config.env.id, config.env.kwargs)
        self.state = LoopState()
        self.episode_return = np.zeros(n)
        self.episode_length = np.zeros(n, dtype=np.int64)
        self.obs, infos = envs.reset(seed=config.seed)
        self.signals.start(infos)
        self.timers = {"env": 0.0, "act": 0.0, "learn": 0.0}  # seconds since the last log line

    def evaluate(self, video_dir: Path | None = None) -> dict[str, float]:
        c = self.config
        result = evaluate(
            self.agent.greedy,
            c.env.id,
            c.eval.episodes,
            c.seed + c.eval.seed_offset,
            c.eval.epsilon,
            c.env.kwargs,
        )
        return eval_stats(result, c.env.id)

    def run(self, run_dir: Path, logger: RunLogger) -> dict:
        c, state, n = self.config, self.state, self.envs.num_envs
        total = c.train.total_steps
        start_step, start_time = state.step, time.perf_counter()
        window_step, window_time = state.step, start_time
        timers, clock = self.timers, time.perf_counter
        while state.step < total:
            t0 = clock()
            actions = self.agent.act(self.obs, state.step, self.rng)
            t1 = clock()
            next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
            t2 = clock()
            state.step += n
            done = terminated | truncated
            real_next_obs = next_obs.copy()  # the vector env already reset finished envs
            for i in np.flatnonzero(done):
                real_next_obs[i] = infos["final_obs"][i]
            learn_rewards, learn_terminated = self.signals(rewards, terminated, truncated, infos)
            self.buffer.add(self.obs, actions, learn_rewards, real_next_obs, learn_terminated, truncated)
            self.obs = next_obs
            self._track_episodes(rewards, done)
            metrics = self.agent.train(self.buffer, state.step, n, self.rng)
            if metrics is not None:
                state.last_train = metrics
            timers["act"] += t1 - t0
            timers["env"] += t2 - t1
            timers["learn"] += clock() - t2  # replay storage counts as learning

            row = {}
            if crossed(state.step, n, c.logger.log_every):
                row.update(self._train_metrics())
            if c.eval.every and crossed(state.step, n, c.eval.every) and state.step < total:
                row.update({f"eval/{k}": v for k, v in self.evaluate().items()})
            if row:
                now = time.perf_counter()
                elapsed = max(now - window_time, 1e-9)
                sps = (state.step - window_step) / elapsed
                # shares of wall time (evaluation, logging and checkpoints are the rest); W&B only: not deterministic
                extra = {"time/sps": sps, **{f"time/{k}_frac": v / elapsed for k, v in timers.items()}}
                window_step, window_time = state.step, now
                timers.update(dict.fromkeys(timers, 0.0))
                logger.log(state.step, row, extra=extra)
                logger.progress(
                    state.step,
                    sps=f"{sps:.0f}",
                    ret=f"{row.get('train/episode_return', float('nan')):.1f}",
                    eps=f"{self.agent.epsilon(state.step):.3f}",
                    loss=f"{state.last_train.get('loss', float('nan')):.4f}",
                )
            if c.run.checkpoint_every and crossed(state.step, n, c.run.checkpoint_every):
                self.save(run_dir, start_time, logger)
        train_time = state.wall_time_s + time.perf_counter() - start_time
        if state.final_eval is None:  # a run resumed after its final checkpoint has logged this already
            state.final_eval = self.evaluate()
            logger.log(state.step, {**self._train_metrics(), **{f"eval/{k}": v for k, v in state.final_eval.items()}})
            self.save(run_dir, start_time, logger)
        final = state.final_eval
        return {
            "final_eval": final,
            "env_steps": state.step,
            "episodes": state.episodes,
            "wall_time_s": train_time,
            "sps": state.step / train_time if train_time > 0 else 0.0,
            "steps_this_process": state.step - start_step,
        }

    def _track_episodes(self, rewards: np.ndarray, done: np.ndarray) -> None:
        self.episode_return += rewards
        self.episode_length += 1
        if done.any():
            s = self.state
            s.recent_returns = (s.recent_returns + self.episode_return[done].tolist())[-RECENT_EPISODES:]
            s.recent_lengths = (s.recent_lengths + self.episode_length[done].tolist())[-RECENT_EPISODES:]
            s.episodes += int(done.sum())
            self.episode_return[done] = 0.0
            self.episode_length[done] = 0

    def _train_metrics(self) -> dict[str, float]:
        s = self.state
        row = {"train/episodes": s.episodes, "train/epsilon": self.agent.epsilon(s.step)}
        if s.recent_returns:
            row["train/episode_return"] = float(np.mean(s.recent_returns))
            row["train/episode_length"] = float(np.mean(s.recent_lengths))
        row.update({f"train/{k}": v for k, v in s.last_train.items()})
        return row

    def save(self, run_dir: Path, start_time: float, logger: RunLogger) -> None:
        s = self.state
        json_rng, tensor_rng = rng_state(self.rng)
        arrays = {f"replay.{k}": v for k, v in self.buffer.state_dict().items()}
        arrays["episode_return"] = self.episode_return
        arrays["episode_length"] = self.episode_length
        if self.signals.lives is not None:
            arrays["lives"] = self.signals.lives
        meta = {
            "step": s.step,
            "episodes": s.episodes,
            "recent_returns": s.recent_returns,
            "recent_lengths": s.recent_lengths,
            "last_train": s.last_train,
            "wall_time_s": s.wall_time_s + time.perf_counter() - start_time,
            "metrics_lines": logger.lines,
            "final_eval": s.final_eval,
            "rng": json_rng,
            "envs": snapshot_vector_env(self.envs),
        }
        torch_state = {"agent": self.agent.state_dict(), "rng": tensor_rng}
        save_checkpoint(run_dir / "checkpoints", s.step, torch_state, arrays, meta, self.config.run.keep_checkpoints)

    def resume(self, run_dir: Path) -> None:
        """Load the latest checkpoint: agent, replay, RNGs, counters and the envs' episodes in progress."""
        path = latest_checkpoint(run_dir / "checkpoints")
        with reading_checkpoint(path):
            self._load(path)

    def _load(self, path: Path) -> None:
        torch_state, arrays, meta = load_checkpoint(path, self.agent.device)
        if len(meta["envs"]) != self.envs.num_envs:
            raise UserError(
                f"checkpoint {path} holds {len(meta['envs'])} envs but the config has env.num_envs="
                f"{self.envs.num_envs}; resume with the run's original config"
            )
        self.agent.load_state_dict(torch_state["agent"])
        self.buffer.load_state_dict(
            {k.removeprefix("replay."): v for k, v in arrays.items() if k.startswith("replay.")}
        )
        self.episode_return[:] = arrays["episode_return"]
        self.episode_length[:] = arrays["episode_length"]
        if "lives" in arrays:
            self.signals.lives = arrays["lives"].copy()
        set_rng_state(self.rng, meta["rng"], torch_state["rng"])
        self.obs = restore_vector_env(self.envs, meta["envs"])
        self.state = LoopState(
            step=meta["step"],
            episodes=meta["episodes"],
            recent_returns=meta["recent_returns"],
            recent_lengths=meta["recent_lengths"],
            last_train=meta["last_train"],
            wall_time_s=meta["wall_time_s"],
            metrics_lines=meta["metrics_lines"],
            final_eval=meta["final_eval"],
        )


def make_envs(config: Config):
    return make_vector_env(config.env.id, config.env.num_envs, config.env.vector, **config.env.kwargs)


def make_replay(config: Config, envs, device):
    """Stacked Atari frames are stored once each (FrameReplay); other observations whole (ReplayBuffer).

    Agents without replay options (n_step, prioritized, ...) get a plain uniform buffer.
    """
    agent = config.agent
    n_step, gamma = getattr(agent, "n_step", 1), getattr(agent, "gamma", 0.99)
    space = envs.single_observation_space
    if is_atari(config.env.id):
        pad = "repeat" if isinstance(envs, SyncVectorEnv) else "zero"  # FrameStackObservation / AtariVectorEnv
        storage = device if getattr(agent, "replay_device", "cpu") == "train" else "cpu"
        buffer = FrameReplay(agent.buffer_size, space.shape, envs.num_envs, n_step, gamma, pad, storage)
    else:
        buffer = ReplayBuffer(agent.buffer_size, space.shape, space.dtype, n_step=n_step, gamma=gamma)
    if getattr(agent, "prioritized", False):
        return Prioritized(buffer, agent.per_alpha, agent.per_eps)
    return buffer

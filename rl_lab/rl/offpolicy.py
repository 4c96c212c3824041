"""The off-policy training loop shared by replay-based agents: step N envs, store, learn, evaluate, log, save.

The agent supplies `make_replay(num_envs, frame_padding)` (the buffer it learns from, built from its own settings),
`act(obs, step, rng)`, `train(buffer, step, steps_taken, rng) -> metrics | None`, `greedy(obs)`, `epsilon(step)`
and `state_dict()/load_state_dict()`. Everything the loop owns that a resumed run
needs (counters, RNG states, replay, env episodes in progress) goes into each checkpoint, so a run killed at any
point and resumed writes the same metrics.jsonl as an uninterrupted one.

Episode returns are the env's raw scores; the replay stores the learning signals (for Atari: clipped rewards,
loss of life as a terminal). Steps/s and the split of wall time between env, acting and learning go to W&B.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rl_lab.config import Config
from rl_lab.envs.atari import frame_stack_padding
from rl_lab.logger import RunLogger
from rl_lab.rl.loop import EnvLoop


class OffPolicyTrainer(EnvLoop):
    def __init__(self, config: Config, agent, envs, rng: np.random.Generator):
        super().__init__(config, agent, envs, rng)
        # built (and checked against free memory) with the trainer; its pages are only taken as it fills
        self.buffer = agent.make_replay(envs.num_envs, frame_stack_padding(config.env.id, envs))
        self.timers = {"env": 0.0, "act": 0.0, "learn": 0.0}  # seconds since the last log line

    def run(self, run_dir: Path, logger: RunLogger) -> dict:
        c, state, n = self.config, self.state, self.envs.num_envs
        total = c.train.total_steps
        start_step, start_time = state.step, time.perf_counter()
        window_step, window_time = state.step, start_time
        timers, clock = self.timers, time.perf_counter
        while state.step < total:
            self.step()
            t0 = clock()
            metrics = self.agent.train(self.buffer, state.step, n, self.rng)
            if metrics is not None:
                self.check_finite(metrics)
                state.last_train = metrics
            timers["learn"] += clock() - t0

            row = self.due_row(n)
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
                    state.step, **self.progress_fields(row, sps), eps=f"{self.agent.epsilon(state.step):.3f}"
                )
            if self.checkpoint_due(n):
                self.save(run_dir, start_time, logger)
        return self.finish(run_dir, logger, start_step, start_time)

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """One step of the N envs: act, step, store the transition; returns (the observations acted on, the true
        next observations: for an env that just ended its episode, the final one, not the new episode's first)."""
        timers, clock, obs = self.timers, time.perf_counter, self.obs
        t0 = clock()
        actions = self.agent.act(obs, self.state.step, self.rng)
        t1 = clock()
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        t2 = clock()
        self.state.step += self.envs.num_envs
        done = terminated | truncated
        real_next_obs = next_obs.copy()  # the vector env already reset finished envs
        for i in np.flatnonzero(done):
            real_next_obs[i] = infos["final_obs"][i]
        learn_rewards, learn_terminated = self.signals(rewards, terminated, truncated, infos)
        # the replay bootstraps on the learning signals but restarts frame stacks where the env's episodes end
        self.buffer.add(obs, actions, learn_rewards, real_next_obs, learn_terminated, truncated, episode_end=done)
        self.obs = next_obs
        self.track_episodes(rewards, done)
        timers["act"] += t1 - t0
        timers["env"] += t2 - t1
        timers["learn"] += clock() - t2  # replay storage counts as learning
        return obs, real_next_obs

    def train_metrics(self) -> dict[str, float]:
        return {**super().train_metrics(), "train/epsilon": self.agent.epsilon(self.state.step)}

    def restart_episodes(self, kept: str = "model, optimiser, counters and replay") -> str:
        self.buffer.cut_episodes()  # the replay's newest transitions end where the episodes were cut
        return super().restart_episodes(kept)

    def checkpoint_extras(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {}, {f"replay.{k}": v for k, v in self.buffer.state_dict().items()}

    def load_extras(self, tensors: dict, arrays: dict[str, np.ndarray]) -> None:
        replay = {k.removeprefix("replay."): v for k, v in arrays.items() if k.startswith("replay.")}
        self.buffer.load_state_dict(replay)

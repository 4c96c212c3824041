"""The Python API: train, resume, load and evaluate runs from a script or a notebook, as `rl-lab` does, quietly.

    import rl_lab

    run = rl_lab.train("configs/cartpole_dqn.yaml", overrides={"agent.optim.lr": 1e-3, "seed": 3})
    run.summary["final_eval"]["return_mean"]        # summary.json; run.dir is the run directory
    agent = rl_lab.load(run.dir)                     # or run.load()
    actions = agent.act(observations)                # a batch in, a batch out (one observation: one action)
    agent.act(observations, deterministic=False)     # sampled: the policy's distribution, or epsilon-greedy
    rl_lab.evaluate(agent, episodes=20)              # or a run directory: {"return_mean": ..., "returns": [...]}

A config is a YAML path or a dict of the same content; overrides a dict of dotted keys (values as they are) or
`key=value` strings as on the command line. Validation, run directories, checkpoints and W&B are the command line's;
a mistake raises rl_lab.UserError with the line `rl-lab` would print. Nothing is printed unless `verbose=True`
(then the progress and the final table); W&B notices go to the `rl_lab` logging logger. The process's torch
threads and global RNG states are as they were after each call.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import rl_lab.runs as runs
from rl_lab.config import apply_override
from rl_lab.errors import UserError
from rl_lab.loader import config_from_dict

Overrides = Mapping[str, Any] | Iterable[str] | None


@dataclass
class TrainedRun:
    """A finished run: its directory, summary.json's content and the report `rl-lab train` prints."""

    dir: Path
    summary: dict
    report: str

    @property
    def config(self) -> dict:
        """The fully resolved config (config.yaml)."""
        return yaml.safe_load((self.dir / "config.yaml").read_text())

    @property
    def metrics(self) -> list[dict]:
        """metrics.jsonl: one dict per logged step."""
        return [json.loads(line) for line in (self.dir / "metrics.jsonl").read_text().splitlines()]

    def load(self, device: str | None = None) -> Agent | Model:
        return load(self.dir, device=device)

    def evaluate(self, episodes: int | None = None, **options) -> dict:
        return evaluate(self.dir, episodes, **options)


def train(
    config: str | Path | Mapping[str, Any],
    overrides: Overrides = None,
    *,
    run_dir: str | Path | None = None,
    verbose: bool = False,
) -> TrainedRun:
    """Train what `config` describes (an agent in envs or a supervised task) to the end, into a new run directory
    (`run_dir`, else `run.dir`, else runs/NAME-sSEED-TIME), and return the finished run."""
    items = _override_items(overrides)
    if run_dir is not None:
        items.append(("run.dir", str(run_dir)))
    with _process_state():
        if isinstance(config, Mapping):
            data = copy.deepcopy(dict(config))
            for item in items:
                try:
                    apply_override(data, item)
                except UserError as err:
                    raise UserError(f"config: {err}") from None
            validated = config_from_dict(data, source="config")
            name = validated.agent.name if hasattr(validated, "agent") else validated.task.name
            run = runs.start_run(name, [], config=validated)
        elif isinstance(config, (str, Path)):
            run = runs.start_run(config, items)
        else:
            raise UserError(f"config must be a YAML file's path or a dict, not {type(config).__name__}")
        summary = runs.train(run, console=verbose)
    if verbose:
        print(run.report)
    return TrainedRun(run.dir, summary, run.report)


def resume(run_dir: str | Path, *, total_steps: int | None = None, verbose: bool = False) -> TrainedRun:
    """Continue an interrupted run from its last checkpoint to the same result as an uninterrupted run, or, with
    `total_steps`, a run (finished or not) on to that longer budget (`rl-lab train --resume DIR --total-steps N`)."""
    with _process_state():
        run, _, _ = runs.reopen_run(run_dir, total_steps)
        summary = runs.train(run, resume=True, console=verbose)
    if verbose:
        print(run.report)
    return TrainedRun(run.dir, summary, run.report)


def load(run_dir: str | Path | TrainedRun, *, device: str | None = None, seed: int | None = None) -> Agent | Model:
    """The trained agent (env runs) or model (supervised runs) of a run's latest checkpoint. `device` overrides the
    run's (e.g. "cpu"); `seed` seeds the agent's own exploration draws for `act(..., deterministic=False)`."""
    run = runs.open_run(run_dir.dir if isinstance(run_dir, TrainedRun) else run_dir)
    if device is not None:
        run.config.device = device
    with _process_state():
        checkpoint = run.checkpoint
        trained = run.trainer.load_weights(checkpoint)
    step = int(checkpoint.name.rpartition("_")[2])
    if not hasattr(run.config, "env"):
        return Model(run.dir, run.config, trained, step)
    envs = run.trainer.envs  # the training envs: only their spaces are needed
    envs.close()
    return Agent(run.dir, run.config, trained, envs.single_observation_space, envs.single_action_space, step, seed)


def evaluate(
    target: str | Path | TrainedRun | Agent,
    episodes: int | None = None,
    *,
    epsilon: float | None = None,
    seed: int | None = None,
) -> dict:
    """Evaluate an agent (or a run directory's latest checkpoint) as `rl-lab eval` does: `episodes` (default the
    config's eval.episodes) on fresh envs seeded with `seed` (default seed + eval.seed_offset), greedy or
    epsilon-greedy (default eval.epsilon). Returns the statistics, with every episode's return under "returns".
    A supervised run: the scores of its held-out splits, e.g. {"val": {...}, "test": {"acc": ...}}."""
    if episodes is not None and (not isinstance(episodes, int) or episodes < 1):
        raise UserError(f"episodes={episodes!r}: must be an integer >= 1")
    if epsilon is not None and not 0.0 <= epsilon <= 1.0:
        raise UserError(f"epsilon={epsilon!r}: must be in [0, 1]")
    if not isinstance(target, Agent):
        run = runs.open_run(target.dir if isinstance(target, TrainedRun) else target)
        if not hasattr(run.config, "env"):
            with _process_state():
                result, _ = run.trainer.evaluate_checkpoint(run.checkpoint)
            return result
        target = load(run.dir)
    return target.evaluate(episodes, epsilon=epsilon, seed=seed)


class Agent:
    """A trained agent: `act` on observations shaped like its env's, `evaluate` on fresh envs.

    Recurrent policies keep their state between calls of `act` for a batch of the same size; call `reset` (all, or
    a mask of the batch) where episodes start."""

    def __init__(self, run_dir: Path, config, agent, observation_space, action_space, step: int, seed: int | None):
        self.dir, self.config, self.step = run_dir, config, step
        self.observation_space, self.action_space = observation_space, action_space
        self.env_id: str = config.env.id
        self._agent = agent
        self._rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"Agent({self.config.agent.name} on {self.env_id}, step {self.step}, {self.dir})"

    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of observations (N, *obs_shape) -> (N, ...), or one observation -> one action.

        deterministic: the greedy action (argmax Q, or the policy's mode); otherwise a sample: from the policy's
        distribution (REINFORCE, A2C), or epsilon-greedy with the exploration rate the run ended with (DQN,
        tabular Q)."""
        space = self.observation_space
        obs = np.asarray(obs, dtype=space.dtype)
        single = obs.shape == space.shape
        batch = obs[None] if single else obs
        if batch.shape[1:] != space.shape:
            raise UserError(
                f"observations of shape {obs.shape} do not fit {self.env_id}'s {tuple(space.shape)} "
                "(pass one observation or a batch of them)"
            )
        with _inference():
            if deterministic:
                actions = self._agent.greedy(batch)
            elif hasattr(self._agent, "epsilon"):  # value-based: epsilon-greedy
                actions = self._agent.act(batch, self.step, self._rng)
            else:
                actions = self._agent.greedy(batch, deterministic=False)
        actions = np.asarray(actions)
        return actions[0] if single else actions

    def reset(self, mask=None) -> None:
        """Start new episodes for a recurrent policy (all of the batch, or where `mask` is True)."""
        reset = getattr(self._agent.greedy, "reset", None)
        if reset is not None and mask is not None:
            reset(np.asarray(mask, dtype=bool))
        elif reset is not None:
            self._agent.greedy.starts = None  # the next call of act starts every episode

    def make_env(self, **kwargs):
        """One env as the agent was trained on it (env.kwargs and the lab's preprocessing), e.g. render_mode."""
        from rl_lab.envs import make_env

        return make_env(self.env_id, **{**self.config.env.kwargs, **kwargs})

    def evaluate(self, episodes: int | None = None, *, epsilon: float | None = None, seed: int | None = None) -> dict:
        from rl_lab.rl.evaluation import eval_stats, evaluate_run

        c = self.config
        episodes = episodes or c.eval.episodes
        epsilon = c.eval.epsilon if epsilon is None else epsilon
        seed = c.seed + c.eval.seed_offset if seed is None else seed
        with _process_state(), _inference():
            result = evaluate_run(self._agent.greedy, c, episodes, seed, epsilon)
        return {**eval_stats(result, c.env.id), "returns": result["returns"].tolist()}


class Model:
    """A supervised run's trained model (the weights it was tested with), in eval mode: `module` is the torch
    module; calling the Model runs it without gradients."""

    def __init__(self, run_dir: Path, config, module, step: int):
        self.dir, self.config, self.module, self.step = run_dir, config, module, step

    def __repr__(self) -> str:
        return f"Model({self.config.task.name} on {self.config.data.name}, step {self.step}, {self.dir})"

    def __call__(self, *args, **kwargs):
        with _inference():
            return self.module(*args, **kwargs)


def _override_items(overrides: Overrides) -> list:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    if isinstance(overrides, str):
        raise UserError(f"overrides must be a dict or a list of 'key=value' strings, not the string {overrides!r}")
    items = list(overrides)
    for item in items:
        if not isinstance(item, str):
            raise UserError(f"override {item!r} is not a 'key=value' string (or pass a dict)")
    return items


@contextlib.contextmanager
def _inference() -> Iterator[None]:
    import torch

    with torch.inference_mode():
        yield


@contextlib.contextmanager
def _process_state() -> Iterator[None]:
    """Leave the caller's torch thread count and global RNG states as they were: training and loading set them from
    the config (torch_threads, seed)."""
    import torch

    threads = torch.get_num_threads()
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

"""Environment factory: gymnasium ids (ALE included), vector envs, and envs whose state can be checkpointed."""

from __future__ import annotations

import difflib
import json
from functools import cache

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from rl_lab.errors import UserError


@cache
def _register_ale() -> None:
    import ale_py

    gym.register_envs(ale_py)


def check_env_id(env_id: str) -> None:
    """Fail early, with close matches, on an id gymnasium does not know."""
    _register_ale()
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"env.id={env_id!r} is not a registered gymnasium environment{hint}")


class ReplayableEnv(gym.Wrapper):
    """Remembers how the current episode began (seed or RNG state) and the actions taken since.

    That is enough to rebuild the exact env state after a restart for any env that is deterministic given its
    `np_random` (CartPole, MuJoCo, toy text, ...), without pickling the env: a checkpoint stores JSON only.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._start: dict = {}
        self._actions: list = []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            self._start = {"rng_state": self.unwrapped.np_random.bit_generator.state}
        else:
            self._start = {"seed": seed}
        self._start["options"] = options
        self._actions = []
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self._actions.append(action.tolist() if isinstance(action, np.ndarray) else action)
        return self.env.step(action)

    def snapshot(self) -> dict:
        return json.loads(json.dumps({"start": self._start, "actions": self._actions}, default=_to_builtin))

    def restore(self, snapshot: dict):
        """Replay the episode in `snapshot`; returns the observation the env is at afterwards."""
        start = snapshot["start"]
        if "seed" in start:
            obs, _ = self.reset(seed=start["seed"], options=start["options"])
        else:
            self.unwrapped.np_random.bit_generator.state = start["rng_state"]
            obs, _ = self.reset(options=start["options"])
        action_dtype = self.action_space.dtype
        for action in snapshot["actions"]:
            obs, _, terminated, truncated, _ = self.step(np.asarray(action, dtype=action_dtype))
            if terminated or truncated:
                raise UserError("checkpoint's environment state does not replay (episode ended early)")
        return obs


def _to_builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value)} in an env snapshot")


def make_env(env_id: str, **kwargs) -> gym.Env:
    check_env_id(env_id)
    try:
        env = gym.make(env_id, **kwargs)
    except TypeError as err:
        raise UserError(f"env.kwargs do not fit {env_id}: {err}") from None
    return ReplayableEnv(env)


def make_vector_env(env_id: str, num_envs: int, **kwargs) -> SyncVectorEnv:
    """N copies in one process, reset in the same step they end (the final observation is in info)."""
    return SyncVectorEnv(
        [lambda: make_env(env_id, **kwargs) for _ in range(num_envs)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )


def snapshot_vector_env(envs: SyncVectorEnv) -> list[dict]:
    return [env.snapshot() for env in envs.envs]


def restore_vector_env(envs: SyncVectorEnv, snapshots: list[dict]) -> np.ndarray:
    if len(snapshots) != envs.num_envs:
        raise UserError(f"checkpoint holds {len(snapshots)} env states but the config has {envs.num_envs} envs")
    return np.stack([env.restore(snap) for env, snap in zip(envs.envs, snapshots, strict=True)])

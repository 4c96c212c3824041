"""Environment factory: gymnasium ids (Atari, MinAtar), vector envs, and envs whose state can be checkpointed."""

from __future__ import annotations

import difflib
import json
from functools import cache

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from rl_lab.envs.atari import SeededResets, check_atari_id, is_atari, make_atari_env, make_atari_vector_env
from rl_lab.errors import UserError
from rl_lab.extras import require

# The lab's own envs, in the rl_lab/ namespace so no id clashes with another package's. GridWorld's map,
# observation, step reward and slip are env.kwargs (see envs/gridworld.py).
OWN_ENVS = {
    "GridWorld-v0": ("rl_lab.envs.gridworld:GridWorldEnv", 200),
    "Glimpse-v0": ("rl_lab.envs.glimpse:GlimpseEnv", None),  # RAM's task for any agent (envs/glimpse.py)
    "CartPoleNoVelocity-v1": ("rl_lab.envs.wrappers:cartpole_no_velocity", 500),
}
for _name, (_entry_point, _limit) in OWN_ENVS.items():
    gym.register(f"rl_lab/{_name}", entry_point=_entry_point, max_episode_steps=_limit)


@cache
def _register_ale() -> None:
    """ALE's games (`ALE/Pong-v5`, ...) when the `atari` extra is installed; without it, nothing to register."""
    try:
        import ale_py
    except ImportError:
        return
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stderr for every env
    gym.register_envs(ale_py)


@cache
def _register_minatar() -> None:
    """MinAtar's 10x10 games (`MinAtar/Breakout-v1`, ...): small pixel tasks a CNN learns in minutes on a CPU."""
    import logging

    # Without seaborn (its GUI's), minatar's import calls logging.warning(), which would also give the root logger
    # a handler (basicConfig): silence that one import and leave the process's logging as it was.
    root, handler = logging.getLogger(), logging.NullHandler()
    drop = logging.Filter("minatar: no record has this logger name")
    root.addHandler(handler)
    root.addFilter(drop)
    try:
        (gym_module,) = require("minatar", "minatar.gym")
    finally:
        root.removeFilter(drop)
        root.removeHandler(handler)
    gym_module.register_envs()


# gymnasium's env families that need more than the core install, by the module of their entry point
FAMILY_EXTRAS = {"gymnasium.envs.box2d": ("box2d", "Box2D")}


def check_env_id(env_id: str) -> None:
    """Fail early, with close matches, on an id gymnasium does not know or whose extra is not installed."""
    if is_atari(env_id):
        require("atari", "ale_py", "cv2", what="Atari envs")
    _register_ale()
    if is_atari(env_id):
        check_atari_id(env_id, gym.registry)
        return
    if env_id.startswith("MinAtar/"):
        _register_minatar()
    if env_id in gym.registry:
        entry_point = gym.registry[env_id].entry_point
        module = entry_point.partition(":")[0] if isinstance(entry_point, str) else ""
        for family, (extra, package) in FAMILY_EXTRAS.items():
            if module.startswith(family + "."):
                require(extra, package, what=f"{env_id} and the other {family.rpartition('.')[2]} envs")
        return
    if env_id in OWN_ENVS:
        raise UserError(f"env.id={env_id!r} is now 'rl_lab/{env_id}' (the lab's own envs carry the rl_lab/ namespace)")
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
        self.pending_snapshot: dict | None = None  # set through AsyncVectorEnv.set_attr, then restore_pending()

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

    def restore_pending(self):
        """`restore` for an env in an AsyncVectorEnv worker, which gets its own snapshot via set_attr first."""
        obs, self.pending_snapshot = self.restore(self.pending_snapshot), None
        return obs


def _to_builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value)} in an env snapshot")


def make_env(env_id: str, **kwargs) -> gym.Env:
    check_env_id(env_id)
    if is_atari(env_id):
        kwargs.pop("ale_vector_env", None)
        return ReplayableEnv(make_atari_env(env_id, **kwargs))
    try:
        env = gym.make(env_id, **kwargs)
    except TypeError as err:
        raise UserError(f"env.kwargs do not fit {env_id}: {err}") from None
    except gym.error.DependencyNotInstalled as err:  # a family without an extra of ours (e.g. MuJoCo)
        raise UserError(f"{env_id}: {' '.join(str(err).split())}") from None
    if env_id.startswith("MinAtar/"):  # (10, 10, C) bool -> (C, 10, 10) uint8 planes, the layout CNNs take
        space = env.observation_space
        planes = gym.spaces.Box(0, 1, (space.shape[2], *space.shape[:2]), np.uint8)
        env = gym.wrappers.TransformObservation(env, lambda obs: obs.transpose(2, 0, 1).astype(np.uint8), planes)
        env = SeededResets(env)  # its game RNG is its own: reseed it at each reset so episodes replay
    return ReplayableEnv(env)


def vector_kind(env_id: str, num_envs: int, vector: str = "auto", **kwargs) -> str:
    """What `env.vector` resolves to: sync, async or ale. auto is ale for an Atari id with more than one env
    (ale-py's C++ threads step many emulators fastest), else sync. `env.kwargs.ale_vector_env: true` (older
    configs) means ale."""
    if kwargs.get("ale_vector_env"):
        vector = "ale"
    if vector == "auto":
        return "ale" if is_atari(env_id) and num_envs > 1 else "sync"
    if vector == "ale" and not is_atari(env_id):
        raise UserError(f"env.vector=ale runs ale-py's AtariVectorEnv, but env.id={env_id!r} is not an Atari game")
    return vector


def make_vector_env(env_id: str, num_envs: int, vector: str = "auto", **kwargs) -> gym.vector.VectorEnv:
    """N copies, reset in the same step they end (the final observation is in info): `vector` (env.vector) says
    how. sync: in this process; async: one subprocess each (worth it when one env step costs more than the pipe
    round trip); ale: ale-py's threaded AtariVectorEnv with the same preprocessing, the fastest for many Atari
    envs, whose emulators cannot be snapshotted (a resumed run restarts their episodes); auto: see vector_kind.
    """
    check_env_id(env_id)
    kind = vector_kind(env_id, num_envs, vector, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "ale_vector_env"}
    if kind == "ale":
        return make_atari_vector_env(env_id, num_envs, **kwargs)
    factories = [lambda: make_env(env_id, **kwargs) for _ in range(num_envs)]
    if kind == "async":
        make_env(env_id, **kwargs).close()  # a bad id or kwarg fails here, as a UserError, not in a worker
        return AsyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP)
    return SyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP)


def can_snapshot(envs: gym.vector.VectorEnv) -> bool:
    """Whether the envs' episodes in progress can be saved and replayed exactly (not ale-py's AtariVectorEnv)."""
    return isinstance(envs, (SyncVectorEnv, AsyncVectorEnv))


def snapshot_vector_env(envs: gym.vector.VectorEnv) -> list[dict]:
    if isinstance(envs, AsyncVectorEnv):
        return list(envs.call("snapshot"))
    if not can_snapshot(envs):  # AtariVectorEnv: the emulators' state stays inside ale-py
        return [{"not_replayable": type(envs).__name__}] * envs.num_envs
    return [env.snapshot() for env in envs.envs]


def restore_vector_env(envs: gym.vector.VectorEnv, snapshots: list[dict]) -> np.ndarray:
    if len(snapshots) != envs.num_envs:
        raise UserError(f"checkpoint holds {len(snapshots)} env states but the config has {envs.num_envs} envs")
    if isinstance(envs, AsyncVectorEnv) and not any("not_replayable" in s for s in snapshots):
        envs.set_attr("pending_snapshot", list(snapshots))
        return np.stack(envs.call("restore_pending"))
    if not isinstance(envs, SyncVectorEnv) or any("not_replayable" in s for s in snapshots):
        raise UserError(
            "episodes of ale-py's AtariVectorEnv cannot be resumed, only restarted (ale-py keeps their state)"
        )
    return np.stack([env.restore(snap) for env, snap in zip(envs.envs, snapshots, strict=True)])

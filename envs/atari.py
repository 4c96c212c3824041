"""Atari with the standard DQN preprocessing, composed from gymnasium's and ale-py's own pieces.

Per env: up to 30 no-op starts, frame skip 4 with a max over the last two frames, 84x84 grayscale
(gymnasium's AtariPreprocessing), FIRE on reset where the game needs it, a 4-frame stack
(FrameStackObservation) and a 108k-frame episode cap. The env itself reports the raw game score and ends an
episode at game over only; loss of a life as a terminal and reward clipping are *learning* signals, applied by
`LearningSignals` to what the learner sees. ale-py's AtariVectorEnv (env.vector ale, the default for several
Atari envs) runs the same preprocessing in C++ threads; evaluation runs on the kind of env the agent trained on.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

from rl_lab.errors import UserError

# Preprocessing options read from env.kwargs for Atari ids; everything else goes to gymnasium.make.
DEFAULTS = {
    "noop_max": 30,
    "frame_skip": 4,
    "screen_size": 84,
    "frame_stack": 4,
    "terminal_on_life_loss": True,  # for learning only: the env keeps playing until game over
    "clip_rewards": True,  # for learning only: scores stay raw
}
MAX_EPISODE_FRAMES = 108_000  # 30 minutes of play at 60 Hz, the DQN papers' evaluation cap


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/") or env_id.endswith("NoFrameskip-v4")


def frame_stack_padding(env_id: str, envs: gym.vector.VectorEnv) -> str | None:
    """How the env pads a frame stack at an episode start ("repeat" the first frame or "zero"); None when its
    observations are not stacked Atari frames. A frame replay must rebuild stacks the same way.

    ale-py's AtariVectorEnv pads with zeros; gymnasium's FrameStackObservation (in sync and async vector envs
    alike) says how in its `padding_type`: "reset" repeats the first frame, "zero" pads zeros.
    """
    if not is_atari(env_id):
        return None
    if not isinstance(envs, (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv)):
        return "zero"  # AtariVectorEnv
    padding = set(envs.get_attr("padding_type"))
    if padding == {"reset"}:
        return "repeat"
    if padding == {"zero"}:
        return "zero"
    raise ValueError(f"frame stacks padded with {padding}: a frame replay rebuilds only 'reset' or 'zero' padding")


def check_atari_id(env_id: str, registry) -> None:
    """A bad game name exits 2 with the closest game names (`ALE/Pongg-v5` -> `ALE/Pong-v5`)."""
    if env_id in registry:
        return
    atari_ids = [k for k in registry if k.startswith("ALE/") or k.endswith("NoFrameskip-v4")]
    close = difflib.get_close_matches(env_id, atari_ids, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else "; Atari ids look like ALE/Pong-v5, PongNoFrameskip-v4"
    raise UserError(f"env.id={env_id!r} is not an Atari game known to ale-py{hint}")


def split_options(kwargs: dict) -> tuple[dict, dict]:
    """(preprocessing options with defaults filled in, the kwargs left for gymnasium.make)."""
    options = {k: kwargs.get(k, v) for k, v in DEFAULTS.items()}
    rest = {k: v for k, v in kwargs.items() if k not in DEFAULTS}
    return options, rest


class FireOnReset(gym.Wrapper):
    """Press FIRE after each reset in games that wait for it (Breakout): gymnasium has no wrapper for this."""

    def reset(self, *, seed=None, options=None):
        self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            return self.env.reset(seed=seed, options=options)
        return obs, info


class SeededResets(gym.Wrapper):
    """Reseed the game at every reset, from the env's own np_random (itself seeded by an explicit seed).

    ALE's sticky actions (and MinAtar's whole game) draw from an RNG no wrapper can read; reseeding at each reset
    makes an episode a function of np_random's state and the actions, so ReplayableEnv can rebuild it.
    """

    def reset(self, *, seed=None, options=None):
        if seed is None:
            return self.env.reset(seed=int(self.unwrapped.np_random.integers(2**31 - 1)), options=options)
        result = self.env.reset(seed=seed, options=options)
        self.unwrapped.np_random = np.random.default_rng(seed)
        return result


def make_atari_env(env_id: str, render_mode: str | None = None, **kwargs) -> gym.Env:
    options, rest = split_options(kwargs)
    rest.setdefault("max_num_frames_per_episode", MAX_EPISODE_FRAMES)
    try:
        env = gym.make(env_id, frameskip=1, render_mode=render_mode, **rest)
    except TypeError as err:
        raise UserError(f"env.kwargs do not fit {env_id}: {err}") from None
    env = SeededResets(env)
    env = AtariPreprocessing(
        env, noop_max=options["noop_max"], frame_skip=options["frame_skip"], screen_size=options["screen_size"]
    )
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireOnReset(env)
    return FrameStackObservation(env, options["frame_stack"])


def make_atari_vector_env(env_id: str, num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    """ale-py's threaded AtariVectorEnv with the same preprocessing (its stack pads an episode start with zeros)."""
    options, rest = split_options(kwargs)
    if "max_episode_steps" in rest:  # gymnasium's time limit on the frameskip-1 env counts frames, as ale-py does
        rest["max_num_frames_per_episode"] = rest.pop("max_episode_steps")
    spec = gym.spec(env_id)
    game = spec.kwargs["game"]
    from ale_py.vector_env import AtariVectorEnv

    try:
        return AtariVectorEnv(
            game,
            num_envs,
            autoreset_mode=AutoresetMode.SAME_STEP,
            repeat_action_probability=rest.pop("repeat_action_probability", spec.kwargs["repeat_action_probability"]),
            max_num_frames_per_episode=rest.pop("max_num_frames_per_episode", MAX_EPISODE_FRAMES),
            noop_max=options["noop_max"],
            frameskip=options["frame_skip"],
            img_height=options["screen_size"],
            img_width=options["screen_size"],
            stack_num=options["frame_stack"],
            reward_clipping=False,
            episodic_life=False,
            **rest,
        )
    except TypeError as err:
        raise UserError(f"env.kwargs do not fit {env_id}: {err}") from None


@dataclass
class LearningSignals:
    """Turns the env's raw rewards and game-over flags into what the learner sees.

    With `life_loss`, losing a life is a terminal transition (no bootstrap) although the game goes on; with
    `clip`, rewards are clipped to their sign. `lives` (one per env) is the only state; checkpoints keep it.
    """

    clip: bool = False
    life_loss: bool = False
    lives: np.ndarray | None = None

    def __call__(self, rewards, terminated, truncated, infos) -> tuple[np.ndarray, np.ndarray]:
        rewards = np.sign(rewards).astype(np.float32) if self.clip else np.asarray(rewards, dtype=np.float32)
        terminated = np.asarray(terminated, dtype=bool)
        if self.life_loss and "lives" in infos:
            lives = np.asarray(infos["lives"])
            if self.lives is not None:  # an env reset this step reports its new game's lives: not a loss
                terminated = terminated | ((lives < self.lives) & ~(terminated | truncated))
            self.lives = lives.copy()
        return rewards, terminated

    def start(self, infos) -> None:
        self.lives = np.asarray(infos["lives"]).copy() if self.life_loss and "lives" in infos else None


def learning_signals(env_id: str, kwargs: dict) -> LearningSignals:
    if not is_atari(env_id):
        return LearningSignals()
    options, _ = split_options(kwargs)
    return LearningSignals(clip=options["clip_rewards"], life_loss=options["terminal_on_life_loss"])


# Random-agent and human scores for the games we ship configs for, from Mnih et al. (2015), "Human-level control
# through deep reinforcement learning", Nature 518, Extended Data Table 2. See docs/atari_reference_scores.md.
REFERENCE_SCORES = {
    "Pong": {"random": -20.7, "human": 9.3},
    "Breakout": {"random": 1.7, "human": 31.8},
}


def game_name(env_id: str) -> str:
    return env_id.removeprefix("ALE/").split("-")[0].removesuffix("NoFrameskip")


def human_normalized(env_id: str, score: float) -> float | None:
    """(score - random) / (human - random), or None for a game without reference scores."""
    ref = REFERENCE_SCORES.get(game_name(env_id)) if is_atari(env_id) else None
    if ref is None:
        return None
    return (score - ref["random"]) / (ref["human"] - ref["random"])

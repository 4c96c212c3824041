"""Evaluation episodes as mp4 files, written with imageio-ffmpeg and logged to the run's W&B run as wandb.Video.

gymnasium's RecordVideo needs moviepy and W&B's automatic video logging hooks gymnasium 0.x; this records the
frames of `env.render()` itself and hands W&B the finished file, which works online and offline alike.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from rl_lab.envs import make_env
from rl_lab.envs.atari import DEFAULTS, is_atari
from rl_lab.extras import require
from rl_lab.logger import init_wandb, resolve_wandb_mode

# gymnasium's env families that draw their frames with pygame
PYGAME_FAMILIES = ("gymnasium.envs.classic_control.", "gymnasium.envs.box2d.", "gymnasium.envs.toy_text.")


def check_video(env_id: str) -> None:
    """Before anything is evaluated: the `video` extra's packages that recording `env_id` needs (UserError)."""
    require("video", "imageio", "imageio_ffmpeg", what="videos")
    spec = gym.registry.get(env_id)
    entry_point = spec.entry_point if spec is not None and isinstance(spec.entry_point, str) else ""
    if entry_point.startswith(PYGAME_FAMILIES):
        require("video", "pygame", what=f"videos of {env_id} (drawn with pygame)")


def record_episode(policy, env_id: str, env_kwargs: dict, seed: int, epsilon: float, path: Path) -> dict:
    """Play one episode (epsilon-greedy around `policy`) and write its rendered frames to `path` as mp4."""
    check_video(env_id)
    import imageio.v2 as imageio

    env = make_env(env_id, render_mode="rgb_array", **env_kwargs)
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    frames, score, done = [env.render()], 0.0, False
    while not done:
        action = policy(obs[None])[0] if rng.random() >= epsilon else env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        frames.append(env.render())
        score += float(reward)
        done = terminated or truncated
    env.close()
    # each Atari step shows frame_skip emulator frames: play at the game's own speed
    skip = env_kwargs.get("frame_skip", DEFAULTS["frame_skip"]) if is_atari(env_id) else 1
    fps = max(1, round(env.metadata.get("render_fps", 30) / skip))
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, frames, fps=fps, codec="libx264", macro_block_size=2)
    return {"path": str(path), "return": score, "length": len(frames) - 1}


def log_videos(run_dir: Path, config, paths: list[Path]) -> str | None:
    """Log mp4 files to the run's W&B run (continued by its saved id); None when logged or W&B is off, else why
    W&B could not take them (W&B is optional: the files stay in place)."""
    w = config.logger.wandb
    mode = resolve_wandb_mode(w.mode)
    if mode == "disabled":
        return None
    import wandb

    try:
        run = init_wandb(run_dir, config.to_dict(), mode, w.project, w.entity, run_dir.name, options=w)
        run.log({"eval/video": [wandb.Video(str(p), format="mp4") for p in paths]})
        run.finish()
    except Exception as e:  # W&B is optional, as in RunLogger
        return " ".join(f"{type(e).__name__}: {e}".split())
    return None

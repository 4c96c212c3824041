"""Evaluation episodes as mp4 files, written with imageio-ffmpeg and logged to the run's W&B run as wandb.Video.

The episodes filmed are episodes of the evaluation itself (Film, passed to rl_lab.rl.evaluation.evaluate), so a
video shows the return and length its table counts. gymnasium's RecordVideo needs moviepy and W&B's automatic video
logging hooks gymnasium 0.x; this records the frames of `env.render()` itself and hands W&B the finished file,
which works online and offline alike.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

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


class Film:
    """Films episodes of an evaluation while it runs (rl_lab.rl.evaluation.evaluate(film=...)), so each video is an
    episode of its table: the first `count` episodes in the order (k-th episode of env 0, 1, ..., then the next
    round), each env i's first episode being the one seeded `seed + i`. Frames stream into mp4 files under
    `directory` named `{prefix}-seed_{seed + i}.mp4` (`-episode_{k + 1}` after an env's first); `clips` lists them
    with their return and length and `index`, the episode's place in the evaluation's returns and lengths."""

    def __init__(self, count: int, directory: Path, prefix: str, seed: int, env_id: str, env_kwargs: dict):
        check_video(env_id)
        self.count, self.directory, self.prefix, self.seed = count, Path(directory), prefix, seed
        # each Atari step shows frame_skip emulator frames: play at the game's own speed
        self.skip = env_kwargs.get("frame_skip", DEFAULTS["frame_skip"]) if is_atari(env_id) else 1
        self.clips: list[dict] = []
        self._filmed: set[tuple[int, int]] = set()
        self._offsets: list[int] = []
        self._open: dict[int, dict] = {}  # env index -> the clip being filmed
        self._episodes: list[int] = []  # episodes begun per env

    def attach(self, envs: gym.vector.VectorEnv, quota: np.ndarray) -> None:
        """Wrap the sub-envs of an in-process vector env (before its first reset) that play a filmed episode;
        quota[i]: the episodes env i counts."""
        if not hasattr(envs, "envs"):
            raise TypeError("Film needs a SyncVectorEnv (the sub-envs render in this process)")
        order = [(k, i) for k in range(int(quota.max())) for i in range(len(quota)) if k < quota[i]]
        self._filmed = {(i, k) for k, i in order[: self.count]}
        self._offsets = np.concatenate([[0], np.cumsum(quota)[:-1]]).astype(int).tolist()
        self._episodes = [0] * len(quota)
        for i in sorted({i for i, _ in self._filmed}):
            envs.envs[i] = _Recorder(envs.envs[i], self, i)

    def begin(self, i: int, fps: float) -> bool:
        """Env i starts an episode: whether it is filmed (then its file is open for frames)."""
        k = self._episodes[i]
        self._episodes[i] += 1
        if (i, k) not in self._filmed:
            return False
        import imageio.v2 as imageio

        name = f"{self.prefix}-seed_{self.seed + i}" + (f"-episode_{k + 1}" if k else "") + ".mp4"
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fps = max(1, round(fps / self.skip))
        writer = imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=2)
        self._open[i] = {"writer": writer, "path": path, "return": 0.0, "length": 0, "index": self._offsets[i] + k}
        return True

    def filming(self, i: int) -> bool:
        return i in self._open

    def frame(self, i: int, frame: np.ndarray) -> None:
        self._open[i]["writer"].append_data(frame)

    def step(self, i: int, reward: float, done: bool) -> None:
        """Env i's filmed episode took a step (its frame already added)."""
        clip = self._open[i]
        clip["return"] += float(reward)
        clip["length"] += 1
        if done:
            clip.pop("writer").close()
            self.clips.append(self._open.pop(i))

    def close(self) -> None:
        """Close the files of episodes cut short (an error mid-evaluation); the finished clips stay listed."""
        for clip in self._open.values():
            clip["writer"].close()
        self._open.clear()
        self.clips.sort(key=lambda clip: clip["index"])


class _Recorder(gym.Wrapper):
    """Hands every frame of one sub-env to the Film: after each reset and after each step, so the last frame of an
    episode is filmed before the vector env resets it."""

    def __init__(self, env: gym.Env, film: Film, index: int):
        super().__init__(env)
        self.film, self.index = film, index

    def reset(self, **kwargs):
        result = self.env.reset(**kwargs)
        if self.film.begin(self.index, self.env.metadata.get("render_fps", 30)):
            self.film.frame(self.index, self.env.render())
        return result

    def step(self, action):
        result = self.env.step(action)
        if self.film.filming(self.index):  # episodes not filmed are not drawn
            _, reward, terminated, truncated, _ = result
            self.film.frame(self.index, self.env.render())
            self.film.step(self.index, reward, bool(terminated or truncated))
        return result


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

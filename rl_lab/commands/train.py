"""`rl-lab train CONFIG [key=value ...]`, `rl-lab train --resume RUN_DIR` and `rl-lab eval RUN_DIR`: a run's life
from the command line, told to the user (rl_lab.runs does the work)."""

from __future__ import annotations

import sys

import rl_lab.runs as runs
from rl_lab.errors import UserError


def train(config_path: str, overrides: list[str]) -> dict:
    run = runs.start_run(config_path, overrides)
    if runs.distributed.is_main_process():
        print(run.header(), flush=True)
    return _train(run, resume=False)


def resume(run_dir: str) -> dict:
    run, checkpoint, note = runs.reopen_run(run_dir)
    if note:
        print(f"note: {note}")
    if checkpoint is None:
        print(f"resuming {run.dir} from the beginning (it was stopped before its first checkpoint)")
    else:
        print(f"resuming {run.dir} from {checkpoint.name}")
    return _train(run, resume=True)


def _train(run: runs.Run, resume: bool) -> dict:
    summary = runs.train(run, resume)
    if runs.distributed.is_main_process():
        print(run.report)
        if any((run.dir / "wandb").glob("offline-run-*")):
            print(f"W&B logged offline; upload it with: wandb sync {run.dir}/wandb/offline-run-*")
    return summary


def evaluate(run_dir: str, episodes: int | None, epsilon: float | None, seed: int | None, video: int = 0) -> dict:
    """Re-evaluate a run's latest checkpoint and print a table; `video` env episodes go to RUN_DIR/videos/."""
    if episodes is not None and episodes < 1:
        raise UserError(f"--episodes {episodes}: must be >= 1")
    if video < 0:
        raise UserError(f"--video {video}: must be >= 0")
    run = runs.open_run(run_dir)
    checkpoint = run.checkpoint
    if video and hasattr(run.config, "env"):
        from rl_lab.rl.video import check_video

        check_video(run.config.env.id)  # a missing extra stops here, before the evaluation
    options = {"episodes": episodes, "epsilon": epsilon, "seed": seed} if hasattr(run.config, "env") else {}
    result, table = run.trainer.evaluate_checkpoint(checkpoint, **options)
    print(table)
    if video and hasattr(run.config, "env"):
        _videos(run, video, epsilon, seed)
    return result


def _videos(run: runs.Run, count: int, epsilon: float | None, seed: int | None) -> None:
    from rl_lab.rl.video import log_videos, record_episode

    c, agent = run.config, run.trainer.agent
    epsilon = c.eval.epsilon if epsilon is None else epsilon
    seed = c.seed + c.eval.seed_offset if seed is None else seed
    paths = []
    for i in range(count):  # checkpoints are named step_<N>, so are the videos of their agents
        path = run.dir / "videos" / f"eval-{run.checkpoint.name}-seed_{seed + i}.mp4"
        clip = record_episode(agent.greedy, c.env.id, dict(c.env.kwargs), seed + i, epsilon, path)
        print(f"video: {path} (return {clip['return']:.1f}, {clip['length']} steps)")
        paths.append(path)
    problem = log_videos(run.dir, c, paths)
    if problem:
        print(f"wandb unavailable ({problem}); the videos are in {paths[0].parent}", file=sys.stderr)

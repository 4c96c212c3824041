"""`rl-lab train CONFIG [key=value ...]`, `rl-lab train --resume RUN_DIR` and `rl-lab eval RUN_DIR`: a run's life
from the command line, told to the user (rl_lab.runs does the work)."""

from __future__ import annotations

import sys

import rl_lab.runs as runs
from rl_lab.errors import UserError
from rl_lab.loader import eval_deterministic
from rl_lab.suite import budget_hint


def train(config_path: str, overrides: list[str]) -> dict:
    run = runs.start_run(config_path, overrides)
    return _train(run, resume=False, header=run.header())


def resume(run_dir: str, total_steps: int | None = None) -> dict:
    run, checkpoint, note = runs.reopen_run(run_dir, total_steps)
    if checkpoint is None:
        header = f"resuming {run.dir} from the beginning (it was stopped before its first checkpoint)"
    else:
        header = f"resuming {run.dir} from {checkpoint.name}"
    return _train(run, resume=True, header=f"note: {note}\n{header}" if note else header)


def _train(run: runs.Run, resume: bool, header: str) -> dict:
    try:  # the header too: an interrupt right after it must still name the run to resume
        if runs.distributed.is_main_process():  # torchrun: rank 0 tells the user
            print(header, flush=True)
        summary = runs.train(run, resume)
    except KeyboardInterrupt as err:
        err.run_dir = run.dir  # the interrupt message names the run to resume
        raise
    if runs.distributed.is_main_process():
        print(run.report)
        hint = budget_hint(run.config, summary) if hasattr(run.config, "env") else None
        if hint:
            print(hint)
        if any((run.dir / "wandb").glob("offline-run-*")):
            print(f"W&B logged offline; upload it with: wandb sync {run.dir}/wandb/offline-run-*")
    return summary


def evaluate(
    run_dir: str,
    episodes: int | None,
    epsilon: float | None,
    seed: int | None,
    video: int = 0,
    actions: str | None = None,
) -> dict:
    """Re-evaluate a run's latest checkpoint and print a table; `video` env episodes go to RUN_DIR/videos/;
    `actions` (greedy | sampled) overrides the config's eval.deterministic."""
    if episodes is not None and episodes < 1:
        raise UserError(f"--episodes {episodes}: must be >= 1")
    if video < 0:
        raise UserError(f"--video {video}: must be >= 0")
    run = runs.open_run(run_dir)
    checkpoint = run.checkpoint
    options = {"episodes": episodes, "epsilon": epsilon, "seed": seed} if hasattr(run.config, "env") else {}
    if actions:
        options.update(deterministic=eval_deterministic(run.config, actions))
    if video and options:
        options["film"] = _film(run, video, episodes, seed)
    result, table = run.trainer.evaluate_checkpoint(checkpoint, **options)
    print(table)
    if options.get("film"):
        _videos(run, options["film"].clips)
    return result


def _film(run: runs.Run, count: int, episodes: int | None, seed: int | None):
    """What films `count` of the episodes `rl-lab eval` plays (a missing extra stops here, before evaluating)."""
    from rl_lab.rl.evaluation import eval_vector
    from rl_lab.rl.video import Film

    c = run.config
    episodes = episodes or c.eval.episodes
    if count > episodes:
        raise UserError(f"--video {count}: films episodes of the evaluation, which plays {episodes}; add --episodes")
    seed = c.seed + c.eval.seed_offset if seed is None else seed
    if eval_vector(c.env) != "sync":
        print("note: filmed on gymnasium's Atari envs, which render (ale-py's vector env does not)")
    # checkpoints are named step_<N>, so are the videos of their agents
    return Film(count, run.dir / "videos", f"eval-{run.checkpoint.name}", seed, c.env.id, dict(c.env.kwargs))


def _videos(run: runs.Run, clips: list[dict]) -> None:
    from rl_lab.rl.video import log_videos

    for clip in clips:
        print(
            f"video: {clip['path']} (episode {clip['index'] + 1}: return {clip['return']:.1f}, {clip['length']} steps)"
        )
    paths = [clip["path"] for clip in clips]
    problem = log_videos(run.dir, run.config, paths)
    if problem:
        print(f"wandb unavailable ({problem}); the videos are in {paths[0].parent}", file=sys.stderr)

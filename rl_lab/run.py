"""A run from start to finish: build it, give it its directory, train or resume, summarise, evaluate later.

Run directory: config.yaml (fully resolved), metrics.jsonl, summary.json, checkpoints/, plots/.
Everything that user input can break (config, env id, encoder, device) is built before the directory exists,
so a bad command leaves nothing behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents import AGENTS
from rl_lab.checkpoint import latest_checkpoint, load_checkpoint
from rl_lab.config import Config, TaskConfig, load_config, to_yaml
from rl_lab.device import select_device
from rl_lab.errors import UserError
from rl_lab.evaluation import eval_stats, evaluate, format_eval_table
from rl_lab.fileio import write_atomic
from rl_lab.logger import RunLogger
from rl_lab.offpolicy import OffPolicyTrainer, make_envs
from rl_lab.onpolicy import OnPolicyTrainer
from rl_lab.seeding import seed_everything
from rl_lab.tasks.distributed import is_main_process


@dataclass
class Session:
    config: Config
    trainer: Any  # the agent's training loop (see LOOPS)


def _loops() -> dict[str, type]:
    """Training loops by the name an agent class declares in its `loop` attribute.

    A loop takes (config, agent, envs, rng) and offers run(run_dir, logger) -> summary, resume(run_dir),
    `agent` and `state` (with `step` and `metrics_lines`).
    """
    return {"offpolicy": OffPolicyTrainer, "onpolicy": OnPolicyTrainer}


def build(config: Config) -> Session:
    """Device, seeds, envs and agent; every UserError from here happens before any file is written."""
    if isinstance(config, TaskConfig):  # a supervised task: data and model instead of envs and agent
        from rl_lab.tasks.runner import build_task

        return Session(config, build_task(config))
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    device = select_device(config.device)
    rng = seed_everything(config.seed)
    envs = make_envs(config)
    agent_cls = AGENTS[config.agent.name]
    try:
        agent = agent_cls(
            config.agent,
            envs.single_observation_space,
            envs.single_action_space,
            device,
            config.train.total_steps,
        )
    except UserError as err:
        raise UserError(f"agent: {err}") from None
    return Session(config, _loops()[agent_cls.loop](config, agent, envs, rng))


def default_run_dir(config_path: Path, config: Config) -> Path:
    return Path("runs") / f"{config_path.stem}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_new(config_path: str | Path, overrides: list[str]) -> Path:
    config_path = Path(config_path)
    config = load_config(config_path, overrides)
    run_dir = Path(config.run.dir) if config.run.dir else default_run_dir(config_path, config)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} is a file, not a directory; choose another run.dir=...")
    if run_dir.exists() and any(run_dir.iterdir()) and is_main_process():  # torchrun: rank 0 makes the dir
        raise UserError(
            f"run dir {run_dir} exists and is not empty; choose another run.dir=... "
            f"or continue it with: rl-lab train --resume {run_dir}"
        )
    session = build(config)
    config.run.dir = str(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "plots").mkdir(exist_ok=True)
    write_atomic(run_dir / "config.yaml", to_yaml(config))
    _train(session, run_dir, resume=False)
    return run_dir


def train_resume(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    config = load_config(_run_config_path(run_dir))
    if (run_dir / "summary.json").is_file():
        raise UserError(f"run {run_dir} already finished (summary.json exists); evaluate it: rl-lab eval {run_dir}")
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    session = build(config)
    session.trainer.resume(run_dir)
    print(f"resuming {run_dir} from {checkpoint.name}")
    _train(session, run_dir, resume=True)
    return run_dir


def _train(session: Session, run_dir: Path, resume: bool) -> None:
    config = session.config
    if isinstance(config, TaskConfig):
        from rl_lab.tasks.runner import train_task

        train_task(config, session.trainer, run_dir, resume)
        return
    logger = RunLogger.for_run(run_dir, config, config.train.total_steps, session.trainer.state, resume)
    try:
        summary = session.trainer.run(run_dir, logger)
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        logger.summary(summary)
    finally:
        logger.close()
    from rl_lab.plots import plot_learning_curve  # matplotlib: imported only by runs that get this far

    curve = plot_learning_curve(
        run_dir / "metrics.jsonl",
        run_dir / "plots" / "learning_curve.png",
        f"{config.agent.name} on {config.env.id} (seed {config.seed})",
    )
    title = f"Final evaluation: {config.agent.name} on {config.env.id}, {summary['env_steps']} steps"
    print(format_eval_table(title, summary["final_eval"]))
    print(f"training: {summary['wall_time_s']:.1f} s, {summary['sps']:.0f} steps/s")
    print(f"run dir: {run_dir}")
    print(f"learning curve: {curve}")


def evaluate_run(
    run_dir: str | Path, episodes: int | None, epsilon: float | None, seed: int | None, video: int = 0
) -> dict:
    """Re-evaluate the agent of a run's latest checkpoint and print a table; `video` episodes go to videos/."""
    run_dir = Path(run_dir)
    config = load_config(_run_config_path(run_dir))
    if isinstance(config, TaskConfig):
        from rl_lab.tasks.runner import evaluate_task

        return evaluate_task(run_dir, config)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    session = build(config)
    agent = session.trainer.agent
    torch_state, _, meta = load_checkpoint(checkpoint, agent.device)
    agent.load_state_dict(torch_state["agent"], weights_only=True)
    episodes = episodes or config.eval.episodes
    epsilon = config.eval.epsilon if epsilon is None else epsilon
    seed = config.seed + config.eval.seed_offset if seed is None else seed
    stats = eval_stats(evaluate(agent.greedy, config.env.id, episodes, seed, epsilon, config.env.kwargs), config.env.id)
    print(format_eval_table(f"{run_dir} at step {meta['step']} ({config.env.id}, epsilon {epsilon})", stats))
    if video:
        from rl_lab.video import log_videos, record_episode

        paths = []
        for i in range(video):
            path = run_dir / "videos" / f"eval-step_{meta['step']:010d}-seed_{seed + i}.mp4"
            clip = record_episode(agent.greedy, config.env.id, dict(config.env.kwargs), seed + i, epsilon, path)
            print(f"video: {path} (return {clip['return']:.1f}, {clip['length']} steps)")
            paths.append(path)
        log_videos(run_dir, config, paths)
    return stats


def _run_config_path(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} does not exist")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    return path

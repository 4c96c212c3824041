"""DQN on Pong with the Nature settings: our training steps/s vs stable-baselines3 DQN CnnPolicy, side by side.

(a) steps/s while learning (after learning_starts), same hyperparameters (configs/pong_dqn.yaml: batch 32, an
    update every 4 steps, Adam 1e-4, target every 10k steps), each library with its own Atari preprocessing, plus
    the compute limit measured in the same run: 1 / (learner-step time / train_freq + act time), from our agent's
    own update and batch-1 forward pass timed in our worker process after its run;
(b) replay bytes per transition: our FrameReplay vs SB3's ReplayBuffer for 4x84x84 uint8 observations.

Every variant runs in a fresh subprocess (`--worker`), one after the other; the order alternates per repeat.

    .venv/bin/python benchmarks/dqn_pong_vs_sb3.py --learning-starts 2000 --steps 4000 --repeats 1

stable-baselines3 is imported only here (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUFFER = 100_000  # replay capacity for the timed runs (the Nature 1M only changes memory, not steps/s)


def run_sb3(learning_starts: int, steps: int) -> dict:
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    class Clock(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == learning_starts:
                self.start = time.perf_counter()
            return True

    from rl_lab.envs import check_env_id

    check_env_id("PongNoFrameskip-v4")  # registers ale-py's envs with gymnasium
    env = VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=1, seed=0), n_stack=4)
    model = DQN(
        "CnnPolicy",
        env,
        learning_rate=1e-4,
        buffer_size=BUFFER,
        learning_starts=learning_starts,
        batch_size=32,
        tau=1.0,
        gamma=0.99,
        train_freq=4,
        gradient_steps=1,
        target_update_interval=10_000,
        exploration_fraction=0.1,
        exploration_final_eps=0.1,
        max_grad_norm=10,
        optimize_memory_usage=False,
        device="cpu",
        seed=0,
    )
    clock = Clock()
    model.learn(total_timesteps=learning_starts + steps, callback=clock)
    elapsed = time.perf_counter() - clock.start
    buffer = model.replay_buffer
    arrays = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
    replay_bytes = sum(getattr(buffer, name).nbytes for name in arrays) / buffer.buffer_size
    return {
        "sps": steps / elapsed,
        "replay_bytes_per_transition": replay_bytes,
        "torch_threads": torch.get_num_threads(),
    }


class _Capture:
    """Stands in for RunLogger: keeps each row's time/* values."""

    lines = 0

    def __init__(self):
        self.rows = []

    def log(self, step, metrics, extra=None):
        self.rows.append({"step": step, **(extra or {})})
        self.lines += 1

    def progress(self, *args, **kwargs):
        pass


def run_ours(learning_starts: int, steps: int, run_dir: Path) -> dict:
    import torch

    from rl_lab.loader import build_trainer, load_config

    overrides = [
        "device=cpu",
        f"train.total_steps={learning_starts + steps}",
        f"agent.learning_starts={learning_starts}",
        f"agent.buffer_size={BUFFER}",
        f"logger.log_every={steps // 4}",
        "eval.every=0",
        "eval.episodes=1",
        "run.checkpoint_every=0",
        "logger.wandb.mode=disabled",
    ]
    config = load_config(ROOT / "configs" / "pong_dqn.yaml", overrides)
    config.env.kwargs["max_num_frames_per_episode"] = 4000  # the final evaluation is not timed: keep it short
    trainer = build_trainer(config)
    capture = _Capture()
    trainer.run(run_dir, capture)
    learning = [r for r in capture.rows if r["step"] > learning_starts and "time/sps" in r][:-1]  # final row: eval
    sps = float(np.mean([r["time/sps"] for r in learning]))
    split = {k: float(np.mean([r[f"time/{k}_frac"] for r in learning])) for k in ("env", "act", "learn")}

    # The compute limit, on the same process and buffer: one update (train_freq steps' worth) and one act.
    agent, buffer, rng = trainer.agent, trainer.buffer, np.random.default_rng(0)
    obs = trainer.obs
    for _ in range(5):
        agent.train(buffer, learning_starts + 4, 4, rng)
    start = time.perf_counter()
    updates = 40
    for i in range(updates):
        agent.train(buffer, learning_starts + 4 * (i + 2), 4, rng)
    update_s = (time.perf_counter() - start) / updates
    start = time.perf_counter()
    acts = 200
    for _ in range(acts):
        agent.greedy(obs)
    act_s = (time.perf_counter() - start) / acts
    limit = 1 / (update_s / config.agent.train_freq + act_s)
    return {
        "sps": sps,
        "time_split": split,
        "update_ms": 1000 * update_s,
        "act_ms": 1000 * act_s,
        "compute_limit_sps": limit,
        "replay_bytes_per_transition": buffer.nbytes() / BUFFER,
        "torch_threads": torch.get_num_threads(),
    }


def worker(kind: str, learning_starts: int, steps: int, out: Path) -> None:
    import tempfile

    if kind == "sb3":
        result = run_sb3(learning_starts, steps)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_ours(learning_starts, steps, Path(tmp))
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learning-starts", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=4000, help="timed env steps after learning_starts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--worker", choices=["sb3", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.learning_starts, args.steps, args.worker_out)
        return
    results = {"sb3": [], "ours": []}
    for repeat in range(args.repeats):
        order = ["sb3", "ours"] if repeat % 2 == 0 else ["ours", "sb3"]
        for kind in order:
            out = ROOT / f".bench-{kind}.json"
            cmd = [sys.executable, __file__, "--worker", kind, "--worker-out", str(out)]
            cmd += ["--learning-starts", str(args.learning_starts), "--steps", str(args.steps)]
            load = os.getloadavg()[0]
            subprocess.run(cmd, check=True, cwd=ROOT)
            result = json.loads(out.read_text())
            out.unlink()
            result["load_before"] = load
            results[kind].append(result)
            print(kind, json.dumps(result), flush=True)
    sb3 = float(np.median([r["sps"] for r in results["sb3"]]))
    ours = float(np.median([r["sps"] for r in results["ours"]]))
    limit = float(np.median([r["compute_limit_sps"] for r in results["ours"]]))
    summary = {
        "sb3_sps": sb3,
        "ours_sps": ours,
        "speedup": ours / sb3,
        "compute_limit_sps": limit,
        "share_of_limit": ours / limit,
        "bytes_per_transition": {
            "ours": results["ours"][0]["replay_bytes_per_transition"],
            "sb3": results["sb3"][0]["replay_bytes_per_transition"],
        },
        "load_average_1min": os.getloadavg()[0],
        "runs": results,
    }
    print(f"steps/s while learning: SB3 {sb3:.1f}, ours {ours:.1f} ({ours / sb3:.2f}x)")
    print(f"compute limit {limit:.1f} steps/s; ours reaches {100 * ours / limit:.0f} % of it")
    b = summary["bytes_per_transition"]
    print(f"replay bytes per transition: ours {b['ours']:.0f}, SB3 {b['sb3']:.0f} ({b['sb3'] / b['ours']:.1f}x)")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

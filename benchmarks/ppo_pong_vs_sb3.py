"""PPO on Pong (8 envs, Nature CNN, CPU): our env steps/s while learning vs stable-baselines3 PPO, side by side.

Same hyperparameters for both (configs/pong_ppo.yaml, RL-Zoo's Atari PPO: 8 envs x 128-step rollouts, 4 epochs of
256-sample minibatches), same torch thread count (`--threads`), each library with its own Atari preprocessing and
vector envs: ours as the config runs it (ale-py's threaded AtariVectorEnv), SB3 with DummyVecEnv and with
SubprocVecEnv (its two vector envs; the faster one is SB3's best). Timed: whole rollouts + updates after the first
one (which pays the warm-up), as env steps / wall-clock. Every variant runs in a fresh subprocess, one after the
other, the order rotating per repeat, with the 1-minute load average recorded before each.

    .venv/bin/python benchmarks/ppo_pong_vs_sb3.py --steps 8192 --repeats 2 --out docs/ppo_pong_vs_sb3.json

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
ROLLOUT = 8 * 128  # env steps per PPO update (8 envs x 128 steps)
TARGET = 1.5  # ours / SB3's best, at least
VARIANTS = ("ours", "sb3-dummy", "sb3-subproc")


def run_sb3(vec: str, steps: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack

    from rl_lab.envs import check_env_id

    class Clock(BaseCallback):
        """Starts the clock when the first rollout (and its update) is done."""

        start = None

        def _on_rollout_start(self) -> None:
            if self.start is None and self.num_timesteps >= ROLLOUT:
                self.start, self.from_step = time.perf_counter(), self.num_timesteps

        def _on_step(self) -> bool:
            return True

    check_env_id("PongNoFrameskip-v4")  # registers ale-py's envs with gymnasium
    vec_cls, vec_kwargs = (DummyVecEnv, None) if vec == "dummy" else (SubprocVecEnv, {"start_method": "fork"})
    envs = make_atari_env("PongNoFrameskip-v4", n_envs=8, seed=0, vec_env_cls=vec_cls, vec_env_kwargs=vec_kwargs)
    env = VecFrameStack(envs, n_stack=4)  # fork: the workers inherit ale-py's env registration
    model = PPO(
        "CnnPolicy",
        env,
        n_steps=128,
        batch_size=256,
        n_epochs=4,
        learning_rate=2.5e-4,
        clip_range=0.1,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        gae_lambda=0.95,
        gamma=0.99,
        device="cpu",
        seed=0,
    )
    clock = Clock()
    model.learn(total_timesteps=ROLLOUT + steps, callback=clock)
    elapsed = time.perf_counter() - clock.start
    env.close()
    return {"sps": (model.num_timesteps - clock.from_step) / elapsed, "torch_threads": torch.get_num_threads()}


def run_ours(steps: int, threads: int) -> dict:
    import torch

    from rl_lab.loader import build_trainer, load_config

    # torch_threads as asked: the config's `auto` would choose by the machine's load, SB3 gets `threads`
    overrides = ["device=cpu", f"train.total_steps={ROLLOUT + steps}", "logger.wandb.mode=disabled"]
    config = load_config(ROOT / "configs" / "pong_ppo.yaml", [*overrides, f"torch_threads={threads}"])
    trainer = build_trainer(config)
    trainer.agent.update(trainer.collect(), trainer.state.step)  # the first rollout and update: warm-up
    start, from_step = time.perf_counter(), trainer.state.step
    while trainer.state.step < config.train.total_steps:
        trainer.agent.update(trainer.collect(), trainer.state.step)
    elapsed = time.perf_counter() - start
    return {
        "sps": (trainer.state.step - from_step) / elapsed,
        "torch_threads": torch.get_num_threads(),
        "vector_env": type(trainer.envs).__name__,
    }


def worker(kind: str, steps: int, threads: int, out: Path) -> None:
    import torch

    torch.set_num_threads(threads)
    result = run_ours(steps, threads) if kind == "ours" else run_sb3(kind.removeprefix("sb3-"), steps)
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8192, help="timed env steps per variant (after the first rollout)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (all cores)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.threads, args.worker_out)
        return
    command = " ".join([os.path.relpath(sys.executable), *sys.argv])
    results: dict[str, list[dict]] = {kind: [] for kind in VARIANTS}
    for repeat in range(args.repeats):
        for kind in VARIANTS[repeat % 3 :] + VARIANTS[: repeat % 3]:
            out = ROOT / f".bench-{kind}.json"
            cmd = [sys.executable, __file__, "--worker", kind, "--worker-out", str(out)]
            cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
            load = os.getloadavg()[0]
            subprocess.run(cmd, check=True, cwd=ROOT)
            result = {**json.loads(out.read_text()), "load_before": load}
            out.unlink()
            results[kind].append(result)
            print(kind, json.dumps(result), flush=True)
    sps = {kind: float(np.median([r["sps"] for r in runs])) for kind, runs in results.items()}
    best = max(("sb3-dummy", "sb3-subproc"), key=sps.get)
    speedup = sps["ours"] / sps[best]
    summary = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "threads": args.threads,
        "median_sps": sps,
        "sb3_best": best,
        "speedup_over_sb3_best": speedup,
        "target": TARGET,
        "runs": results,
    }
    for kind, value in sps.items():
        print(f"{kind:<12} {value:7.1f} env steps/s (median of {args.repeats})")
    print(
        f"ours / SB3's best ({best}): {speedup:.2f}x  ({'PASS' if speedup >= TARGET else 'FAIL'}, target >= {TARGET})"
    )
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

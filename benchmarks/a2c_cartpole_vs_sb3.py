"""A2C on CartPole-v1: stable-baselines3 (RL-Zoo settings) vs our A2C, with our REINFORCE beside them.

Measured: env steps and wall-clock until the 20-episode greedy mean first reaches 475, the solve rate, and over the
seeds (benchmarks/seed_stats.py, as `rl-lab compare`): IQM of the final return and IQM of the env steps to solve,
with 95 % stratified bootstrap CIs, and the probabilities that ours beats SB3.
  (a) sb3        stable-baselines3 A2C, RL-Zoo CartPole-v1 settings (8 envs, ent_coef 0, the rest SB3's defaults),
                 at most 500k steps, one torch thread like our configs
  (b) a2c        our A2C, configs/cartpole_a2c.yaml (its own step budget)
  (c) reinforce  our REINFORCE with the learned value baseline, configs/cartpole_reinforce.yaml
Every `--eval-every` env steps each trial pauses, evaluates 20 greedy episodes on fresh envs seeded seed + 10000
through rl_lab.rl.evaluation (the same code for both libraries), and stops at the first mean >= 475 (the final return;
a trial that never solves is evaluated once more at its end). Evaluation time is excluded from the wall-clock;
construction is included, imports are not. Trials run one at a time, each in a fresh
subprocess, variants interleaved per seed (their order rotating) so machine load hits all alike.

    .venv/bin/python benchmarks/a2c_cartpole_vs_sb3.py --seeds 0-9 --out docs/a2c_cartpole_vs_sb3.json
    .venv/bin/python benchmarks/a2c_cartpole_vs_sb3.py --quick     # smoke test: seed 0 (or --seeds), 3000 steps at most

stable-baselines3 is imported only here (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seed_stats import SolveWatch, judge, rows_from_trials, seeds_argument
from seed_stats import table as stats_table

ROOT = Path(__file__).resolve().parents[1]
SB3_STEPS = 500_000
TARGET_RATIO = 0.5  # (b) / (a), steps and wall-clock to solve, at most
VARIANTS = {
    "a": ("sb3", "-", "(a) SB3 A2C, RL-Zoo settings"),
    "b": ("ours", "configs/cartpole_a2c.yaml", "(b) ours A2C, cartpole_a2c.yaml"),
    "c": ("ours", "configs/cartpole_reinforce.yaml", "(c) ours REINFORCE, cartpole_reinforce.yaml"),
}


def warm_up_torch() -> None:
    """The first optimizer a process builds imports torch._dynamo (~1.5 s): pay it before the timer, alike for all."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def final_return(watch: SolveWatch, policy, step: int) -> float:
    """The mean return where the trial stopped: its solving evaluation, else one more at its last step."""
    if watch.solved_at is None and (not watch.evals or watch.evals[-1][0] < step):
        watch.check(policy, step)
    return watch.evals[-1][1]


def run_sb3(seed: int, every: int, max_steps: int) -> dict:
    import numpy as np
    import stable_baselines3
    import torch
    from stable_baselines3 import A2C
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    watch = SolveWatch(seed, every)

    def policy(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    class Stop(BaseCallback):
        def _on_step(self) -> bool:
            return not (watch.due(self.num_timesteps) and watch.check(policy, self.num_timesteps))

    torch.set_num_threads(1)  # as our configs run (torch_threads: 1); two threads crawl on a loaded machine
    warm_up_torch()
    start = time.perf_counter()
    model = A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=seed), ent_coef=0.0, seed=seed, device="cpu")
    model.learn(max_steps, callback=Stop())
    wall = time.perf_counter() - start - watch.eval_s
    return {
        "env_steps": int(model.num_timesteps),
        "wall_s": wall,
        "final_return": final_return(watch, policy, int(model.num_timesteps)),
        "solved_at": watch.solved_at,
        "evals": watch.evals,
        "torch_threads": torch.get_num_threads(),
        "sb3_version": stable_baselines3.__version__,
    }


def run_ours(config: str, seed: int, every: int, max_steps: int | None) -> dict:
    """The loop of rl_lab.rl.onpolicy (collect a rollout, update), without its logging and checkpoints."""
    import torch

    from rl_lab.loader import build_trainer, load_config

    warm_up_torch()
    start = time.perf_counter()
    overrides = [f"seed={seed}", "device=cpu", "logger.wandb.mode=disabled"]
    if max_steps is not None:
        overrides.append(f"train.total_steps={max_steps}")
    cfg = load_config(ROOT / config, overrides)
    trainer = build_trainer(cfg)
    watch = SolveWatch(seed, every)
    while trainer.state.step < cfg.train.total_steps:
        trainer.agent.update(trainer.collect(), trainer.state.step)
        if watch.due(trainer.state.step) and watch.check(trainer.agent.greedy, trainer.state.step):
            break
    wall = time.perf_counter() - start - watch.eval_s
    return {
        "env_steps": trainer.state.step,
        "wall_s": wall,
        "final_return": final_return(watch, trainer.agent.greedy, trainer.state.step),
        "solved_at": watch.solved_at,
        "evals": watch.evals,
        "torch_threads": torch.get_num_threads(),
        "budget": cfg.train.total_steps,
    }


def worker(argv: list[str]) -> None:
    key, seed, every, quick, out = argv
    kind, config, _ = VARIANTS[key]
    max_steps = 3000 if quick == "1" else None
    if kind == "sb3":
        result = run_sb3(int(seed), int(every), max_steps or SB3_STEPS)
    else:
        result = run_ours(config, int(seed), int(every), max_steps)
    Path(out).write_text(json.dumps(result) + "\n")


def run_trial(key: str, seed: int, every: int, quick: bool, workdir: Path) -> dict:
    out = workdir / f"{key}-s{seed}.json"
    cmd = [sys.executable, __file__, "--worker", key, str(seed), str(every), "1" if quick else "0", str(out)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr)[-2000:]
        print(f"  FAILED {key} seed {seed}:\n{tail}", file=sys.stderr)
        return {"variant": key, "seed": seed, "error": tail}
    return {"variant": key, "seed": seed, **json.loads(out.read_text()), "loadavg_1min_before": load}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(trials: list[dict], seeds: list[int]) -> dict:
    table = {}
    for key, (_, config, label) in VARIANTS.items():
        ok = [t for t in trials if t["variant"] == key and "error" not in t]
        solved = [t for t in ok if t["solved_at"] is not None]
        table[key] = {
            "label": label,
            "config": config,
            "solved": len(solved),
            "trials": len(seeds),
            "median_steps_to_solve": median([t["solved_at"] for t in solved]),
            "median_wall_to_solve_s": median([t["wall_s"] for t in solved]),
            "per_seed": {t["seed"]: (t["solved_at"], round(t["wall_s"], 1)) for t in ok},
        }
    return table


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", help="seeds: 0-9, 0 1 2 or 0-4,9 (default 0-9; with --quick: 0)")
    parser.add_argument("--eval-every", type=int, default=5000, help="env steps between solve checks")
    parser.add_argument("--quick", action="store_true", help="smoke test: seed 0, at most 3000 steps per trial")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    seeds = seeds_argument(args.seeds) if args.seeds else [0] if args.quick else list(range(10))
    every = 1000 if args.quick else args.eval_every
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    print(f"command: {command}\nload average at start: {os.getloadavg()[0]:.2f}", flush=True)
    trials = []
    keys = list(VARIANTS)
    with tempfile.TemporaryDirectory(prefix="a2c_vs_sb3-") as tmp:
        for i, seed in enumerate(seeds):
            for key in keys[i % 3 :] + keys[: i % 3]:
                trial = run_trial(key, seed, every, args.quick, Path(tmp))
                trials.append(trial)
                if "error" not in trial:
                    print(
                        f"  seed {seed} {VARIANTS[key][2]:<46} solved at {trial['solved_at']}  "
                        f"{trial['wall_s']:7.1f} s  ({trial['env_steps']} steps, return {trial['final_return']:.1f})",
                        flush=True,
                    )
    table = summarize(trials, seeds)
    ratios = {}
    for name, field in (("steps", "median_steps_to_solve"), ("wall", "median_wall_to_solve_s")):
        a, b = table["a"][field], table["b"][field]
        ratios[name] = None if a is None or b is None else b / a
    print(f"\n{'variant':<46} {'solved':>6} {'median steps':>13} {'median wall s':>14}")
    for row in table.values():
        steps = "-" if row["median_steps_to_solve"] is None else f"{row['median_steps_to_solve']:.0f}"
        wall = "-" if row["median_wall_to_solve_s"] is None else f"{row['median_wall_to_solve_s']:.1f}"
        print(f"{row['label']:<46} {row['solved']:>3}/{row['trials']:<2} {steps:>13} {wall:>14}")
    for name, value in ratios.items():
        verdict = "n/a" if value is None else f"{value:.3f} ({'PASS' if value <= TARGET_RATIO else 'FAIL'})"
        print(f"(b)/(a) median {name} to solve: {verdict}   target <= {TARGET_RATIO}")
    judged = judge(rows_from_trials(trials, {key: label for key, (_, _, label) in VARIANTS.items()}), "a")
    print("\n" + stats_table(judged, "(a)"))
    if args.out:
        result = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seeds": seeds, "eval_every": every}
        result.update({"variants": table, "ratios": ratios, "statistics": judged, "trials": trials})
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {args.out}")
    return 1 if any("error" in t for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())

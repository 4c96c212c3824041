"""A2C and PPO on CartPole-v1: stable-baselines3 (RL-Zoo settings) vs ours, side by side (`--algo a2c|ppo`).

Measured: env steps and wall-clock until the 20-episode greedy mean first reaches 475, the solve rate, and over the
seeds (benchmarks/seed_stats.py, as `rl-lab compare`): IQM of the final return and IQM of the env steps to solve,
with 95 % stratified bootstrap CIs, and the probabilities that ours beats SB3.
  --algo a2c  (a) SB3 A2C, RL-Zoo CartPole-v1 settings (8 envs, ent_coef 0, the rest SB3's defaults), at most 500k
                  steps; (b) configs/cartpole_a2c.yaml; (c) configs/cartpole_a2c_sb3.yaml (SB3's A2C settings in our
                  A2C); (d) our REINFORCE, configs/cartpole_reinforce.yaml
  --algo ppo  (a) SB3 PPO, RL-Zoo CartPole-v1 settings (8 envs x 32 steps, 20 epochs of 256, GAE 0.8, gamma 0.98,
                  lr and clip range 1e-3 / 0.2 decayed linearly over the zoo's 100k steps);
                  (b) configs/cartpole_ppo.yaml
Every `--eval-every` env steps each trial pauses, evaluates 20 greedy episodes on fresh envs seeded seed + 10000
through rl_lab.rl.evaluation (the same code for both libraries), and stops at the first mean >= 475 (the final return;
a trial that never solves is evaluated once more at its end). Evaluation time is excluded from the wall-clock;
construction is included, imports are not. One torch thread for every trial. Trials run one at a time, each in a
fresh subprocess, variants interleaved per seed (their order rotating) so machine load hits all alike.

    .venv/bin/python benchmarks/onpolicy_cartpole_vs_sb3.py --algo a2c --seeds 0-9 --out docs/a2c_cartpole_vs_sb3.json
    .venv/bin/python benchmarks/onpolicy_cartpole_vs_sb3.py --algo ppo --seeds 0-9 --out docs/ppo_cartpole_vs_sb3.json
    .venv/bin/python benchmarks/onpolicy_cartpole_vs_sb3.py --algo ppo --quick   # smoke test: seed 0, 3000 steps

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
TARGET_RATIO = 0.5  # (b) / (a), steps and wall-clock to solve, at most
# per algorithm: SB3's class, its RL-Zoo CartPole-v1 kwargs and step budget (lr/clip schedules span the budget),
# and the variants: key -> (library, config, label)
ALGOS = {
    "a2c": {
        "sb3": ("A2C", {"ent_coef": 0.0}, 500_000),
        "variants": {
            "a": ("sb3", "-", "(a) SB3 A2C, RL-Zoo settings"),
            "b": ("ours", "configs/cartpole_a2c.yaml", "(b) ours A2C, cartpole_a2c.yaml"),
            "c": ("ours", "configs/cartpole_a2c_sb3.yaml", "(c) ours A2C, cartpole_a2c_sb3.yaml"),
            "d": ("ours", "configs/cartpole_reinforce.yaml", "(d) ours REINFORCE, cartpole_reinforce.yaml"),
        },
    },
    "ppo": {
        "sb3": (
            "PPO",
            {"n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20, "ent_coef": 0.0},
            100_000,
        ),
        "variants": {
            "a": ("sb3", "-", "(a) SB3 PPO, RL-Zoo settings"),
            "b": ("ours", "configs/cartpole_ppo.yaml", "(b) ours PPO, cartpole_ppo.yaml"),
        },
    },
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


def run_sb3(algo: str, seed: int, every: int, max_steps: int | None) -> dict:
    import numpy as np
    import stable_baselines3
    import torch
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
    name, kwargs, budget = ALGOS[algo]["sb3"]
    if algo == "ppo":  # RL-Zoo's lin_1e-3 / lin_0.2: decayed by SB3's progress over the zoo's budget
        kwargs = {**kwargs, "learning_rate": lambda left: 1e-3 * left, "clip_range": lambda left: 0.2 * left}
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = getattr(stable_baselines3, name)("MlpPolicy", env, seed=seed, device="cpu", **kwargs)
    model.learn(max_steps or budget, callback=Stop())
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
    algo, key, seed, every, quick, out = argv
    kind, config, _ = ALGOS[algo]["variants"][key]
    max_steps = 3000 if quick == "1" else None
    if kind == "sb3":
        result = run_sb3(algo, int(seed), int(every), max_steps)
    else:
        result = run_ours(config, int(seed), int(every), max_steps)
    Path(out).write_text(json.dumps(result) + "\n")


def run_trial(algo: str, key: str, seed: int, every: int, quick: bool, workdir: Path) -> dict:
    out = workdir / f"{key}-s{seed}.json"
    cmd = [sys.executable, __file__, "--worker", algo, key, str(seed), str(every), "1" if quick else "0", str(out)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr)[-2000:]
        print(f"  FAILED {key} seed {seed}:\n{tail}", file=sys.stderr)
        return {"variant": key, "seed": seed, "error": tail}
    return {"variant": key, "seed": seed, **json.loads(out.read_text()), "loadavg_1min_before": load}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(trials: list[dict], seeds: list[int], variants: dict) -> dict:
    table = {}
    for key, (_, config, label) in variants.items():
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
    parser.add_argument("--algo", choices=sorted(ALGOS), default="a2c", help="which on-policy method (a2c)")
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
    variants = ALGOS[args.algo]["variants"]
    keys = list(variants)
    with tempfile.TemporaryDirectory(prefix=f"{args.algo}_vs_sb3-") as tmp:
        for i, seed in enumerate(seeds):
            turn = i % len(keys)
            for key in keys[turn:] + keys[:turn]:
                trial = run_trial(args.algo, key, seed, every, args.quick, Path(tmp))
                trials.append(trial)
                if "error" not in trial:
                    print(
                        f"  seed {seed} {variants[key][2]:<46} solved at {trial['solved_at']}  "
                        f"{trial['wall_s']:7.1f} s  ({trial['env_steps']} steps, return {trial['final_return']:.1f})",
                        flush=True,
                    )
    table = summarize(trials, seeds, variants)
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
    judged = judge(rows_from_trials(trials, {key: label for key, (_, _, label) in variants.items()}), "a")
    print("\n" + stats_table(judged, "(a)"))
    if args.out:
        result = {
            "algo": args.algo,
            "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seeds": seeds,
            "eval_every": every,
        }
        result.update({"variants": table, "ratios": ratios, "statistics": judged, "trials": trials})
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {args.out}")
    return 1 if any("error" in t for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())

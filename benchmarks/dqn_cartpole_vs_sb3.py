"""DQN on CartPole-v1: stable-baselines3 (RL-Zoo settings) vs our DQN, side by side in one run.

Variants, interleaved per seed (their order rotates from seed to seed) so that machine load hits all alike:
  (a) sb3   stable-baselines3 DQN with the RL-Zoo CartPole-v1 hyperparameters, torch's default threads
  (b) zoo   our DQN with configs/cartpole_dqn_sb3zoo.yaml (the same hyperparameters)
  (c) ours  our DQN with our default configs/cartpole_dqn.yaml

Every trial runs in a fresh subprocess of this script (`--worker`). Timed with time.perf_counter: construction +
training (imports and the final evaluation excluded). Final score: 20 greedy episodes on fresh envs seeded
seed + 10000, through rl_lab.rl.evaluation for both libraries. Solved: mean return >= 475. Every `--eval-every` env
steps (our configs' eval.every, 10000) both libraries evaluate the same way during training (inside the timed span,
for both), which gives the env steps to solve. Over the seeds (benchmarks/seed_stats.py, as `rl-lab compare`):
IQM of the final return and of the env steps to solve, with 95 % stratified bootstrap CIs, and P(ours beats SB3).

    .venv/bin/python benchmarks/dqn_cartpole_vs_sb3.py --seeds 0-9 --out docs/dqn_cartpole_vs_sb3.json
    .venv/bin/python benchmarks/dqn_cartpole_vs_sb3.py --quick          # smoke test: 3000 steps, seed 0 (or --seeds)

stable-baselines3 is imported only here (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from seed_stats import EVAL_EPISODES, EVAL_SEED_OFFSET, SOLVED, SolveWatch, judge, rows_from_trials, seeds_argument
from seed_stats import table as stats_table

ROOT = Path(__file__).resolve().parents[1]
STEPS = 50_000
QUICK_STEPS = 3_000
EVAL_EVERY = 10_000  # our configs' eval.every
LOAD_WARNING = 0.5  # 1-minute load average above which the timings are flagged as unreliable
TARGET_WALL_RATIO = 0.33  # (c) wall-clock / (a) wall-clock, at most
TARGET_SPS_RATIO = 3.0  # (b) steps/s / (a) steps/s, at least


@dataclass(frozen=True)
class Variant:
    key: str
    kind: str  # "sb3" or "ours"
    config: str  # our config file; "-" for SB3
    label: str


VARIANTS = (
    Variant("a", "sb3", "-", "(a) SB3 DQN, RL-Zoo settings"),
    Variant("b", "ours", "configs/cartpole_dqn_sb3zoo.yaml", "(b) ours, cartpole_dqn_sb3zoo.yaml"),
    Variant("c", "ours", "configs/cartpole_dqn.yaml", "(c) ours, cartpole_dqn.yaml"),
)


# --------------------------------------------------------------------------- worker (one trial per process)


def warm_up_torch() -> None:
    """Pay torch's lazy imports outside the timed span, alike for both libraries.

    The first optimizer a process builds imports torch._dynamo (about 1.5 s on a 2-core machine).
    """
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def run_sb3(seed: int, steps: int | None, device: str, every: int) -> dict:
    import numpy as np
    import stable_baselines3
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    from rl_lab.rl.evaluation import eval_stats, evaluate

    watch = SolveWatch(seed, every)

    def policy(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    class Watch(BaseCallback):  # evaluations during training, timed as our loop's are
        def _on_step(self) -> bool:
            if watch.due(self.num_timesteps):
                watch.check(policy, self.num_timesteps)
            return True

    warm_up_torch()
    start = time.perf_counter()
    model = DQN(
        "MlpPolicy",
        "CartPole-v1",
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=100_000,
        learning_starts=1000,
        gamma=0.99,
        target_update_interval=10,
        train_freq=256,
        gradient_steps=128,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        policy_kwargs=dict(net_arch=[256, 256]),
        seed=seed,
        device=device,
        verbose=0,
    )
    constructed = time.perf_counter()
    model.learn(steps or STEPS, callback=Watch())
    wall = time.perf_counter() - start

    final = eval_stats(evaluate(policy, "CartPole-v1", EVAL_EPISODES, seed + EVAL_SEED_OFFSET))
    solved_at = watch.solved_at
    if solved_at is None and final["return_mean"] >= SOLVED:
        solved_at = int(model.num_timesteps)
    return {
        "wall_s": wall,
        "construct_s": constructed - start,
        "env_steps": int(model.num_timesteps),
        "return_mean": final["return_mean"],
        "solved_at": solved_at,
        "evals": watch.evals,
        "return_std": final["return_std"],
        "eval_episodes": final["episodes"],
        "torch_threads": torch.get_num_threads(),
        "sb3_version": stable_baselines3.__version__,
    }


def run_ours(config: str, seed: int, steps: int | None, device: str, run_dir: Path, every: int) -> dict:
    import torch

    import rl_lab.rl.offpolicy
    from rl_lab.runs import train_new

    # The timed span ends where the training loop ends, before the final evaluation: construction is the time up to
    # the start of OffPolicyTrainer.run, the loop is its own `wall_time_s` (perf_counter, final eval excluded).
    loop_started: list[float] = []
    run = rl_lab.rl.offpolicy.OffPolicyTrainer.run

    def timed_run(self, *args, **kwargs):
        loop_started.append(time.perf_counter())
        return run(self, *args, **kwargs)

    rl_lab.rl.offpolicy.OffPolicyTrainer.run = timed_run
    warm_up_torch()
    overrides = [
        f"seed={seed}",
        f"device={device}",
        f"run.dir={run_dir}",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
        f"eval.every={every}",
    ]
    if steps is not None:  # otherwise the config's own train.total_steps
        overrides.append(f"train.total_steps={steps}")
    start = time.perf_counter()
    train_new(ROOT / config, overrides)
    end_to_end = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final_eval"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [[r["step"], round(r["eval/return_mean"], 1)] for r in rows if "eval/return_mean" in r]
    return {
        "solved_at": next((step for step, mean in evals if mean >= SOLVED), None),
        "evals": evals,
        "wall_s": loop_started[0] - start + summary["wall_time_s"],
        "construct_s": loop_started[0] - start,
        "env_steps": int(summary["env_steps"]),
        "return_mean": final["return_mean"],
        "return_std": final["return_std"],
        "eval_episodes": final["episodes"],
        "torch_threads": torch.get_num_threads(),
        "loop_s": summary["wall_time_s"],
        "end_to_end_s": end_to_end,  # + final eval, final checkpoint, summary and learning-curve plot
    }


def worker(argv: list[str]) -> None:
    kind, config, seed, steps_arg, device, every, out = argv
    steps = None if steps_arg == "default" else int(steps_arg)
    out_path = Path(out)
    if kind == "sb3":
        result = run_sb3(int(seed), steps, device, int(every))
    else:
        result = run_ours(config, int(seed), steps, device, out_path.with_suffix(".run"), int(every))
    result["final_return"] = result["return_mean"]
    result["sps"] = result["env_steps"] / result["wall_s"]
    out_path.write_text(json.dumps(result, indent=2) + "\n")


# --------------------------------------------------------------------------- driver


def machine_info() -> dict:
    import gymnasium
    import numpy
    import stable_baselines3
    import torch

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "stable_baselines3": stable_baselines3.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "loadavg_1min_at_start": os.getloadavg()[0],
    }


def run_trial(variant: Variant, seed: int, steps: int | None, device: str, every: int, workdir: Path) -> dict:
    out = workdir / f"{variant.key}-s{seed}.json"
    steps_arg = "default" if steps is None else str(steps)
    cmd = [sys.executable, __file__, "--worker", variant.kind, variant.config, str(seed), steps_arg, device]
    cmd += [str(every), str(out)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    process_s = time.perf_counter() - start
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr)[-3000:]
        print(f"  FAILED {variant.label} seed {seed} (exit {proc.returncode}):\n{tail}", file=sys.stderr)
        return {"variant": variant.key, "seed": seed, "error": f"exit {proc.returncode}", "output_tail": tail}
    result = json.loads(out.read_text())
    return {"variant": variant.key, "seed": seed, **result, "process_s": process_s, "loadavg_1min_before": load}


def summarize(trials: list[dict], seeds: list[int]) -> dict[str, dict]:
    table = {}
    for v in VARIANTS:
        ok = [t for t in trials if t["variant"] == v.key and "error" not in t]
        table[v.key] = {
            "label": v.label,
            "config": v.config,
            "solved": sum(t["return_mean"] >= SOLVED for t in ok),
            "trials": len(seeds),
            "median_wall_s": statistics.median(t["wall_s"] for t in ok) if ok else None,
            "median_sps": statistics.median(t["sps"] for t in ok) if ok else None,
            "env_steps": sorted({t["env_steps"] for t in ok}),
            "returns": {t["seed"]: round(t["return_mean"], 1) for t in ok},
            "torch_threads": sorted({t["torch_threads"] for t in ok}),
        }
    return table


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def report(table: dict[str, dict], ratios: dict[str, dict], machine: dict, command: str, steps: int | None) -> str:
    lines = [
        f"command: {command}",
        f"machine: {machine['nproc']} CPUs ({machine['cpu']}), torch {machine['torch']} "
        f"(default threads {machine['torch_default_threads']}), stable-baselines3 {machine['stable_baselines3']}, "
        f"gymnasium {machine['gymnasium']}, python {machine['python']}, "
        f"load average at start {machine['loadavg_1min_at_start']:.2f}",
        f"CartPole-v1, final eval {EVAL_EPISODES} greedy episodes on seed + {EVAL_SEED_OFFSET}, solved = mean >= "
        f"{SOLVED:g}",
        "",
        f"{'variant':<38} {'solved':>6} {'steps':>7} {'wall s':>8} {'steps/s':>8} {'threads':>7}  returns per seed",
    ]
    for row in table.values():
        wall = f"{row['median_wall_s']:.1f}" if row["median_wall_s"] is not None else "-"
        sps = f"{row['median_sps']:.0f}" if row["median_sps"] is not None else "-"
        threads = ",".join(map(str, row["torch_threads"])) or "-"
        returns = "  ".join(f"s{seed}:{value:g}" for seed, value in row["returns"].items())
        solved = f"{row['solved']}/{row['trials']}"
        env_steps = ",".join(map(str, row["env_steps"])) or "-"
        lines.append(f"{row['label']:<38} {solved:>6} {env_steps:>7} {wall:>8} {sps:>8} {threads:>7}  {returns}")
    lines.append("(wall s and steps/s are medians over seeds; wall s = construction + training)")
    lines.append("")
    for r in ratios.values():
        value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        verdict = "" if r["value"] is None else ("  PASS" if r["passed"] else "  FAIL")
        lines.append(f"{r['name']:<44} {value:>7}   target {r['target']}{verdict}")
    if steps is not None and steps != STEPS:
        lines.append(f"({steps} steps, not {STEPS}: a smoke test; these figures say nothing about the targets)")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", help="seeds: 0-9, 0 1 2 or 0-4,9 (default 0-9; with --quick: 0)")
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK_STEPS} steps per trial, seed 0")
    parser.add_argument(
        "--steps", type=int, help=f"env steps per trial (default: {STEPS} for SB3, each config's own for ours)"
    )
    parser.add_argument("--device", default="cpu", help="torch device for every variant (default cpu)")
    parser.add_argument(
        "--eval-every", type=int, help=f"env steps between evaluations (default {EVAL_EVERY}; with --quick: 1000)"
    )
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    seeds = seeds_argument(args.seeds) if args.seeds else [0] if args.quick else list(range(10))
    every = args.eval_every or (1000 if args.quick else EVAL_EVERY)
    steps = args.steps or (QUICK_STEPS if args.quick else None)
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    command = shlex.join([python, *sys.argv])

    machine = machine_info()
    print(f"command: {command}", flush=True)
    if machine["loadavg_1min_at_start"] > LOAD_WARNING:
        print(
            f"warning: load average {machine['loadavg_1min_at_start']:.2f} at start; other processes distort the "
            "timings (SB3's multi-threaded torch most of all); report timings from an idle machine",
            flush=True,
        )
    trials: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dqn_vs_sb3-") as tmp:
        for i, seed in enumerate(seeds):
            order = VARIANTS[i % len(VARIANTS) :] + VARIANTS[: i % len(VARIANTS)]
            for variant in order:
                trial = run_trial(variant, seed, steps, args.device, every, Path(tmp))
                trials.append(trial)
                if "error" not in trial:
                    print(
                        f"  seed {seed} {variant.label:<38} return {trial['return_mean']:6.1f}  "
                        f"{trial['wall_s']:6.1f} s  {trial['sps']:6.0f} steps/s",
                        flush=True,
                    )

    table = summarize(trials, seeds)
    wall_ratio = ratio(table["c"]["median_wall_s"], table["a"]["median_wall_s"])
    sps_ratio = ratio(table["b"]["median_sps"], table["a"]["median_sps"])
    ratios = {
        "wall_c_over_a": {
            "name": "(c) wall-clock / (a) wall-clock",
            "value": wall_ratio,
            "target": f"<= {TARGET_WALL_RATIO}",
            "passed": wall_ratio is not None and wall_ratio <= TARGET_WALL_RATIO,
        },
        "sps_b_over_a": {
            "name": "(b) steps/s / (a) steps/s",
            "value": sps_ratio,
            "target": f">= {TARGET_SPS_RATIO:g}",
            "passed": sps_ratio is not None and sps_ratio >= TARGET_SPS_RATIO,
        },
    }
    judged = judge(rows_from_trials(trials, {v.key: v.label for v in VARIANTS}), "a")
    print()
    print(report(table, ratios, machine, command, steps))
    print("\n" + stats_table(judged, "(a)"))
    if args.out:
        results = {
            "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": machine,
            "steps": steps,
            "seeds": seeds,
            "device": args.device,
            "variants": table,
            "ratios": ratios,
            "statistics": judged,
            "eval_every": every,
            "trials": trials,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.out}")
    return 1 if any("error" in t for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())

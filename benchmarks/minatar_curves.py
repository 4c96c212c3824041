"""MinAtar learning curves: DQN and Rainbow-lite on Breakout and Space Invaders over 1M env steps, against
uniformly random play (issue 13, docs/ATARI.md).

    python benchmarks/minatar_curves.py --out runs/minatar                      # train (or resume) all four, draw
    python benchmarks/minatar_curves.py --out runs/minatar --only breakout_dqn --steps 200000
    python benchmarks/minatar_curves.py --out runs/minatar --plot-only --png docs/minatar_curves.png

Each run is the lab's own CLI on one torch thread with W&B off, in OUT/NAME, one at a time: a run stopped part way
is resumed from its last checkpoint by the same command (the MinAtar envs snapshot, so it continues exactly), a
finished one is skipped. Random play: 100 episodes of uniformly random actions per game, env seeds 10000-10099.
The figure shows each run's greedy evaluations (20 episodes every 50k steps) against env steps, one panel per game,
random play dashed; the JSON beside it holds every evaluation, the random means and the commands. A run whose
directory is gone (another session made it) keeps the curve that JSON recorded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from rl_lab.envs import make_env
from rl_lab.figures import pyplot, save_figure

REPO = Path(__file__).resolve().parents[1]
GAMES = {"breakout": "MinAtar/Breakout-v1", "spaceinvaders": "MinAtar/SpaceInvaders-v1"}
# the DQN configs are the CI's 40k-step ones: over 1M steps they get the MinAtar paper's 100k replay
LONG_DQN = ["train.total_steps=1000000", "agent.buffer_size=100000", "eval.every=50000", "run.checkpoint_every=50000"]
RUNS = {
    f"{game}_{agent}": (f"minatar_{game}_{agent}.yaml", LONG_DQN if agent == "dqn" else [])
    for game in GAMES
    for agent in ("dqn", "rainbow_lite")
}
QUIET = ["torch_threads=1", "device=cpu", "logger.wandb.mode=disabled", "logger.log_every=10000"]


def train(name: str, out: Path, steps: int | None, seed: int) -> list[str]:
    """Train (or resume) one run; returns the command it ran (empty when the run had already finished)."""
    run_dir = out / name
    if (run_dir / "summary.json").is_file():
        return []
    if (run_dir / "config.yaml").is_file():
        command = ["rl-lab", "train", "--resume", str(run_dir)]
    else:
        config, extra = RUNS[name]
        budget = [f"train.total_steps={steps}"] if steps else []
        overrides = [*extra, *budget, *QUIET, f"seed={seed}", f"run.dir={run_dir}"]
        command = ["rl-lab", "train", str(REPO / "configs" / config), *overrides]
    print(f"== {name}: {' '.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", "rl_lab", *command[1:]], check=True, cwd=REPO)
    return command


def random_play(env_id: str, episodes: int = 100) -> dict:
    """Mean and std of the return of uniformly random actions over `episodes` episodes."""
    env, returns = make_env(env_id), []
    rng = np.random.default_rng(0)
    for episode in range(episodes):
        env.reset(seed=10_000 + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return {"episodes": episodes, "mean": float(np.mean(returns)), "std": float(np.std(returns))}


def evaluations(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [
        {"step": r["step"], "mean": r["eval/return_mean"], "std": r["eval/return_std"]}
        for r in rows
        if "eval/return_mean" in r
    ]


def finished_runs(out: Path) -> dict:
    """Final evaluation, wall clock and env steps/s of each finished run (from its summary.json)."""
    summaries = {}
    for name in RUNS:
        if (out / name / "summary.json").is_file():
            summary = json.loads((out / name / "summary.json").read_text())
            final = summary["final_eval"]
            summaries[name] = {
                "final_mean": final["return_mean"],
                "final_std": final["return_std"],
                "final_episodes": final["episodes"],
                "wall_time_s": round(summary["wall_time_s"], 1),
                "sps": round(summary["sps"], 1),
            }
    return summaries


def game_curves(game: str, out: Path, recorded: dict) -> dict:
    """The evaluations of one game's runs: from the run directory where it exists, else as recorded earlier."""
    curves = {}
    for name in (name for name in RUNS if name.startswith(game)):
        if (out / name / "metrics.jsonl").is_file():
            curves[name] = evaluations(out / name)
        elif name in recorded:
            curves[name] = recorded[name]
    return curves


def draw(out: Path, random: dict, png: Path, recorded: dict) -> dict:
    """One panel per game; a run's curve comes from its run directory, else from `recorded` (the JSON an earlier
    invocation wrote: the runs take hours each and their directories need not outlive a session)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(GAMES), figsize=(6 * len(GAMES), 4), dpi=120, squeeze=False)
    curves = {}
    for ax, (game, env_id) in zip(axes[0], GAMES.items(), strict=True):
        for name, evals in game_curves(game, out, recorded).items():
            curves[name] = evals
            steps = np.array([e["step"] for e in evals])
            means = np.array([e["mean"] for e in evals])
            stds = np.array([e["std"] for e in evals])
            agent = name.split("_", 1)[1]
            color = "tab:blue" if agent == "dqn" else "tab:orange"
            ax.plot(steps, means, "o-", ms=3, color=color, label=agent.replace("_", "-"))
            ax.fill_between(steps, means - stds, means + stds, color=color, alpha=0.15)
        ax.axhline(random[game]["mean"], color="grey", ls="--", label=f"random play ({random[game]['mean']:.2f})")
        ax.set_title(env_id)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("greedy evaluation return (mean ± std, 20 episodes)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, png)
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory of the runs (resumed when there)")
    parser.add_argument("--only", nargs="+", choices=sorted(RUNS), help="train only these runs")
    parser.add_argument("--steps", type=int, help="env steps per run (default: 1M)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-only", action="store_true", help="draw what the runs have logged, train nothing")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "minatar_curves.png")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    commands = {}
    if not args.plot_only:
        for name in args.only or RUNS:
            commands[name] = train(name, args.out, args.steps, args.seed)
    random = {game: random_play(env_id) for game, env_id in GAMES.items()}
    earlier = json.loads(args.png.with_suffix(".json").read_text()) if args.png.with_suffix(".json").is_file() else {}
    curves = draw(args.out, random, args.png, earlier.get("evaluations", {}))
    for name, evals in curves.items():
        best = max(evals, key=lambda e: e["mean"])
        print(f"{name:28s} last {evals[-1]['mean']:7.2f} at {evals[-1]['step']:>9,}  best {best['mean']:.2f}")
    for game, r in random.items():
        print(f"random play {game:16s} {r['mean']:.2f} ± {r['std']:.2f} ({r['episodes']} episodes)")
    commands = {**earlier.get("commands", {}), **{name: c for name, c in commands.items() if c}}
    summaries = {**earlier.get("summaries", {}), **finished_runs(args.out)}
    record = {"random_play": random, "evaluations": curves, "summaries": summaries, "commands": commands}
    record["seed"] = args.seed
    args.png.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

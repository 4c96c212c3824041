"""The classic-control suite's table (docs/CLASSIC_CONTROL.md): each config trained over seeds with the lab's own
experiment command, one run at a time on one torch thread, and judged by `rl-lab compare` (IQM of the final
evaluation returns with a 95 % stratified bootstrap CI, Agarwal et al. 2021).

    python benchmarks/classic_control.py --out runs/suite                      # every config, its default seeds
    python benchmarks/classic_control.py --out runs/suite --seeds 0-2 --only acrobot_dqn pendulum_ppo

For each config NAME it runs, from the repository root,

    rl-lab train configs/NAME.yaml --seeds S torch_threads=1 logger.wandb.mode=disabled run.dir=OUT/NAME
    rl-lab compare OUT/NAME --out OUT/NAME/compare

(a second call resumes unfinished seeds and skips finished ones), then writes OUT/classic_control.md and .json.
`run(seeds, out_dir)` does the same from Python (benchmarks/reproduce.py calls it) and returns the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from seed_stats import seeds_argument  # noqa: E402

from rl_lab.comparison import reward_threshold  # noqa: E402
from rl_lab.experiments import format_seeds  # noqa: E402

CHEAP, FULL = [0, 1, 2, 3, 4], [0, 1, 2]
# config name -> the seeds it is measured over by default (5 where a seed takes a few minutes, else 3)
SUITE: dict[str, list[int]] = {
    "acrobot_dqn": FULL,
    "mountaincar_dqn": FULL,
    "lunarlander_dqn": FULL,
    "acrobot_a2c": FULL,
    "pendulum_a2c": FULL,
    "acrobot_ppo": FULL,
    "pendulum_ppo": CHEAP,
    "lunarlander_ppo": FULL,
}


def _rl_lab(*args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rl_lab.cli", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


def measure(name: str, seeds: list[int], out_dir: Path, budget: float = 1.0) -> dict:
    """Train configs/NAME.yaml over `seeds` into OUT/NAME (resuming what is there), compare, and summarise;
    `budget` scales train.total_steps (a quick check of the pipeline, not of the configs)."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    steps = max(1, round(budget * config["train"]["total_steps"]))
    exp_dir = out_dir / name
    train = _rl_lab(
        "train",
        f"configs/{name}.yaml",
        "--seeds",
        format_seeds(seeds),
        "torch_threads=1",
        "logger.wandb.mode=disabled",
        f"run.dir={exp_dir}",
        *([f"train.total_steps={steps}"] if budget != 1 else []),
    )
    row = {
        "config": f"configs/{name}.yaml",
        "agent": config["agent"]["name"],
        "env": config["env"]["id"],
        "budget": steps,
        "seeds": seeds,
        "train_exit": train.returncode,
    }
    summaries = [exp_dir / f"seed-{s}" / "summary.json" for s in seeds]
    summaries = [json.loads(p.read_text()) for p in summaries if p.is_file()]
    row["seeds_finished"] = len(summaries)
    if not summaries:
        row["error"] = (train.stderr or train.stdout).strip().splitlines()[-1:] or ["no run finished"]
        return row
    compare = _rl_lab("compare", exp_dir, "--out", exp_dir / "compare")
    if compare.returncode != 0:
        row["error"] = compare.stderr.strip().splitlines()[-1:]
        return row
    (entry,) = json.loads((exp_dir / "compare" / "compare.json").read_text())["entries"]
    scores = [v for task in entry["scores"].values() for v in task]
    threshold = reward_threshold(row["env"])
    wall = [s["wall_time_s"] for s in summaries]
    row.update(
        {
            "returns": scores,
            "iqm": entry["iqm"],
            "mean": entry["mean"],
            "threshold": threshold,
            "solved": None if threshold is None else sum(v >= threshold for v in scores),
            "wall_time_s": {"mean": sum(wall) / len(wall), "total": sum(wall)},
            "sps": sum(s["sps"] for s in summaries) / len(summaries),
        }
    )
    return row


def markdown(rows: dict[str, dict], machine: str) -> str:
    """The docs' table: one line per config."""
    lines = [
        "| config | budget (env steps) | seeds | IQM final return [95 % CI] | mean | solved | wall time / seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        config = f"`{row['config']}`"
        seeds = f"{row['seeds_finished']} ({format_seeds(row['seeds'])})"
        if "iqm" not in row:
            lines.append(f"| {config} | {row['budget']:,} | {seeds} | not measured: {row.get('error')} | | | |")
            continue
        iqm = row["iqm"]
        solved = "no threshold" if row["solved"] is None else f"{row['solved']}/{len(row['returns'])}"
        lines.append(
            f"| {config} | {row['budget']:,} | {seeds} | {iqm['point']:.1f} [{iqm['low']:.1f}, {iqm['high']:.1f}] | "
            f"{row['mean']['point']:.1f} | {solved} | {row['wall_time_s']['mean']:.0f} s |"
        )
    lines += ["", f"Machine: {machine}."]
    return "\n".join(lines) + "\n"


def machine() -> str:
    """The cores and how busy they were (the load average over the last 15 minutes)."""
    load = os.getloadavg()[2] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores, 15-minute load average {load:.1f} at the end"


def run(seeds: list[int] | None, out_dir: str | Path, budget: float = 1.0, only: list[str] | None = None) -> dict:
    """Measure the suite (or the configs in `only`) over `seeds` (None: each config's default seeds), strictly one
    run at a time, at `budget` times each config's train.total_steps; write OUT/classic_control.md and .json;
    return {"rows": {name: row}, "machine": ..., "markdown": the table}."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in only or SUITE:
        start = time.perf_counter()
        rows[name] = measure(name, SUITE[name] if seeds is None else seeds, out_dir, budget)
        print(f"{name}: {rows[name].get('iqm', rows[name].get('error'))} ({time.perf_counter() - start:.0f} s)")
    result = {"rows": rows, "machine": machine(), "budget": budget}
    result["markdown"] = markdown(rows, result["machine"])
    (out_dir / "classic_control.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "classic_control.md").write_text(result["markdown"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/classic_control", help="experiments and the table go here")
    parser.add_argument("--seeds", nargs="+", help="e.g. 0-2 (default: 5 seeds for the cheap configs, else 3)")
    parser.add_argument("--only", nargs="+", choices=list(SUITE), help="these configs only")
    parser.add_argument("--budget", type=float, default=1.0, help="scale every train.total_steps (quick checks)")
    args = parser.parse_args()
    result = run(seeds_argument(args.seeds) if args.seeds else None, args.out, args.budget, args.only)
    print(result["markdown"])


if __name__ == "__main__":
    main()

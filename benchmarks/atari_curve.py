"""The learning curve of a long Atari run against env steps and against wall-clock hours, for docs/ATARI.md.

    python benchmarks/atari_curve.py RUN_DIR --clock RUN_DIR-clock.csv --out docs/pong_a2c_curve.png

metrics.jsonl holds no time (it must stay identical across machines), so the wall clock comes from a CSV of
`unix_time,last_logged_step` rows written beside the run while it trains (`--clock`, e.g. once a minute by a shell
loop reading the last line of metrics.jsonl); without it the figure has the env-steps panel only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rl_lab.figures import pyplot, save_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--clock", type=Path, help="CSV of unix_time,step rows taken while the run trained")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    train = np.array([(r["step"], r["train/episode_return"]) for r in rows if "train/episode_return" in r])
    evals = [(r["step"], r["eval/return_mean"], r["eval/return_std"]) for r in rows if "eval/return_mean" in r]
    evals = np.array(evals)
    config = (args.run_dir / "config.yaml").read_text()
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if args.clock else 1, figsize=(12 if args.clock else 7, 4), dpi=120, squeeze=False)
    panels = [("environment steps", 1.0, None)]
    if args.clock:
        clock = np.loadtxt(args.clock, delimiter=",", ndmin=2)
        clock = clock[~np.isnan(clock[:, 1])]
        hours = (clock[:, 0] - clock[0, 0]) / 3600
        panels.append(("wall-clock hours (this 2-core machine, shared with other work)", hours, clock[:, 1]))
    for ax, (label, hours, clock_steps) in zip(axes[0], panels, strict=True):

        def x(steps, hours=hours, clock_steps=clock_steps):
            return steps if clock_steps is None else np.interp(steps, clock_steps, hours)

        ax.plot(x(train[:, 0]), train[:, 1], label="train episode return (recent mean)", alpha=0.8)
        if len(evals):
            ax.errorbar(x(evals[:, 0]), evals[:, 1], evals[:, 2], fmt="o-", capsize=3, label="evaluation (mean ± std)")
        ax.axhline(18, color="grey", ls=":", label="target +18")
        ax.set_xlabel(label)
        ax.set_ylabel("episode return")
        ax.set_ylim(-21.5, 21.5)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    env = next(line.split(":", 1)[1].strip() for line in config.splitlines() if line.strip().startswith("id:"))
    fig.suptitle(f"{args.run_dir.name}: {env}, {int(train[-1, 0]):,} env steps")
    save_figure(fig, args.out)
    last = rows[-1]
    print(f"steps {last['step']:,}  last train return {train[-1, 1]:.1f}", end="")
    print(f"  last eval {evals[-1, 1]:.1f} ± {evals[-1, 2]:.1f}" if len(evals) else "")
    if args.clock:
        print(f"hours {hours[-1]:.2f}  mean sps {clock[-1, 1] / max(clock[-1, 0] - clock[0, 0], 1):.0f}")


if __name__ == "__main__":
    main()

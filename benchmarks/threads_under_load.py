"""The default thread count (torch_threads=0: auto) against 1 and N threads, with and without a competing CPU load.

    python benchmarks/threads_under_load.py [--steps 10000] [--epochs 2] [--out docs/threads_under_load.json]

For each job (the README's CartPole DQN, the MNIST CNN task) and each machine state (idle; one busy-looping
process per core competing), the job runs with torch_threads = auto, 1 and N (the core count), one after the
other, and the throughput each reaches is printed as a ratio to the best of the three. Nothing else should run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["device=cpu", "logger.wandb.mode=disabled", "logger.progress=false", "seed=0"]


def busy(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def job(kind: str, threads: int, steps: int, epochs: int, out: Path) -> float:
    """Run one job; returns env steps/s (DQN) or training images/s (MNIST), read from its summary.json."""
    if kind == "cartpole_dqn":
        args = [ROOT / "configs/cartpole_dqn.yaml", f"train.total_steps={steps}", "eval.every=0", "eval.episodes=5"]
    else:
        args = [ROOT / "configs/mnist_cnn.yaml", f"train.epochs={epochs}", "task.augment={}"]
    command = [sys.executable, "-m", "rl_lab", "train", *map(str, args), *QUIET, f"torch_threads={threads}"]
    subprocess.run([*command, f"run.dir={out}"], check=True, capture_output=True, cwd=out.parent)
    summary = json.loads((out / "summary.json").read_text())
    config = (out / "config.yaml").read_text()
    chosen = next(line.split(":")[1].strip() for line in config.splitlines() if line.startswith("torch_threads"))
    value = summary["sps"] if kind == "cartpole_dqn" else summary["train_images_per_s"]
    print(f"  {kind:<13} torch_threads={threads or 'auto':<4} (ran with {chosen}): {value:8.0f}/s", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="CartPole DQN env steps per run")
    parser.add_argument("--epochs", type=int, default=1, help="MNIST CNN epochs per run")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    results = {"cores": cores, "command": " ".join(sys.argv), "jobs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for state in ("idle", "busy"):
            stop, load = mp.Event(), []
            if state == "busy":
                load = [mp.Process(target=busy, args=(stop,)) for _ in range(cores)]
                for p in load:
                    p.start()
                time.sleep(2)  # let the load average see them
            print(f"{state} machine ({len(load)} competing processes)")
            try:
                for kind in ("cartpole_dqn", "mnist_cnn"):
                    row = {}
                    for threads in (0, 1, cores):
                        out = Path(tmp) / f"{state}-{kind}-{threads}"
                        row["auto" if threads == 0 else str(threads)] = job(kind, threads, args.steps, args.epochs, out)
                    best = max(row.values())
                    print(f"  {kind}: " + ", ".join(f"{k}: {v / best:.2f}x of best" for k, v in row.items()))
                    results["jobs"][f"{state}/{kind}"] = row
            finally:
                stop.set()
                for p in load:
                    p.join()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

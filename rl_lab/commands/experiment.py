"""`rl-lab train CONFIG --seeds 0-9 [--parallel N] [--backend ray [--address ADDR]]`, `rl-lab train --resume EXP`
and `rl-lab eval EXP`: experiments over many seeds, told to the user (rl_lab.experiments does the work)."""

from __future__ import annotations

import os
import threading
import traceback
from pathlib import Path

import rl_lab.comparison as comparison
import rl_lab.experiments as experiments
from rl_lab.errors import UserError
from rl_lab.fileio import dumps_json, write_atomic
from rl_lab.loader import eval_deterministic, load_config

_print_lock = threading.Lock()


def wants_experiment(args) -> bool:
    """Whether a `train` command line is an experiment's: --seeds, its options, or --resume of an experiment."""
    return (
        args.seeds is not None
        or args.parallel is not None
        or args.backend != "local"
        or args.address is not None
        or experiments.is_experiment(args.resume)
    )


def _say(line: str) -> None:
    with _print_lock:  # trials end on several threads
        print(line, flush=True)


def _event(seed: int, event: str, detail: str) -> None:
    _say(f"seed {seed}: {event}" + (f" ({detail})" if detail else ""))


def train(
    config: str | None,
    overrides: list[str],
    resume: str | None,
    seeds: str | None,
    parallel: int | None,
    backend: str = "local",
    address: str | None = None,
) -> dict:
    """Start, extend or resume an experiment and train its unfinished seeds; prints each run's end and the table."""
    if parallel is not None and parallel < 1:
        raise UserError(f"--parallel {parallel}: must be >= 1")
    if address is not None and backend != "ray":
        raise UserError("--address is the Ray cluster's; use it with --backend ray")
    if resume and (config or overrides or seeds is not None):
        raise UserError("--resume takes only an experiment directory: its own config.yaml and seeds are used")
    if not resume and seeds is None:
        raise UserError("--parallel, --backend and --address run an experiment: add --seeds, e.g. --seeds 0-9")
    if not resume and not config:
        raise UserError("--seeds needs a config file: rl-lab train CONFIG --seeds 0-9")
    session = None
    if backend == "ray":
        import rl_lab.ray_backend as ray_backend

        if not resume:
            experiments.parse_seeds(seeds)
            load_config(config, overrides)  # a bad config stops here, before connecting
        session = ray_backend.connect(address)  # no ray, no cluster: a user error before anything is written
    try:
        return _train(config, overrides, resume, seeds, parallel, session, address)
    finally:
        if session is not None:
            session.close()


def _train(config, overrides, resume, seeds, parallel, session, address) -> dict:
    if resume:
        experiment = experiments.open_experiment(resume)
        unfinished = [s for s in experiment.seeds if not experiment.finished(s)]
        left = experiments.format_seeds(unfinished) or "none"
        opening = f"resuming experiment {experiment.dir}: seeds {left} unfinished"
    else:
        experiment, before = experiments.prepare(config, overrides, experiments.parse_seeds(seeds))
        again = f"; {experiments.format_seeds(before)} there before" if before else ""
        opening = (
            f"experiment {experiment.dir}: seeds {experiments.format_seeds(experiment.seeds)}{again}; "
            f"W&B group {experiment.record['wandb_group']}"
        )
    parallel = parallel or 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    where = f"{parallel} at a time" if session is None else f"Ray ({address or 'RAY_ADDRESS or a local Ray'})"
    try:  # from the first line on, an interrupt names what to resume
        _say(opening)
        if session is None and parallel > cores:
            _say(f"warning: --parallel {parallel} on {cores} cores: the trials will compete for them")
        _say(f"training on {where}; each run's output goes to {experiment.dir / 'logs'}/seed-N.log")
        results = experiments.run_experiment(experiment, parallel, session, cli_task, _event)
    except KeyboardInterrupt as err:
        err.run_dir = experiment.dir
        raise
    return _report(experiment, results)


def _report(experiment: experiments.Experiment, results: dict[int, dict]) -> dict:
    lines = ["", "| seed | status | final eval return | run dir |", "|---|---|---|---|"]
    for seed, run in results.items():
        final = "-" if run.get("final") is None else f"{run['final']:.2f}"
        status = run["status"] + (f": {run['error']}" if run.get("error") else "")
        lines.append(f"| {seed} | {status} | {final} | {experiment.run_dir(seed)} |")
    _say("\n".join(lines))
    entries, _ = comparison.collect([str(experiment.dir)], "eval/return_mean")
    table = comparison.compare(entries, "eval/return_mean")
    if table["entries"]:
        text = comparison.markdown(table)
        write_atomic(experiment.dir / "results.md", text)
        write_atomic(experiment.dir / "results.json", dumps_json(table, indent=2) + "\n")
        _say(f"\n{text}\nresults: {experiment.dir / 'results.md'}; compare: rl-lab compare {experiment.dir} ...")
    failed = [seed for seed, run in results.items() if run["status"] != "finished"]
    if failed:
        raise UserError(
            f"{len(failed)} of {len(results)} runs did not finish (seeds {experiments.format_seeds(failed)}; errors "
            f"above and in {experiment.dir / 'logs'}); continue with: rl-lab train --resume {experiment.dir}"
        )
    return results


def cli_task(run_dir: str, start: list[str], log: str, threads: int) -> int:
    """One trial as a Ray task, in the worker's own process: the run's next `rl-lab` command (start, resume, or
    nothing once it has finished) with its output appended to `log`; returns its exit status."""
    from rl_lab.commands.train import resume, train

    for name, value in experiments.thread_environment(threads).items():
        os.environ[name] = value  # before torch is imported in this worker
    with experiments.output_to(Path(log)):
        try:
            argv = experiments.next_command(Path(run_dir), start)
        except UserError as err:
            print(f"rl-lab: error: {err}", flush=True)
            return 2
        if argv is None:
            return 0
        print(experiments.header(argv, os.getpid()), end="", flush=True)
        try:  # argv is `train --resume RUN` or `train CONFIG OVERRIDES...` (experiments.next_command)
            if argv[1] == "--resume":
                resume(argv[2])
            else:
                train(argv[1], argv[2:])
        except UserError as err:
            print(f"rl-lab: error: {err}", flush=True)
            return 2
        except BaseException:  # a bug: its traceback goes to the log, the experiment goes on
            traceback.print_exc()
            return 1
        return 0


def evaluate(
    exp_dir: str,
    episodes: int | None,
    epsilon: float | None,
    seed: int | None,
    video: int = 0,
    actions: str | None = None,
) -> dict:
    """`rl-lab eval EXP`: re-evaluate every seed's latest checkpoint, print one line per seed and the table."""
    if video:
        raise UserError(
            f"--video records one run's episodes; pass a seed's run directory: rl-lab eval {exp_dir}/seed-0"
        )
    if episodes is not None and episodes < 1:
        raise UserError(f"--episodes {episodes}: must be >= 1")
    experiment = experiments.open_experiment(exp_dir)
    options = {"episodes": episodes, "epsilon": epsilon, "seed": seed}
    if actions:
        options.update(deterministic=eval_deterministic(load_config(experiment.config_path), actions))
    entry = comparison.Entry(experiment.dir.name, [])
    for run_seed, result, problem in experiments.evaluate_experiment(experiment, **options):
        if problem:
            _say(f"seed {run_seed}: not evaluated ({problem})")
            continue
        run = comparison.read_run(experiment.run_dir(run_seed), "eval/return_mean")
        run.final = result["return_mean"]
        entry.runs.append(run)
        _say(f"seed {run_seed}: return {result['return_mean']:.2f} ± {result['return_std']:.2f}")
    table = comparison.compare([entry], "eval/return_mean")
    if not table["entries"]:
        raise UserError(f"no seed of {experiment.dir} could be evaluated (no checkpoint yet)")
    _say("\n" + comparison.markdown(table))
    return table

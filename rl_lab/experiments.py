"""Experiments: one config trained once per seed, each seed an ordinary run directory, run here or on a Ray cluster.

    EXP/
      experiment.json   the command (config file, overrides), the seeds and each run's status (written atomically)
      config.yaml       the resolved config every seed starts from (its seed and run.dir are set per run)
      seed-0/ ...       ordinary run directories (rl-lab eval, --resume, compare and export-encoder take them)
      logs/seed-0.log   each run's output, every attempt appended

Each trial is the `rl-lab` command line of its run: `train EXP/config.yaml seed=N run.dir=EXP/seed-N ...` the first
time, `train --resume EXP/seed-N` after an interruption, nothing once summary.json exists. Locally a trial is a
subprocess (`python -m rl_lab`), so a crash or a kill of one never takes down the others; on Ray it is a task in a
worker process of its own, which Ray starts again when the worker dies (then it resumes from its checkpoint).
Every trial's W&B run joins the group named after the experiment, tagged with its seed. Threads: each parallel
trial gets its share of the cores (`trial_threads`), so `parallel` trials never oversubscribe them.

Nothing here prints: progress goes to the caller's `on_event(seed, event, detail)` (rl_lab.commands.experiment).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rl_lab.config import to_yaml
from rl_lab.errors import UserError
from rl_lab.fileio import dumps_json, write_atomic
from rl_lab.loader import load_config

EXPERIMENT_FILE = "experiment.json"
CONFIG_FILE = "config.yaml"
# what a trial's config may differ in from the experiment's without being another experiment
PER_RUN_KEYS = ("seed", "run.dir")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # numpy's BLAS and torch's OpenMP pools

Event = Callable[[int, str, str], None]  # (seed, event, detail): started, finished, failed, interrupted, skipped


def parse_seeds(text: str) -> list[int]:
    """`0-9`, `0,3,7` or `0-4,9` -> sorted distinct seeds; UserError on anything else."""
    seeds: set[int] = set()
    for part in str(text).split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last) if dash else int(first)
        except ValueError:
            low = high = -1
        if low < 0 or high < low:
            raise UserError(f"--seeds {text}: not a list of seeds; write e.g. 0-9, 0,3,7 or 0-4,9 (seeds >= 0)")
        seeds.update(range(low, high + 1))
    return sorted(seeds)


def format_seeds(seeds: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    spans: list[list[int]] = []
    for seed in sorted(seeds):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def is_experiment(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / EXPERIMENT_FILE).is_file()


def without_keys(data: dict, keys: tuple[str, ...]) -> dict:
    """A deep copy of a nested dict without the dotted `keys`."""
    data = json.loads(json.dumps(data))  # a deep copy
    for key in keys:
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return data


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The dotted key where two nested dicts first differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else f"{prefix.rstrip('.')}: {b!r} here, {a!r} in the experiment"


@dataclass
class Experiment:
    """An experiment directory and its record (experiment.json); `save` writes the record atomically."""

    dir: Path
    record: dict
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.record["runs"])

    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG_FILE

    def run_dir(self, seed: int) -> Path:
        return self.dir / f"seed-{seed}"

    def log_path(self, seed: int) -> Path:
        return self.dir / "logs" / f"seed-{seed}.log"

    def run(self, seed: int) -> dict:
        return self.record["runs"][str(seed)]

    def finished(self, seed: int) -> bool:
        return (self.run_dir(seed) / "summary.json").is_file()

    def update(self, seed: int, **fields: Any) -> None:
        """Change one run's entry and write experiment.json (atomically; trials finish on several threads)."""
        with self._lock:
            self.run(seed).update(fields)
            self.record["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
            write_atomic(self.dir / EXPERIMENT_FILE, dumps_json(self.record, indent=2) + "\n")

    def save(self) -> None:
        with self._lock:
            write_atomic(self.dir / EXPERIMENT_FILE, dumps_json(self.record, indent=2) + "\n")

    def start_command(self, seed: int, threads: int | None) -> list[str]:
        """The `rl-lab` arguments that start the seed's run."""
        base = load_config(self.config_path)
        tags = [*base.logger.wandb.tags, f"seed-{seed}"]
        argv = ["train", str(self.config_path.resolve()), f"seed={seed}", f"run.dir={self.run_dir(seed).resolve()}"]
        argv.append(f"logger.wandb.tags={json.dumps(tags)}")
        if threads:
            argv.append(f"torch_threads={threads}")
        return argv


def open_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    if not is_experiment(path):
        raise UserError(f"{path} is not an experiment directory (no {EXPERIMENT_FILE}); start one with --seeds")
    try:
        record = json.loads((path / EXPERIMENT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path / EXPERIMENT_FILE}: {err}") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), dict):
        raise UserError(f"{path / EXPERIMENT_FILE} is not an rl-lab experiment record (no runs)")
    return Experiment(path, record)


def prepare(config_path: str | Path, overrides: list[str], seeds: list[int]) -> tuple[Experiment, list[int]]:
    """The experiment of this command: a new one, or the one the same command made before (then `seeds` not yet
    in it are added). Returns it and the seeds it had already. The config is checked before anything is written; an
    existing directory that holds another config, or that is not an experiment, is a UserError."""
    config_path = Path(config_path)
    if any(o.partition("=")[0] == "seed" for o in overrides):
        raise UserError("seed=... and --seeds both given; --seeds sets each run's seed")
    config = load_config(config_path, overrides)
    config.seed = 0  # set per run; the experiment's own config holds a neutral one
    requested_dir, config.run.dir = config.run.dir, None
    digest = hashlib.sha256(to_yaml(config).encode()).hexdigest()[:8]
    exp_dir = Path(requested_dir) if requested_dir else Path("runs") / f"{config_path.stem}-{digest}"
    if config.logger.wandb.group is None:
        config.logger.wandb.group = exp_dir.name
    if exp_dir.exists() and not exp_dir.is_dir():
        raise UserError(f"experiment dir {exp_dir} is a file; choose another run.dir=...")
    if exp_dir.is_dir() and any(exp_dir.iterdir()):
        experiment = open_experiment(exp_dir) if is_experiment(exp_dir) else None
        if experiment is None:
            raise UserError(f"{exp_dir} exists and is not an experiment directory; choose another run.dir=...")
        stored = load_config(experiment.config_path).to_dict()
        difference = _first_difference(without_keys(stored, PER_RUN_KEYS), without_keys(config.to_dict(), PER_RUN_KEYS))
        if difference:
            raise UserError(
                f"{exp_dir} holds an experiment of another config ({difference}); choose another run.dir=... "
                f"or continue that one with: rl-lab train --resume {exp_dir}"
            )
        before = experiment.seeds
        for seed in seeds:
            experiment.record["runs"].setdefault(str(seed), _new_run(seed))
        experiment.record["seeds"] = experiment.seeds
        experiment.save()
        return experiment, before
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(exp_dir / CONFIG_FILE, to_yaml(config))
    record = {
        "config": str(config_path),
        "overrides": list(overrides),
        "resolved_config": CONFIG_FILE,
        "wandb_group": config.logger.wandb.group,
        "seeds": seeds,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": {str(seed): _new_run(seed) for seed in seeds},
    }
    experiment = Experiment(exp_dir, record)
    experiment.save()
    return experiment, []


def _new_run(seed: int) -> dict:
    return {"dir": f"seed-{seed}", "log": f"logs/seed-{seed}.log", "status": "pending", "error": None, "attempts": 0}


# ------------------------------------------------------------------------------------------------ one trial


def trial_threads(config, parallel: int) -> int:
    """Torch threads of one of `parallel` trials at once: torch_threads when the config sets it, else the loader's
    own choice (1 for a small network; the free cores for a large one) divided among the trials."""
    from rl_lab.device import choose_threads
    from rl_lab.loader import uses_small_network

    threads, _ = choose_threads(config.torch_threads, uses_small_network(config))
    return threads if config.torch_threads else max(1, threads // parallel)


def trial_resources(config, threads: int, cluster_gpus: float) -> dict[str, float]:
    """What a trial declares to Ray: its threads as CPUs, one GPU when it runs on CUDA (device=auto: when the
    cluster has one)."""
    cuda = config.device.startswith("cuda") or (config.device == "auto" and cluster_gpus > 0)
    return {"num_cpus": threads, "num_gpus": 1 if cuda else 0}


def next_command(run_dir: Path, start: list[str]) -> list[str] | None:
    """What a run needs next, as `rl-lab` arguments: nothing once it has finished (summary.json), `train --resume`
    once it has its config.yaml (from a checkpoint, or from the beginning when killed before the first), else
    `start` (a directory left without config.yaml by a kill at its very start holds nothing and is removed)."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        return None
    if (run_dir / CONFIG_FILE).is_file():
        return ["train", "--resume", str(run_dir)]
    if run_dir.is_dir():
        if any(p.is_file() and p.name != ".lock" for p in run_dir.rglob("*")):
            raise UserError(f"{run_dir} holds files but no config.yaml; remove it to start that run again")
        shutil.rmtree(run_dir)
    return start


def header(argv: list[str], pid: int) -> str:
    """The line that opens each attempt in a trial's log: when, what, and which process on which host."""
    command = " ".join(["rl-lab", *argv])
    return f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {command} (pid {pid} on {socket.gethostname()})\n"


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[None]:
    """This process's stdout and stderr (the file descriptors, so C code and children too) appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with log.open("a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def outcome(returncode: int, log: Path) -> tuple[str, str | None]:
    """(status, error) of a trial that exited with `returncode`; the error is the trial's own last words."""
    if returncode == 0:
        return "finished", None
    if returncode in (130, -signal.SIGINT):
        return "interrupted", None
    lines = _tail(log)
    said = [line.removeprefix("rl-lab: error: ") for line in lines if line.startswith("rl-lab: error: ")]
    if said:
        return "failed", said[-1]
    if returncode < 0:
        return "failed", f"killed by {signal.Signals(-returncode).name}"
    return "failed", f"exit {returncode}" + (f": {lines[-1]}" if lines else "")


def _tail(log: Path, size: int = 16384) -> list[str]:
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - size))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def final_return(run_dir: Path) -> float | None:
    """The run's final evaluation return (summary.json), None for a run without one."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return (summary.get("final_eval") or {}).get("return_mean")


# ------------------------------------------------------------------------------------------------ running


def run_experiment(
    experiment: Experiment,
    parallel: int = 1,
    session=None,
    ray_task: Callable | None = None,
    on_event: Event = lambda seed, event, detail: None,
) -> dict[int, dict]:
    """Train every unfinished seed (finished ones are skipped), `parallel` at a time here, or as Ray tasks on the
    cluster of `session` (rl_lab.ray_backend.connect; `ray_task` runs one in a worker:
    rl_lab.commands.experiment.cli_task). A failed run is recorded with its error and the others go on. Returns
    each seed's entry of experiment.json."""
    from rl_lab.runs import RunLock

    lock = RunLock(experiment.dir)  # one driver per experiment
    try:
        base = load_config(experiment.config_path)
        todo = []
        for seed in experiment.seeds:
            if experiment.finished(seed):
                if experiment.run(seed)["status"] != "finished":
                    experiment.update(seed, status="finished", error=None, final=final_return(experiment.run_dir(seed)))
                on_event(seed, "skipped", "finished before")
            else:
                todo.append(seed)
        threads = trial_threads(base, parallel) if todo else 0
        if session is not None:
            _run_on_ray(experiment, todo, threads, base, session, ray_task, on_event)
        else:
            _run_here(experiment, todo, threads, parallel, on_event)
    finally:
        lock.release()
    return {seed: experiment.run(seed) for seed in experiment.seeds}


def _threads_of(experiment: Experiment, seed: int, threads: int) -> int:
    """A started run keeps the threads its config.yaml recorded; a new one gets `threads`."""
    path = experiment.run_dir(seed) / CONFIG_FILE
    if path.is_file():
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
            return int(yaml.safe_load(path.read_text()).get("torch_threads") or threads)
    return threads


def thread_environment(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in THREAD_VARIABLES}


def _finish(experiment: Experiment, seed: int, status: str, error: str | None, on_event: Event, **fields) -> None:
    if status == "finished" and not experiment.finished(seed):
        status, error = "failed", "exited 0 without summary.json"
    final = final_return(experiment.run_dir(seed))
    experiment.update(seed, status=status, error=error, final=final, pid=None, **fields)
    on_event(seed, status, error or ("" if final is None else f"final eval return {final:.2f}"))


def _run_here(experiment: Experiment, seeds: list[int], threads: int, parallel: int, on_event: Event) -> None:
    """Each seed a `python -m rl_lab` subprocess, `parallel` at a time; Ctrl-C stops them (each keeps its last
    checkpoint) and is raised again once they have ended."""
    procs: dict[int, subprocess.Popen] = {}
    stopping = threading.Event()

    def trial(seed: int) -> None:
        if stopping.is_set():
            return
        run_threads = _threads_of(experiment, seed, threads)
        try:
            argv = next_command(experiment.run_dir(seed), experiment.start_command(seed, run_threads))
        except UserError as err:
            experiment.update(seed, status="failed", error=str(err))
            on_event(seed, "failed", str(err))
            return
        if argv is None:
            return
        log = experiment.log_path(seed)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:  # O_APPEND: the header and the trial's own lines never overwrite each other
            env = {**os.environ, **thread_environment(run_threads)}
            proc = subprocess.Popen(
                [sys.executable, "-m", "rl_lab", *argv], stdout=out, stderr=subprocess.STDOUT, env=env
            )
            out.write(header(argv, proc.pid))
        procs[seed] = proc
        attempts = experiment.run(seed)["attempts"] + 1
        experiment.update(
            seed, status="running", error=None, attempts=attempts, pid=proc.pid, host=socket.gethostname()
        )
        on_event(seed, "started", f"pid {proc.pid}, {run_threads} torch thread(s), log {log}")
        returncode = proc.wait()
        procs.pop(seed, None)
        _finish(experiment, seed, *outcome(returncode, log), on_event, exit=returncode)

    pool = ThreadPoolExecutor(max(1, parallel), thread_name_prefix="trial")
    futures = [pool.submit(trial, seed) for seed in seeds]
    try:
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        stopping.set()
        for proc in list(procs.values()):
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)  # each saves nothing half-done and exits 130
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


@dataclass
class Trial:
    """A run to bring to its end as a Ray task: its directory, the `rl-lab` arguments that start it, its log."""

    key: Any  # what the caller knows it by: a seed, a search trial's number
    run_dir: Path
    start: list[str]
    log: Path
    threads: int
    config: Any  # its resolved config, for the resources it declares


def ray_trials(
    session, trials: list[Trial], ray_task: Callable, on_submit: Callable = lambda job: None
) -> Iterator[tuple[Trial, int | None, str, str | None]]:
    """Run trials as Ray tasks (`ray_task(run_dir, start, log, threads)` in a worker); yield (trial, exit status,
    status, error) as each ends; the exit status is None when the task never reported."""
    from rl_lab.ray_backend import Job

    by_key = {trial.key: trial for trial in trials}
    jobs = [
        Job(
            t.key,
            (str(t.run_dir.resolve()), t.start, str(t.log.resolve()), t.threads),
            trial_resources(t.config, t.threads, session.gpus),
        )
        for t in trials
    ]
    for key, returncode, problem in session.run(ray_task, jobs, on_submit):
        trial = by_key[key]
        if problem is not None:  # its worker died more often than Ray retries, or Ray failed it
            yield trial, None, "failed", problem
        else:
            yield trial, returncode, *outcome(returncode, trial.log)


def _run_on_ray(
    experiment: Experiment,
    seeds: list[int],
    threads: int,
    base,
    session,
    ray_task: Callable | None,
    on_event: Event,
) -> None:
    if ray_task is None:
        raise ValueError("the Ray backend needs the task function that runs a trial in a worker")
    try:
        trials = []
        for seed in seeds:
            run_threads = _threads_of(experiment, seed, threads)
            start = experiment.start_command(seed, run_threads)
            trials.append(Trial(seed, experiment.run_dir(seed), start, experiment.log_path(seed), run_threads, base))
            attempts = experiment.run(seed)["attempts"] + 1
            experiment.update(seed, status="submitted", error=None, attempts=attempts, pid=None, host=None)

        def submitted(job) -> None:
            cpus, gpus = job.resources["num_cpus"], job.resources["num_gpus"]
            on_event(job.key, "submitted", f"a Ray task of {cpus:g} CPU(s) and {gpus:g} GPU(s), log {job.args[2]}")

        for trial, returncode, status, error in ray_trials(session, trials, ray_task, submitted):
            _finish(experiment, trial.key, status, error, on_event, exit=returncode)
    except KeyboardInterrupt:
        for seed in seeds:
            if experiment.run(seed)["status"] == "submitted":
                experiment.update(seed, status="interrupted")
        raise


def evaluate_experiment(experiment: Experiment, **options) -> Iterator[tuple[int, dict | None, str | None]]:
    """Re-evaluate each seed's latest checkpoint in turn: (seed, eval stats, None), or (seed, None, why not)."""
    from rl_lab.runs import open_run

    for seed in experiment.seeds:
        try:
            run = open_run(experiment.run_dir(seed))
            stats, _ = run.trainer.evaluate_checkpoint(run.checkpoint, **options)
        except UserError as err:
            yield seed, None, str(err)
        else:
            yield seed, stats, None

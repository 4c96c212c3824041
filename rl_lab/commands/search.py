"""Random hyperparameter search on this machine, from the same YAML file that drives a W&B sweep.

Random beats grid search when few hyperparameters matter (Bergstra & Bengio 2012), and learning rates and
regularisation strengths are sampled log-uniformly, as the lectures advise. A sweep file
(configs/sweeps/*.yaml) names the metric to optimise (a key of summary.json, dotted for nested keys), the
parameters (dotted config keys) and the command `rl-lab train CONFIG ${args_no_hyphens}`:

    wandb sweep configs/sweeps/cartpole_dqn.yaml && wandb agent SWEEP_ID    # on W&B
    rl-lab search configs/sweeps/cartpole_dqn.yaml --trials 8               # here, offline

Parameter forms (W&B's): {value: v}; {values: [...]} (optionally distribution: categorical);
{distribution: uniform | log_uniform_values | int_uniform, min: a, max: b}.
The search writes OUT/trial-NNN/ (ordinary run directories) and OUT/results.{md,json}, best trial first.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rl_lab.config import yaml_problem
from rl_lab.errors import UserError
from rl_lab.fileio import read_user_text, write_atomic
from rl_lab.loader import load_config

RANGES = ("uniform", "log_uniform_values", "int_uniform")
SWEEP_KEYS = {"program", "method", "metric", "parameters", "command", "name", "description", "project", "entity"}
ARG_MACROS = ("${args_no_hyphens}", "${args}")


@dataclass
class Sweep:
    config: str  # the experiment YAML that `command` trains
    fixed: list[str]  # overrides written into `command` itself
    metric: str
    maximize: bool
    parameters: dict[str, dict]


def _fail(path: Path, message: str) -> UserError:
    return UserError(f"{path}: {message}")


def _check_parameter(path: Path, name: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        raise _fail(path, f"parameters.{name} must be a mapping such as {{values: [...]}}, got {spec!r}")
    dist = spec.get("distribution")
    if "value" in spec:
        allowed = {"value", "distribution"}
        ok = dist in (None, "constant")
    elif "values" in spec:
        allowed = {"values", "distribution"}
        ok = dist in (None, "categorical") and isinstance(spec["values"], list) and len(spec["values"]) > 0
    else:
        allowed = {"distribution", "min", "max"}
        low, high = spec.get("min"), spec.get("max")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        ok = dist in RANGES and numbers and low < high and (dist != "log_uniform_values" or low > 0)
        if dist == "int_uniform":
            ok = ok and all(isinstance(v, int) for v in (low, high))
    extra = sorted(set(spec) - allowed)
    if extra or not ok:
        raise _fail(
            path,
            f"parameters.{name}: {spec!r} is not a supported parameter; use {{value: v}}, {{values: [...]}} or "
            f"{{distribution: {' | '.join(RANGES)}, min: a, max: b}} (min > 0 for log_uniform_values)",
        )


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a W&B sweep file for local search; mistakes are UserErrors naming the key."""
    path = Path(path)
    text = read_user_text(path, "sweep file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _fail(path, f"not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(data, dict):
        raise _fail(path, "the top level must be a mapping (method, metric, parameters, command)")
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown}; known: {', '.join(sorted(SWEEP_KEYS))}")
    if data.get("method") != "random":
        raise _fail(path, f"method must be random for rl-lab search, got {data.get('method')!r}")
    metric = data.get("metric")
    if not (
        isinstance(metric, dict)
        and isinstance(metric.get("name"), str)
        and metric.get("goal") in ("maximize", "minimize")
    ):
        raise _fail(path, "metric must be {name: SUMMARY_KEY, goal: maximize | minimize}")
    params = data.get("parameters")
    if not isinstance(params, dict) or not params:
        raise _fail(path, "parameters must map dotted config keys to their distributions")
    for name, spec in params.items():
        _check_parameter(path, name, spec)
    command = data.get("command")
    usage = "command must be [rl-lab, train, CONFIG, ${args_no_hyphens}] (fixed key=value overrides may follow CONFIG)"
    if not (isinstance(command, list) and "train" in command and command.index("train") + 1 < len(command)):
        raise _fail(path, usage)
    config, *rest = command[command.index("train") + 1 :]
    if not set(ARG_MACROS) & set(rest) or str(config).startswith("$"):
        raise _fail(path, usage)
    fixed = [str(item) for item in rest if not str(item).startswith("$")]
    return Sweep(str(config), fixed, metric["name"], metric["goal"] == "maximize", params)


def sample(parameters: dict[str, dict], rng: np.random.Generator) -> dict[str, Any]:
    """One draw of every parameter (YAML-ready Python values)."""
    values = {}
    for name, spec in parameters.items():
        dist = spec.get("distribution")
        if "value" in spec:
            values[name] = spec["value"]
        elif "values" in spec:
            values[name] = spec["values"][rng.integers(len(spec["values"]))]
        elif dist == "uniform":
            values[name] = float(rng.uniform(spec["min"], spec["max"]))
        elif dist == "log_uniform_values":
            values[name] = float(math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"]))))
        else:
            values[name] = int(rng.integers(spec["min"], spec["max"], endpoint=True))
    return values


def as_overrides(values: dict[str, Any]) -> list[str]:
    """`key=value` overrides, values as YAML (so lists and booleans round-trip)."""
    return [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in values.items()
    ]


def metric_value(summary: dict, key: str) -> Any:
    """summary[key], else the nested value at the dotted path key (`final_eval.return_mean`)."""
    if key in summary:
        return summary[key]
    node: Any = summary
    for part in key.split("."):
        if not (isinstance(node, dict) and part in node):
            raise KeyError(key)
        node = node[part]
    return node


def results_table(rows: list[dict], metric: str, names: list[str]) -> str:
    """A markdown table, one row per trial in the order given."""
    header = ["rank", "trial", metric, *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, row in enumerate(rows, 1):
        value = row["metric"] if row["metric"] is not None else f"failed: {row['error']}"
        cells = [rank, row["trial"], value, *(row["params"][n] for n in names)]
        lines.append("| " + " | ".join(f"{c:.4g}" if isinstance(c, float) else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _ranked(rows: list[dict], maximize: bool) -> list[dict]:
    done = sorted((r for r in rows if r["metric"] is not None), key=lambda r: r["metric"], reverse=maximize)
    return done + [r for r in rows if r["metric"] is None]


def search(
    sweep_path: str | Path,
    trials: int,
    out_dir: str | Path | None = None,
    seed: int = 0,
    overrides: list[str] = (),
    backend: str = "local",
    address: str | None = None,
) -> list[dict]:
    """Sample `trials` configurations, train each with rl_lab.runs.train_new (or as Ray tasks with backend="ray"),
    return the rows best first.

    Every trial's config is checked before the first one starts, so a bad key or value costs no training.
    A trial that fails with a UserError is recorded as failed and the search goes on.
    """
    if address is not None and backend != "ray":
        raise UserError("--address is the Ray cluster's; use it with --backend ray")
    sweep = load_sweep(sweep_path)
    if trials < 1:
        raise UserError(f"--trials {trials}: must be >= 1")
    out = (
        Path(out_dir) if out_dir else Path("runs") / f"search-{Path(sweep_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"search dir {out} exists and is not empty; choose another --out")
    clash = sorted({o.partition("=")[0] for o in overrides} & set(sweep.parameters))
    if clash:
        raise UserError(f"{clash[0]} is both an override and a parameter of {sweep_path}; remove one of them")
    if backend == "ray":  # Ray workers may run elsewhere: absolute paths
        out, sweep.config = out.resolve(), str(Path(sweep.config).resolve())
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(trials):
        values = sample(sweep.parameters, rng)
        args = [*sweep.fixed, *as_overrides(values), *overrides, f"run.dir={out / f'trial-{i:03d}'}"]
        config = load_config(sweep.config, args)  # raises the UserError now, before anything is written
        plans.append((i, values, args, config))
    session = None
    if backend == "ray":
        import rl_lab.ray_backend as ray_backend

        session = ray_backend.connect(address)  # a missing ray or cluster stops here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    names = list(sweep.parameters)
    rows: list[dict] = []
    for i, values, error in _trials(sweep.config, plans, out, session):
        run_dir = out / f"trial-{i:03d}"
        row = {"trial": i, "params": values, "run_dir": str(run_dir), "metric": None, "error": error}
        if error is None:
            summary = json.loads((run_dir / "summary.json").read_text())
            try:
                row["metric"] = metric_value(summary, sweep.metric)
            except KeyError:
                raise UserError(
                    f"{sweep_path}: metric {sweep.metric!r} is not in {run_dir}/summary.json; "
                    f"choose one of {', '.join(sorted(summary))}"
                ) from None
        rows.append(row)
        ranked = _ranked(rows, sweep.maximize)
        table = results_table(ranked, sweep.metric, names)
        write_atomic(out / "results.md", table)
        write_atomic(
            out / "results.json",
            json.dumps({"metric": sweep.metric, "maximize": sweep.maximize, "trials": ranked}, indent=2) + "\n",
        )
    goal = "maximizing" if sweep.maximize else "minimizing"
    if session is not None:
        print(f"trials ran as Ray tasks; their output: {out / 'logs'}")
    print(f"\nrandom search over {sweep_path}: {trials} trials, {goal} {sweep.metric}")
    print(table, end="")
    print(f"results: {out / 'results.md'}")
    return ranked


def _trials(config_path: str, plans: list[tuple], out: Path, session) -> Iterator[tuple[int, dict, str | None]]:
    """Train each planned trial, here one after another or as Ray tasks at once (session); yield (trial number,
    its values, None or its error) as each ends."""
    if session is None:
        from rl_lab.runs import train_new

        for i, values, args, _ in plans:
            try:
                train_new(config_path, args)
            except UserError as err:
                yield i, values, str(err)
            else:
                yield i, values, None
        return
    from rl_lab.commands.experiment import cli_task
    from rl_lab.experiments import Trial, ray_trials, trial_threads

    trials = []
    for i, _, args, config in plans:
        threads = trial_threads(config, 1)
        start = ["train", config_path, *args, *([] if config.torch_threads else [f"torch_threads={threads}"])]
        log = out / "logs" / f"trial-{i:03d}.log"
        trials.append(Trial(i, out / f"trial-{i:03d}", start, log, threads, config))
    values = {i: v for i, v, _, _ in plans}
    try:
        for trial, _, status, error in ray_trials(session, trials, cli_task):
            yield trial.key, values[trial.key], None if status == "finished" else error or status
    finally:
        session.close()

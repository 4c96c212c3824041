"""Comparing experiments over seeds: what `rl-lab compare` and `rl-lab eval EXPERIMENT` compute and draw.

An entry is what one colour and one row stand for: an experiment directory (its seeds), the run directories of one
config (runs given one by one are grouped by their config, seed aside), or `LABEL=DIR[,DIR...]`, several pooled
under one name (e.g. one algorithm's experiments on several games: each env id is a task of the stratified
bootstrap). Per entry: the final score of each finished run (summary.json: `eval/X` is `final_eval.X`; another
metric its summary key, else its last logged value) and its learning curve (the metric in metrics.jsonl against
`step`, environment steps for agents). Returns on Atari games with reference scores become human-normalised
scores (rl_lab.envs.atari), with 1.0 = human as the optimality-gap target; otherwise the target is `target`, or
the env's reward threshold when every run plays the same env. Statistics: rl_lab.stats. Nothing here prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

import rl_lab.stats as stats
from rl_lab.errors import UserError
from rl_lab.experiments import PER_RUN_KEYS, is_experiment, open_experiment, without_keys


@dataclass
class RunScores:
    dir: Path
    task: str  # env id (agents) or dataset name (supervised tasks)
    seed: int
    final: float | None  # None while the run has not finished
    agent: bool  # an agent in envs (steps are environment steps), not a supervised task
    steps: np.ndarray
    values: np.ndarray


@dataclass
class Entry:
    label: str
    runs: list[RunScores]

    def tasks(self) -> dict[str, list[RunScores]]:
        found: dict[str, list[RunScores]] = {}
        for run in self.runs:
            found.setdefault(run.task, []).append(run)
        return found

    def final_scores(self, normalize: Callable | None = None) -> dict[str, np.ndarray]:
        """Each task's finished runs' final scores (normalised when `normalize` is given)."""
        scores = {}
        for task, runs in self.tasks().items():
            finals = [r.final for r in runs if r.final is not None]
            if finals:
                scores[task] = np.array([normalize(task, f) if normalize else f for f in finals], dtype=float)
        return scores


def _metric_value(summary: dict, metric: str) -> float | None:
    section, _, key = metric.partition("/")
    if section == "eval" and key in (summary.get("final_eval") or {}):
        return summary["final_eval"][key]
    node = summary
    for part in metric.replace("/", ".").split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float)) else None


def read_run(run_dir: Path, metric: str) -> RunScores:
    """A run's task, seed, learning curve of `metric` and final score (None unless it has finished)."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read {run_dir / 'config.yaml'}: {err}") from None
    task = (config.get("env") or {}).get("id") or (config.get("data") or {}).get("name") or "task"
    points = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if isinstance(row.get(metric), (int, float)) and "step" in row:
                points.append((row["step"], row[metric]))
    steps, values = (np.array(v, dtype=float) for v in zip(*points, strict=True)) if points else (np.zeros(0),) * 2
    final = None
    if (run_dir / "summary.json").is_file():
        final = _metric_value(json.loads((run_dir / "summary.json").read_text()), metric)
        if final is None and len(values):
            final = float(values[-1])
    return RunScores(run_dir, task, int(config.get("seed", 0)), final, "env" in config, steps, values)


def _run_dirs(path: Path) -> tuple[list[Path], list[str]]:
    """The run directories an argument names, and notes on seeds left out."""
    if is_experiment(path):
        experiment, dirs, notes = open_experiment(path), [], []
        for seed in experiment.seeds:
            run_dir = experiment.run_dir(seed)
            if (run_dir / "config.yaml").is_file():
                dirs.append(run_dir)
            else:
                notes.append(f"{run_dir}: not started, left out")
        return dirs, notes
    if (path / "config.yaml").is_file():
        return [path], []
    raise UserError(f"{path} is neither an experiment directory (experiment.json) nor a run directory (config.yaml)")


def _label(dirs: list[Path]) -> str:
    names = [d.name for d in dirs]
    common = os.path.commonprefix(names).rstrip("-_s") if len(names) > 1 else names[0]
    return common or names[0]


def collect(arguments: list[str], metric: str) -> tuple[list[Entry], list[str]]:
    """The entries that `rl-lab compare` arguments name, in their order, and notes on what was left out."""
    entries: list[Entry] = []
    loose: dict[str, list[Path]] = {}  # run directories given alone, by their config (seed aside)
    order: list[str | int] = []
    notes: list[str] = []
    for argument in arguments:
        label, sep, paths = argument.partition("=")
        if sep and not Path(argument).exists():
            dirs = []
            for path in filter(None, paths.split(",")):
                found, said = _run_dirs(Path(path))
                dirs += found
                notes += said
            if not label or not dirs:
                raise UserError(f"{argument}: write LABEL=DIR[,DIR...] with at least one experiment or run directory")
            entries.append(Entry(label, [read_run(d, metric) for d in dirs]))
            order.append(len(entries) - 1)
            continue
        path = Path(argument)
        if not path.is_dir():
            raise UserError(f"{argument} does not exist (an experiment or run directory)")
        dirs, said = _run_dirs(path)
        notes += said
        if is_experiment(path):
            entries.append(Entry(path.name, [read_run(d, metric) for d in dirs]))
            order.append(len(entries) - 1)
        else:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
            key = json.dumps(
                without_keys({**config, "logger": None, "torch_threads": None}, PER_RUN_KEYS), sort_keys=True
            )
            if key not in loose:
                order.append(key)
            loose.setdefault(key, []).append(path)
    ordered = [entries[i] if isinstance(i, int) else Entry(_label(loose[i]), []) for i in order]
    for entry, key in zip(ordered, order, strict=True):
        if isinstance(key, str):
            entry.runs = [read_run(d, metric) for d in loose[key]]
    labels = [e.label for e in ordered]
    for i, entry in enumerate(ordered):  # every colour needs a name of its own
        if labels.count(entry.label) > 1:
            entry.label = f"{entry.label} ({labels[:i].count(entry.label) + 1})"
    return ordered, notes


def reward_threshold(env_id: str) -> float | None:
    """The env's registered reward threshold (CartPole-v1: 475), None when it has none or is unknown."""
    try:
        import gymnasium

        import rl_lab.envs  # noqa: F401 - registers the lab's own env ids

        return gymnasium.spec(env_id).reward_threshold
    except Exception:
        return None


def scoring(entries: list[Entry], metric: str, target: float | None) -> tuple[str, Callable | None, float | None]:
    """(what the scores are, the normalising function or None, the optimality-gap target or None)."""
    from rl_lab.envs.atari import human_normalized

    tasks = {run.task for entry in entries for run in entry.runs}
    returns = "return" in metric
    if returns and tasks and all(human_normalized(task, 0.0) is not None for task in tasks):
        return f"human-normalised {metric}", human_normalized, 1.0 if target is None else target
    if target is None and returns and len(tasks) == 1:
        target = reward_threshold(next(iter(tasks)))
    return metric, None, target


def compare(
    entries: list[Entry], metric: str, target: float | None = None, reps: int = stats.REPS, seed: int = 0
) -> dict:
    """The table as JSON-ready data: per entry IQM, mean, median (and optimality gap) with 95 % stratified bootstrap
    CIs, and P(X > Y) for each pair of entries over the tasks they share."""
    score, normalize, target = scoring(entries, metric, target)
    rows, notes, finals = [], [], {}
    for entry in entries:
        scores = entry.final_scores(normalize)
        unfinished = [str(r.dir) for r in entry.runs if r.final is None]
        if unfinished:
            notes.append(f"{entry.label}: {len(unfinished)} run(s) without a final score, left out: {unfinished}")
        if not scores:
            notes.append(f"{entry.label}: no finished run, no statistics")
            continue
        finals[entry.label] = scores
        row = {
            "label": entry.label,
            "runs": int(sum(len(s) for s in scores.values())),
            "tasks": {task: len(s) for task, s in scores.items()},
            "scores": {task: [round(float(v), 6) for v in s] for task, s in scores.items()},
        }
        estimates = stats.interval_estimates(list(scores.values()), target, reps, seed)
        row.update({name: estimate.to_dict() for name, estimate in estimates.items()})
        rows.append(row)
    improvement = []
    labels = list(finals)
    for i, x in enumerate(labels):
        for y in labels[i + 1 :]:
            shared = [t for t in finals[x] if t in finals[y]]
            if not shared:
                notes.append(f"{x} vs {y}: no task in common, no probability of improvement")
                continue
            estimate = stats.improvement_estimate([finals[x][t] for t in shared], [finals[y][t] for t in shared], reps)
            improvement.append({"x": x, "y": y, "tasks": shared, **estimate.to_dict()})
    return {
        "metric": metric,
        "score": score,
        "target": target,
        "confidence": stats.CONFIDENCE,
        "reps": reps,
        "entries": rows,
        "improvement": improvement,
        "notes": notes,
    }


def _cell(estimate: dict | None) -> str:
    if estimate is None:
        return "n/a"
    return stats.Estimate(**estimate).format(4)


def markdown(result: dict) -> str:
    """The table as Markdown: one row per entry, then P(X > Y) per pair."""
    names = ["iqm", "mean", "median", "optimality_gap"]
    titles = ["IQM", "mean", "median", "optimality gap"]
    lines = [
        "| entry | runs | " + " | ".join(titles) + " |",
        "|---|---|" + "---|" * len(titles),
    ]
    for row in result["entries"]:
        cells = [row["label"], str(row["runs"]), *(_cell(row.get(n)) for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    target = "" if result["target"] is None else f"; optimality gap below {result['target']:g}"
    lines.append("")
    lines.append(
        f"Final {result['score']} of each run; point estimate [{result['confidence']:.0%} stratified bootstrap CI, "
        f"{result['reps']} resamples]{target}."
    )
    if result["improvement"]:
        lines += ["", "| X | Y | P(X > Y) |", "|---|---|---|"]
        for pair in result["improvement"]:
            estimate = {k: pair[k] for k in ("point", "low", "high")}
            lines.append(f"| {pair['x']} | {pair['y']} | {_cell(estimate)} |")
    return "\n".join(lines) + "\n"


def curve_panels(entries: list[Entry], normalize: Callable | None, reps: int = stats.REPS) -> dict[str, list]:
    """Per task, per entry (with its colour index): steps, the mean curve over runs and its 95 % bootstrap band.
    Finished runs (all runs while none has finished) are interpolated onto the steps any of them logged, within the
    span all of them cover."""
    panels: dict[str, list] = {}
    for index, entry in enumerate(entries):
        for task, runs in entry.tasks().items():
            finished = [r for r in runs if len(r.steps) and r.final is not None]
            runs = finished or [r for r in runs if len(r.steps)]  # a run in progress would cut the others short
            if not runs:
                continue
            start, end = max(r.steps[0] for r in runs), min(r.steps[-1] for r in runs)
            grid = np.unique(np.concatenate([r.steps for r in runs]))
            grid = grid[(grid >= start) & (grid <= end)]
            if not len(grid):
                continue
            curves = np.stack([np.interp(grid, r.steps, r.values) for r in runs])
            if normalize is not None:
                curves = np.vectorize(lambda v, t=task: normalize(t, v))(curves)
            panels.setdefault(task, []).append((entry.label, index, grid, *stats.mean_band(curves, reps)))
    return panels


def draw(entries: list[Entry], result: dict, out_dir: Path, reps: int = stats.REPS) -> list[Path]:
    """learning_curves.png (one panel per task), and performance_profile.png when the scores are comparable
    across tasks (human-normalised) or there is one task."""
    from rl_lab.figures import plot_curve_bands, plot_performance_profile

    _, normalize, _ = scoring(entries, result["metric"], result["target"])
    paths = []
    panels = curve_panels(entries, normalize, reps)
    ylabel = result["score"]
    if panels:
        xlabel = "environment steps" if all(r.agent for e in entries for r in e.runs) else "step"
        paths.append(plot_curve_bands(panels, out_dir / "learning_curves.png", xlabel, ylabel))
    tasks = {t for row in result["entries"] for t in row["tasks"]}
    if result["entries"] and (normalize is not None or len(tasks) == 1):
        finals = np.concatenate([np.concatenate(list(map(np.array, r["scores"].values()))) for r in result["entries"]])
        margin = 0.02 * (finals.max() - finals.min()) or 0.1 * abs(finals.max()) or 1.0
        taus = np.linspace(finals.min() - margin, finals.max() + margin, 101)
        labels = {e.label: i for i, e in enumerate(entries)}
        profiles = []
        for row in result["entries"]:
            scores = [np.array(s) for s in row["scores"].values()]
            profiles.append((row["label"], labels[row["label"]], taus, *stats.performance_profile(scores, taus, reps)))
        paths.append(plot_performance_profile(profiles, out_dir / "performance_profile.png", ylabel))
    return paths

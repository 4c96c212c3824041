"""Statistics of RL results over many runs, after Agarwal et al. (2021), "Deep RL at the edge of the statistical
precipice" (the rliable library's definitions, in numpy alone: rliable 1.2 does not import beside pandas 3).

Scores come as one 1-D array per task (an env id), holding the final score of each run (seed) on that task; tasks
may have different numbers of runs. Aggregates pool every run of every task:

    iqm             interquartile mean: the mean of the middle 50 % of the scores, 25 % cut at each end
                    (scipy.stats.trim_mean(x, 0.25), as rliable); robust to outlier runs, less noisy than the median
    mean, median
    optimality_gap  target - mean(min(score, target)): how far the runs fall short of `target` (lower is better)

Confidence intervals come from the stratified bootstrap: each resample draws, within every task, as many runs as
the task has, with replacement, so every resample keeps the tasks' proportions; the interval is the 2.5 and 97.5
percentiles of the statistic over the resamples (rliable's default "percentile" method). The probability of
improvement P(X > Y) is the Mann-Whitney statistic per task (ties count one half), averaged over tasks. A
performance profile is the fraction of runs scoring above each threshold tau (the run-score distribution).

Torch-free and quiet: only numpy. Every function takes a `seed`, so the same inputs give the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
REPS = 2000  # bootstrap resamples (rliable's papers use 50,000; 2,000 move a 95 % bound by well under its width)


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its bootstrap confidence interval."""

    point: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def format(self, digits: int = 3) -> str:
        return f"{self.point:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


def iqm(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: int(n / 4) scores cut from each end (scipy.stats.trim_mean(x, 0.25))."""
    scores = np.sort(np.asarray(scores, dtype=float), axis=axis)
    n = scores.shape[axis]
    cut = int(0.25 * n)
    return np.take(scores, range(cut, n - cut), axis=axis).mean(axis=axis)


def optimality_gap(scores: np.ndarray, target: float, axis: int = -1) -> np.ndarray:
    """target - mean(min(scores, target)): the average shortfall from `target`; scores above it count as `target`."""
    return target - np.minimum(np.asarray(scores, dtype=float), target).mean(axis=axis)


def aggregates(target: float | None = None) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The four aggregate statistics of the paper, each reducing the last axis; no optimality gap without a target."""
    found = {"iqm": iqm, "mean": lambda x: np.mean(x, axis=-1), "median": lambda x: np.median(x, axis=-1)}
    if target is not None:
        found["optimality_gap"] = lambda x: optimality_gap(x, target)
    return found


def _tasks(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    tasks = [np.asarray(s, dtype=float).ravel() for s in scores]
    if not tasks or any(len(t) == 0 for t in tasks):
        raise ValueError("every task needs at least one run")
    return tasks


def stratified_resamples(scores: Sequence[np.ndarray], reps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One (reps, n_task) array per task: each row draws the task's n_task runs with replacement."""
    return [task[rng.integers(0, len(task), size=(reps, len(task)))] for task in _tasks(scores)]


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The (1 - confidence) / 2 and (1 + confidence) / 2 percentiles of bootstrap samples along axis 0."""
    low, high = np.percentile(samples, [50 * (1 - confidence), 50 * (1 + confidence)], axis=0)
    return low, high


def _estimate(point, samples: np.ndarray) -> Estimate:
    low, high = percentile_interval(samples)
    return Estimate(float(point), float(low), float(high))


def interval_estimates(
    scores: Sequence[np.ndarray], target: float | None = None, reps: int = REPS, seed: int = 0
) -> dict[str, Estimate]:
    """IQM, mean, median (and the optimality gap to `target`) of all runs, with stratified bootstrap 95 % CIs."""
    tasks = _tasks(scores)
    pooled = np.concatenate(tasks)
    resampled = np.concatenate(stratified_resamples(tasks, reps, np.random.default_rng(seed)), axis=1)
    found = {}
    for name, statistic in aggregates(target).items():
        found[name] = _estimate(statistic(pooled), statistic(resampled))
    return found


def probability_of_improvement(x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> float:
    """P(X > Y): for each task, the chance that a random run of X beats a random run of Y (ties count 1/2),
    averaged over the tasks; `x` and `y` list the same tasks in the same order."""
    x, y = _tasks(x), _tasks(y)
    if len(x) != len(y):
        raise ValueError("x and y must have the same tasks")
    return float(np.mean([_beats(a, b) for a, b in zip(x, y, strict=True)]))


def _beats(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mann-Whitney U / (n * m) along the last axis: P(a > b) + P(a = b) / 2 over all pairs of a run of a and of b."""
    diff = a[..., :, None] - b[..., None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(-2, -1))


def improvement_estimate(x: Sequence[np.ndarray], y: Sequence[np.ndarray], reps: int = REPS, seed: int = 0) -> Estimate:
    """P(X > Y) with a 95 % CI from stratified bootstrap resamples of X and of Y, drawn independently."""
    rng = np.random.default_rng(seed)
    x_samples, y_samples = stratified_resamples(x, reps, rng), stratified_resamples(y, reps, rng)
    per_task = [_beats(a, b) for a, b in zip(x_samples, y_samples, strict=True)]
    return _estimate(probability_of_improvement(x, y), np.mean(per_task, axis=0))


def performance_profile(
    scores: Sequence[np.ndarray], taus: np.ndarray, reps: int = REPS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of runs with a score above each tau (per task, averaged over tasks): the point estimate and the
    95 % band (stratified bootstrap), each of len(taus)."""
    taus = np.asarray(taus, dtype=float)

    def profile(tasks: list[np.ndarray]) -> np.ndarray:  # each task (..., n) -> (..., len(taus)), then the mean
        return np.mean([(t[..., None] > taus).mean(axis=-2) for t in tasks], axis=0)

    tasks = _tasks(scores)
    samples = profile(stratified_resamples(tasks, reps, np.random.default_rng(seed)))
    return (profile(tasks), *percentile_interval(samples))


def mean_band(values: np.ndarray, reps: int = REPS, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learning curves (runs, points) -> the mean over runs at each point and its 95 % bootstrap band; one resample
    of the runs serves every point, so the band is that of whole curves."""
    values = np.asarray(values, dtype=float)
    rows = np.random.default_rng(seed).integers(0, len(values), size=(reps, len(values)))
    return (values.mean(axis=0), *percentile_interval(values[rows].mean(axis=1)))

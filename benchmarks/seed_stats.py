"""Benchmark trials over many seeds, judged as `rl-lab compare` judges experiments (rl_lab.stats, Agarwal et al.
2021): IQM of the final return and IQM of the env steps to solve, each with a 95 % stratified bootstrap CI, and the
probability that a variant improves on the baseline. A seed that never solves counts with the env steps it ran (its
whole budget: a lower bound on its steps to solve) in the IQM, and after every seed that solves in P(solves
sooner). `SolveWatch` evaluates a policy during training, alike for every library. Imported by the *_vs_sb3.py
scripts of this folder.
"""

from __future__ import annotations

import time

import numpy as np

from rl_lab import stats
from rl_lab.experiments import parse_seeds

EVAL_EPISODES = 20
EVAL_SEED_OFFSET = 10_000  # our eval.seed_offset: every library's policy is evaluated on the same envs
SOLVED = 475.0  # CartPole-v1's reward threshold


class SolveWatch:
    """Evaluates every `every` env steps (EVAL_EPISODES greedy episodes on envs seeded seed + EVAL_SEED_OFFSET, through
    rl_lab.rl.evaluation), keeps the evaluation time apart, and notes the first step where the mean reaches SOLVED."""

    def __init__(self, seed: int, every: int):
        self.seed, self.every, self.next = seed, every, every
        self.eval_s, self.evals, self.solved_at = 0.0, [], None

    def due(self, step: int) -> bool:
        return step >= self.next

    def check(self, policy, step: int) -> bool:
        """Evaluate now; whether the policy has been solved (now or before)."""
        from rl_lab.rl.evaluation import evaluate

        while self.next <= step:
            self.next += self.every
        start = time.perf_counter()
        mean = float(evaluate(policy, "CartPole-v1", EVAL_EPISODES, self.seed + EVAL_SEED_OFFSET)["returns"].mean())
        self.eval_s += time.perf_counter() - start
        self.evals.append([step, round(mean, 1)])
        if mean >= SOLVED and self.solved_at is None:
            self.solved_at = step
        return self.solved_at is not None


def seeds_argument(values: list[str]) -> list[int]:
    """`--seeds 0-9`, `--seeds 0 1 2` or `--seeds 0-4,9` -> the seeds."""
    return parse_seeds(",".join(values))


def rows_from_trials(trials: list[dict], labels: dict[str, str]) -> dict[str, dict]:
    """Trials ({"variant", "final_return", "solved_at", "env_steps"}; failed ones hold "error") -> judge's rows."""
    rows = {}
    for key, label in labels.items():
        ok = [t for t in trials if t["variant"] == key and "error" not in t]
        rows[key] = {
            "label": label,
            "finals": [t["final_return"] for t in ok],
            "solved_at": [t["solved_at"] for t in ok],
            "budgets": [t["env_steps"] for t in ok],
        }
    return rows


def judge(rows: dict[str, dict], baseline: str) -> dict[str, dict]:
    """rows: variant key -> {"label", "finals": [final return per seed], "solved_at": [env steps or None],
    "budgets": [env steps run]}. Returns per variant the IQM estimates and P(variant > baseline)."""
    judged = {}
    # for "solves sooner" a seed that never solves ranks after every seed that does, and ties with the others
    never = 1 + max((b for row in rows.values() for b in row["budgets"]), default=0)

    def ranked(row: dict) -> np.ndarray:
        return np.array([never if s is None else s for s in row["solved_at"]], dtype=float)

    for key, row in rows.items():
        if not row["finals"]:
            judged[key] = {"label": row["label"], "seeds": 0}
            continue
        finals = np.array(row["finals"], dtype=float)
        steps = np.array([b if s is None else s for s, b in zip(row["solved_at"], row["budgets"], strict=True)], float)
        entry = {
            "label": row["label"],
            "seeds": len(finals),
            "solved": sum(s is not None for s in row["solved_at"]),
            "final_return_iqm": stats.interval_estimates([finals])["iqm"].to_dict(),
            "steps_to_solve_iqm": stats.interval_estimates([steps])["iqm"].to_dict(),
            "finals": finals.tolist(),
            "steps_to_solve": steps.tolist(),
        }
        base = rows[baseline]
        if key != baseline and base["finals"]:
            better = stats.improvement_estimate([finals], [np.array(base["finals"], float)])
            sooner = stats.improvement_estimate([ranked(base)], [ranked(row)])  # the baseline needs more steps
            entry["p_higher_return_than_baseline"] = better.to_dict()
            entry["p_solves_sooner_than_baseline"] = sooner.to_dict()
        judged[key] = entry

    return judged


def _cell(value: dict | None, digits: int = 4) -> str:
    return "-" if value is None else stats.Estimate(**value).format(digits)


def table(judged: dict[str, dict], baseline: str) -> str:
    """Markdown: one row per variant."""
    lines = [
        f"| variant | solved | IQM final return | IQM env steps to solve | P(return > {baseline}) | "
        f"P(solves sooner than {baseline}) |",
        "|---|---|---|---|---|---|",
    ]
    for row in judged.values():
        if not row["seeds"]:
            lines.append(f"| {row['label']} | 0 trials | - | - | - | - |")
            continue
        cells = [
            row["label"],
            f"{row['solved']}/{row['seeds']}",
            _cell(row["final_return_iqm"]),
            _cell(row["steps_to_solve_iqm"]),
            _cell(row.get("p_higher_return_than_baseline"), 3),
            _cell(row.get("p_solves_sooner_than_baseline"), 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"(point estimate [95 % stratified bootstrap CI, {stats.REPS} resamples]; a seed that never solves counts "
        "with the env steps it ran)"
    )
    return "\n".join(lines)

"""The shipped configs as a suite: which budget each agent needs on each env, read from configs/*.yaml itself.

When a run ends far from its env's solved threshold (gymnasium's `reward_threshold`) with a budget well below the
one the repository's config for that agent, env and env settings trains with, `budget_hint` says so in one line,
naming that config: the usual reason an agent seems not to learn off its home env is a budget made for another env.
No table in code: adding a config to configs/ adds its budget. Pendulum has no threshold, so it gets no hint.
Reads YAML only (no torch); the docs' measured results are docs/CLASSIC_CONTROL.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from rl_lab.config import EnvConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the repository's configs (an editable install)
FAR = 0.5  # "far from solved": below threshold - FAR * |threshold|
WELL_BELOW = 0.5  # "a budget well below": under this share of the suite config's train.total_steps


@dataclass(frozen=True)
class SuiteConfig:
    path: Path
    agent: str
    env_id: str
    env_kwargs: dict
    total_steps: int


def suite_configs(directory: Path = CONFIGS) -> list[SuiteConfig]:
    """Every agent config in `directory` (not its subfolders): its agent, env and budget; unreadable files skipped."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
            agent, env = data["agent"]["name"], data.get("env") or {}
            steps = int(data["train"]["total_steps"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            continue
        found.append(SuiteConfig(path, agent, env.get("id", EnvConfig.id), env.get("kwargs") or {}, steps))
    return found


def budget_hint(config, summary: dict, directory: Path = CONFIGS) -> str | None:
    """One line when the run (`config`, its `summary.json`) ended far from solving its env with a budget well below
    the smallest budget of the suite's configs for the same agent, env id and env kwargs; else None."""
    from rl_lab.comparison import reward_threshold

    env, steps = config.env, summary["env_steps"]
    final = summary["final_eval"]["return_mean"]
    threshold = reward_threshold(env.id)
    if threshold is None or final >= threshold - FAR * abs(threshold):
        return None
    same = [
        s
        for s in suite_configs(directory)
        if (s.agent, s.env_id, s.env_kwargs) == (config.agent.name, env.id, dict(env.kwargs))
    ]
    if not same:
        return None
    suite = min(same, key=lambda s: s.total_steps)
    if steps >= WELL_BELOW * suite.total_steps:
        return None
    return (
        f"hint: {config.agent.name} on {env.id} usually needs ~{_steps(suite.total_steps)} steps "
        f"({_shown(suite.path)}); this run had {_steps(steps)} and ended at {final:.1f} (solved: {threshold:g})"
    )


def _steps(n: int) -> str:
    """80000 -> 80k, 1000000 -> 1M, 1500000 -> 1.5M."""
    for size, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _shown(path: Path) -> str:
    """The path relative to the working directory when it is inside it (configs/acrobot_a2c.yaml)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)

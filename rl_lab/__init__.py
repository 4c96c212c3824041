"""rl-lab: reinforcement learning on PyTorch and gymnasium.

The Python API (rl_lab.api, imported on first use so `import rl_lab` stays cheap):

    run = rl_lab.train("configs/cartpole_dqn.yaml", overrides={"agent.optim.lr": 1e-3, "seed": 3})
    agent = rl_lab.load(run.dir)
    actions = agent.act(observations)              # a batch in, a batch out; greedy unless deterministic=False
    rl_lab.evaluate(agent, episodes=20)            # or a run directory

Errors the user can fix raise rl_lab.UserError, as the command line's exit status 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rl_lab.errors import UserError

if TYPE_CHECKING:
    from rl_lab.api import Agent, Model, TrainedRun, evaluate, load, resume, train

__all__ = ["Agent", "Model", "TrainedRun", "UserError", "__version__", "evaluate", "load", "resume", "train"]
_API = {"Agent", "Model", "TrainedRun", "evaluate", "load", "resume", "train"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from rl_lab import api

        return getattr(api, name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("rl-lab")
        except PackageNotFoundError:  # a source tree on sys.path, not installed
            return "0+unknown"
    raise AttributeError(f"module 'rl_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

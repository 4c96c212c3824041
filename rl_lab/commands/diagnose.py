"""`rl-lab diagnose RUN_DIR`: the lectures' checks and pictures (rl_lab.diagnostics) for the network of any run.

The checks about initialisation (initial loss, overfitting a tiny subset until its loss is near zero, activation
statistics, update ratios under the run's own optimiser and learning rate) run on the network as the run's config
builds it, before training; the pictures (first-layer filters, saliency, occlusion, embeddings) on the trained
weights of the latest checkpoint. A task run is diagnosed on its validation images and labels. An agent run on
observations from greedy episodes, labelled with the trained network's greedy actions: its Q-values are the class
scores, so a saliency map shows which pixels drive the chosen action. Everything lands in RUN_DIR/diagnostics/
(or --out).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rl_lab.errors import UserError

AT_INIT = ("initial_loss", "overfit_tiny", "activation_stats", "update_ratio")


def _network(obj) -> nn.Module:
    """The network whose encoder an export would take: the model itself, or an agent's first network."""
    from rl_lab.backbone.transfer import find_encoder

    encoder = find_encoder(obj)
    if isinstance(obj, nn.Module):
        return obj
    return next(v for v in vars(obj).values() if isinstance(v, nn.Module) and encoder in v.modules())


def _agent_data(config, agent, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n observations from greedy episodes of the trained agent, labelled with its greedy actions."""
    from rl_lab.envs import make_env

    env = make_env(config.env.id, **config.env.kwargs)
    obs, _ = env.reset(seed=config.seed + config.eval.seed_offset)
    observations = []
    while len(observations) < n:
        observations.append(obs)
        obs, _, terminated, truncated, _ = env.step(int(agent.greedy(obs[None])[0]))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    images = torch.as_tensor(np.stack(observations))
    return images, torch.as_tensor(agent.greedy(np.stack(observations))).long()


def diagnose(run_dir: str | Path, only: list[str] | None = None, n: int = 500, out: str | Path | None = None):
    from rl_lab.config import TaskConfig
    from rl_lab.diagnostics import DIAGNOSTICS
    from rl_lab.runs import open_run

    unknown = sorted(set(only or ()) - set(DIAGNOSTICS))
    if unknown:
        raise UserError(f"unknown diagnostic(s) {unknown}; choose from {', '.join(DIAGNOSTICS)}")
    if n < 20:
        raise UserError(f"--n {n}: need at least 20 examples")
    run = open_run(run_dir)
    checkpoint = run.checkpoint  # found before the trainer is built
    if isinstance(run.config, TaskConfig):
        at_init = copy.deepcopy(run.trainer.model).eval()
        trained = run.trainer.load_weights(checkpoint)
        val = run.trainer.data["val"]
        images, labels = val.images[:n], val.labels[:n]
    else:
        at_init = copy.deepcopy(_network(run.trainer.agent))
        agent = run.trainer.load_weights(checkpoint)
        trained = _network(agent)
        images, labels = _agent_data(run.config, agent, n)
    out_dir = Path(out) if out else run.dir / "diagnostics"
    section = run.config.task if isinstance(run.config, TaskConfig) else run.config.agent
    options = {"update_ratio": {"optim": getattr(section, "optim", None)}}  # the run's optimiser and learning rate
    results = {}
    for name in only or list(DIAGNOSTICS):
        model = at_init if name in AT_INIT else trained
        try:
            results[name] = DIAGNOSTICS[name](model, images, labels, out_dir, **options.get(name, {}))
        except UserError as err:
            if only:  # asked for by name: its failure is the answer
                raise
            print(f"{name:<17} skipped: {err}")
            continue
        print(f"{name:<17} {_brief(results[name])}")
    print(f"diagnostics of {run.dir} ({len(labels)} examples) in {out_dir}")
    return results


def _brief(result: dict) -> str:
    """The scalars of a diagnostic's result, on one line, its verdict (ok) first."""
    items = [(k, v) for k, v in result.items() if isinstance(v, (bool, int, float)) and not isinstance(v, np.ndarray)]
    items.sort(key=lambda item: item[0] != "ok")
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items[:6])

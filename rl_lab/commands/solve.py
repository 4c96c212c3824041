"""`rl-lab solve TARGET`: solve a grid world by dynamic programming (rl_lab.rl.planning), print V* and the optimal
policy, draw them, and, given a run directory, compare the run's learned Q with Q* (max |Q - Q*| over the reachable
non-terminal states). Writes optimal.png, solve.png and solution.json to --out (default RUN_DIR/plots, else
runs/solve-MAP).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rl_lab.errors import UserError
from rl_lab.rl.planning import (
    bellman_residual,
    format_grid,
    greedy_policy,
    policy_evaluation,
    q_value_iteration,
    reachable,
    value_iteration,
)


def solve(target: str, gamma: float | None, slip: float | None, step_reward: float | None, out) -> dict:
    """Solve a map, env id, config or run; print V* and the policy; write figures and solution.json to `out`."""
    from rl_lab.figures import plot_grid_values
    from rl_lab.fileio import write_atomic

    env, gamma, run = _resolve(target, gamma, slip, step_reward)
    P, R, terminal, grid = env.P, env.R, env.terminal, env.grid
    V = value_iteration(P, R, terminal, gamma)
    Q = q_value_iteration(P, R, terminal, gamma)
    optimal = greedy_policy(Q)
    uniform = np.full_like(R, 1.0 / R.shape[1])
    live = reachable(P, grid.start) & ~terminal
    result = {
        "target": target,
        "map": list(grid.rows),
        "gamma": gamma,
        "slip": env.slip,
        "step_reward": env.step_reward,
        "states": grid.cells.tolist(),
        "reachable_nonterminal": np.flatnonzero(live).tolist(),
        "V": V.tolist(),
        "Q": Q.tolist(),
        "bellman_residual": bellman_residual(P, R, terminal, gamma, V),
    }
    print(f"{grid.name}: gamma={gamma}, slip={env.slip}, step reward {env.step_reward}")
    print(f"\nV* (value iteration; Bellman residual {result['bellman_residual']:.1e}):\n{format_grid(grid, V)}")
    print(f"\noptimal policy:\n{format_grid(grid, policy=optimal)}")
    best = ("optimal policy: V*", V, optimal)
    panels = [best]
    try:
        V_random = policy_evaluation(P, R, terminal, gamma, uniform)
        result["V_random"] = V_random.tolist()
        print(f"\nV of the uniformly random policy:\n{format_grid(grid, V_random)}")
        panels.insert(0, ("random policy: V^random", V_random, uniform))
    except UserError as err:  # e.g. gamma=1 and a region without terminal cells
        print(f"\nrandom policy: {err}")
    if run is not None:
        learned, panel = _compare_run(run, env, gamma, V, Q, optimal, live)
        result.update(learned)
        panels += [panel] if panel else []
    out = Path(out) if out else (run.dir / "plots" if run else Path("runs") / f"solve-{grid.name}")
    out.mkdir(parents=True, exist_ok=True)
    title = f"{grid.name}, gamma={gamma}" + (f", slip={env.slip}" if env.slip else "")
    figures = [plot_grid_values(grid, [best], out / "optimal.png", title)]
    figures.append(plot_grid_values(grid, panels, out / "solve.png", title))
    write_atomic(out / "solution.json", json.dumps(result, indent=1) + "\n")
    print(f"\nfigures: {', '.join(map(str, figures))}\nsolution: {out / 'solution.json'}")
    return result


def _resolve(target: str, gamma, slip, step_reward):
    """The grid-world env (unwrapped), gamma, and the opened run if the target is a run directory."""
    import gymnasium as gym

    from rl_lab.config import TaskConfig
    from rl_lab.envs import check_env_id
    from rl_lab.envs.gridworld import MAPS, GridWorldEnv
    from rl_lab.loader import load_config
    from rl_lab.runs import open_run

    path = Path(target)
    run = None
    if path.is_dir() or path.suffix in (".yaml", ".yml"):
        if slip is not None or step_reward is not None:
            raise UserError("--slip and --step-reward apply to maps and env ids; a config fixes its own env.kwargs")
        if path.is_dir():
            run = open_run(path)
            config = run.config
        else:
            config = load_config(path)
        if isinstance(config, TaskConfig):
            raise UserError(f"{target} is a supervised task, not an agent in an env: rl-lab solve needs a grid world")
        env_id, kwargs = config.env.id, dict(config.env.kwargs)
        if gamma is None:
            gamma = config.agent.gamma if hasattr(config.agent, "gamma") else 1.0
    else:
        kwargs = {k: v for k, v in (("slip", slip), ("step_reward", step_reward)) if v is not None}
        if target in MAPS or path.is_file():
            env_id, kwargs["map"] = "rl_lab/GridWorld-v0", target
        else:
            env_id = target
            check_env_id(env_id)
        gamma = 1.0 if gamma is None else gamma
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"--gamma {gamma}: must be in [0, 1]")
    try:
        env = gym.make(env_id, **kwargs).unwrapped
    except TypeError as err:
        raise UserError(f"env kwargs do not fit {env_id}: {err}") from None
    if not isinstance(env, GridWorldEnv):
        raise UserError(
            f"{env_id} is not a grid world: rl-lab solve needs an env with a known model (rl_lab/GridWorld-v0)"
        )
    return env, gamma, run


def _compare_run(run, env, gamma: float, V_star, Q_star, optimal, live) -> tuple[dict, tuple | None]:
    """The oracle: the run's agent (latest checkpoint) against Q* and pi*, on the reachable non-terminal states.

    Returns figures for solution.json and a figure panel: max_a Q (agents with a `q_net`) or the value of the
    agent's greedy policy, with its greedy actions.
    """
    import torch

    from rl_lab.checkpoint import checkpoint_step

    checkpoint = run.checkpoint
    step = checkpoint_step(checkpoint)
    agent = run.trainer.load_weights(checkpoint)
    obs = env.observation(np.arange(env.n_states))
    greedy = np.eye(Q_star.shape[1])[agent.greedy(obs)]
    hits = (optimal * greedy).sum(axis=1) > 0
    result = {"run_step": step, "greedy_optimal_fraction": float(hits[live].mean())}
    print(f"\nrun {run.dir} at step {step}:")
    print(f"greedy action optimal in {hits[live].mean():.1%} of the reachable non-terminal states")
    panel = None
    try:
        V_greedy = policy_evaluation(env.P, env.R, env.terminal, gamma, greedy)
        result["greedy_value_gap_max"] = float((V_star - V_greedy)[live].max())
        print(f"max V*(s) - V^greedy(s) = {result['greedy_value_gap_max']:.4f}")
        panel = ("learned greedy policy: V^greedy", V_greedy, greedy)
    except UserError:
        print("the greedy policy never reaches a terminal cell from some state")
    if hasattr(agent, "q_net"):
        with torch.inference_mode():
            Q = agent.q_net(torch.as_tensor(obs, device=agent.device)).double().cpu().numpy()
        error = np.abs(Q - Q_star)[live]
        result.update(learned_Q=Q.tolist(), q_error_max=float(error.max()), q_error_mean=float(error.mean()))
        print(f"max |Q - Q*| = {error.max():.4f}, mean {error.mean():.4f} (reachable non-terminal states, all actions)")
        panel = ("learned: max_a Q, greedy policy", np.where(env.terminal, 0.0, Q.max(axis=1)), greedy)
    return result, panel

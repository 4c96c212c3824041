"""Policy evaluation on fresh, separately seeded envs: exactly N complete episodes, run in parallel.

For Atari this is the protocol of the DQN papers: episodes start after random no-ops, are capped at 108k frames,
score the raw game score (no clipping, a lost life does not end them), epsilon-greedy with eval.epsilon (0.05
in the Atari configs), reported as mean +- std and as a human-normalised score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rl_lab.envs import make_vector_env, vector_kind
from rl_lab.envs.atari import human_normalized


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    env_id: str,
    episodes: int,
    seed: int,
    epsilon: float = 0.0,
    env_kwargs: dict | None = None,
    max_parallel: int = 10,
    vector: str = "sync",
    deterministic: bool = True,
    film=None,
) -> dict[str, np.ndarray]:
    """Returns and lengths of `episodes` episodes under `policy` (epsilon-greedy when epsilon > 0; with
    `deterministic=False` the actions are `policy(obs, deterministic=False)`: samples from a policy's distribution).

    Each parallel env runs a fixed quota of episodes, so short episodes cannot crowd out long ones.
    A stateful policy (e.g. recurrent) may define `reset(mask)`: it is called with all True before the first
    step and with the envs whose episode just ended after each step.
    `film` (rl_lab.rl.video.Film) records the episodes it picks as they are played: in-process envs that render.
    """
    n = min(episodes, max_parallel)
    quota = np.full(n, episodes // n) + (np.arange(n) < episodes % n)
    if film is None:
        envs = make_vector_env(env_id, n, vector, **(env_kwargs or {}))
    else:
        envs = make_vector_env(env_id, n, "sync", render_mode="rgb_array", **(env_kwargs or {}))
        film.attach(envs, quota)
    rng = np.random.default_rng(seed)
    envs.single_action_space.seed(seed)
    returns, lengths = [[] for _ in range(n)], [[] for _ in range(n)]
    ep_return, ep_length = np.zeros(n), np.zeros(n, dtype=np.int64)
    obs, _ = envs.reset(seed=seed)
    reset = getattr(policy, "reset", None)
    if reset is not None:
        reset(np.ones(n, dtype=bool))
    while any(len(r) < q for r, q in zip(returns, quota, strict=True)):
        actions = policy(obs) if deterministic else policy(obs, deterministic=False)
        if epsilon > 0:
            explore = rng.random(n) < epsilon
            actions = np.where(explore, [envs.single_action_space.sample() for _ in range(n)], actions)
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        ep_return += rewards
        ep_length += 1
        if reset is not None:
            reset(terminated | truncated)
        for i in np.flatnonzero(terminated | truncated):
            if len(returns[i]) < quota[i]:
                returns[i].append(ep_return[i])
                lengths[i].append(ep_length[i])
            ep_return[i], ep_length[i] = 0.0, 0
    envs.close()
    if film is not None:
        film.close()
    return {"returns": np.concatenate(returns), "lengths": np.concatenate(lengths)}


def evaluate_run(
    policy, config, episodes: int, seed: int, epsilon: float, film=None, deterministic: bool | None = None
) -> dict[str, np.ndarray]:
    """`evaluate` on a run's env (env.id, env.kwargs, the vector kind it trained on), acting as `deterministic`
    (default eval.deterministic) says; torch's RNG is seeded with `seed` for sampled actions, and restored after."""
    from rl_lab.seeding import seeded_torch

    env = config.env
    deterministic = config.eval.deterministic if deterministic is None else deterministic
    with seeded_torch(seed):
        vector = eval_vector(env)
        return evaluate(
            policy, env.id, episodes, seed, epsilon, env.kwargs, vector=vector, deterministic=deterministic, film=film
        )


def eval_vector(env) -> str:
    """The vector env evaluation runs on, for a run's `env` settings: the kind it trained on, so the agent sees the
    same observations (ale-py's AtariVectorEnv pads a new episode's frame stack with zeros, gymnasium's repeats the
    first frame); in-process for everything else."""
    return "ale" if vector_kind(env.id, env.num_envs, env.vector, **env.kwargs) == "ale" else "sync"


def eval_stats(result: dict[str, np.ndarray], env_id: str | None = None) -> dict[str, float]:
    """Summary of the returns; with `human_normalized` for a game with reference scores (envs.atari)."""
    returns = result["returns"]
    stats = {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "length_mean": float(result["lengths"].mean()),
        "episodes": int(len(returns)),
    }
    normalized = human_normalized(env_id, stats["return_mean"]) if env_id else None
    if normalized is not None:
        stats["human_normalized"] = normalized
    return stats


def format_eval_table(title: str, stats: dict[str, float]) -> str:
    rows = [
        ("episodes", f"{stats['episodes']}"),
        ("return mean", f"{stats['return_mean']:.2f}"),
        ("return std", f"{stats['return_std']:.2f}"),
        ("return min / max", f"{stats['return_min']:.1f} / {stats['return_max']:.1f}"),
        ("episode length", f"{stats['length_mean']:.1f}"),
    ]
    if "human_normalized" in stats:
        rows.append(("human-normalised", f"{100 * stats['human_normalized']:.1f} %"))
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * max(len(title), 30)]
    lines += [f"{name:<{width}}  {value:>12}" for name, value in rows]
    return "\n".join(lines)

"""Returns and advantages over rollouts of shape (T, N): T steps of N parallel envs, computed once for every agent.

Every function takes, per step t, the reward r_t, `next_values` = V(s_{t+1}) of the true next state (for a step that
ended its episode: the final observation, before the vector env reset it), and the `terminated` / `truncated` flags.
A terminated step never bootstraps (the true value after it is 0); a truncated step (time limit) and the last step of
a rollout cut mid-episode bootstrap from V(s_{t+1}). Pass next_values = 0 for plain Monte-Carlo returns.
The recursions run backwards over time and are vectorised over envs.
"""

from __future__ import annotations

import torch


def discounted_returns(
    rewards: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """Reward-to-go G_t = r_t + gamma * G_{t+1} within an episode, bootstrapped where the data stops.

    Over a whole episode this is REINFORCE's discounted reward-to-go; over an n-step rollout it is A2C's n-step
    return (each step looks ahead to the end of the rollout, at most n steps).
    """
    returns = torch.empty_like(rewards)
    ahead = next_values[-1] * (~terminated[-1])
    for t in reversed(range(len(rewards))):
        if t < len(rewards) - 1:
            ended = terminated[t] | truncated[t]
            ahead = torch.where(ended, next_values[t] * (~terminated[t]), returns[t + 1])
        returns[t] = rewards[t] + gamma * ahead
    return returns


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016): A_t = sum_k (gamma lam)^k delta_{t+k} in the episode.

    delta_t = r_t + gamma V(s_{t+1}) [0 if terminated] - V(s_t). lam = 1 gives the n-step return minus V(s_t);
    lam = 0 the one-step TD error.
    """
    deltas = rewards + gamma * next_values * (~terminated) - values
    carry = (~(terminated | truncated)).to(rewards.dtype) * gamma * lam
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages


def episode_returns(
    rewards: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """The whole discounted return G_0 of each step's episode, at every step of it (REINFORCE without reward-to-go).

    The rollout must start at episode starts (step 0 of every env begins an episode), as REINFORCE's do.
    """
    to_go = discounted_returns(rewards, next_values, terminated, truncated, gamma)
    totals = torch.empty_like(to_go)
    totals[0] = to_go[0]
    for t in range(1, len(rewards)):
        started = terminated[t - 1] | truncated[t - 1]
        totals[t] = torch.where(started, to_go[t], totals[t - 1])
    return totals

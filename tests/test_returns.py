"""Returns and advantages against brute-force sums written straight from their definitions, per env and per step."""

from __future__ import annotations

import pytest
import torch

from rl_lab.rl.returns import discounted_returns, episode_returns, gae

T, N = 40, 6


def random_rollout(seed: int):
    """Rewards and values with episode ends of both kinds scattered through a (T, N) rollout."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g, dtype=torch.float64)
    values = torch.randn(T, N, generator=g, dtype=torch.float64)
    final_values = torch.randn(T, N, generator=g, dtype=torch.float64)  # V(final obs) where an episode ends
    ends = torch.rand(T, N, generator=g)
    terminated = ends < 0.08
    truncated = (ends >= 0.08) & (ends < 0.14)
    done = terminated | truncated
    next_values = torch.where(done, final_values, torch.cat([values[1:], torch.randn(1, N, generator=g).double()]))
    assert terminated.any() and truncated.any() and not done[-1].all()
    return rewards, values, next_values, terminated, truncated


def brute_returns(rewards, next_values, terminated, truncated, gamma):
    out = torch.zeros_like(rewards)
    for i in range(N):
        for t in range(T):
            total, k = 0.0, t
            while True:
                total += gamma ** (k - t) * rewards[k, i].item()
                if terminated[k, i]:
                    break
                if truncated[k, i] or k == T - 1:
                    total += gamma ** (k - t + 1) * next_values[k, i].item()
                    break
                k += 1
            out[t, i] = total
    return out


def brute_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    out = torch.zeros_like(rewards)
    for i in range(N):
        for t in range(T):
            total, k = 0.0, t
            while True:
                bootstrap = 0.0 if terminated[k, i] else gamma * next_values[k, i].item()
                delta = rewards[k, i].item() + bootstrap - values[k, i].item()
                total += (gamma * lam) ** (k - t) * delta
                if terminated[k, i] or truncated[k, i] or k == T - 1:
                    break
                k += 1
            out[t, i] = total
    return out


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_discounted_returns_match_brute_force(gamma):
    rewards, _, next_values, terminated, truncated = random_rollout(0)
    expected = brute_returns(rewards, next_values, terminated, truncated, gamma)
    torch.testing.assert_close(discounted_returns(rewards, next_values, terminated, truncated, gamma), expected)


def test_truncation_bootstraps_and_termination_does_not():
    """One env, three steps ending at t=1: the final value 10 counts after a truncation and never after termination."""
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    next_values = torch.tensor([[5.0], [10.0], [7.0]])  # V(s_1), V(final obs of episode 1), V(s_3)
    no = torch.zeros(3, 1, dtype=torch.bool)
    end = torch.tensor([[False], [True], [False]])
    truncated_returns = discounted_returns(rewards, next_values, no, end, 0.5)
    terminated_returns = discounted_returns(rewards, next_values, end, no, 0.5)
    torch.testing.assert_close(truncated_returns, torch.tensor([[1 + 0.5 * (1 + 0.5 * 10)], [1 + 0.5 * 10], [4.5]]))
    torch.testing.assert_close(terminated_returns, torch.tensor([[1.5], [1.0], [4.5]]))


@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (0.9, 0.0), (0.8, 1.0)])
def test_gae_matches_brute_force(gamma, lam):
    rewards, values, next_values, terminated, truncated = random_rollout(1)
    expected = brute_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    torch.testing.assert_close(gae(rewards, values, next_values, terminated, truncated, gamma, lam), expected)


def test_gae_lambda_one_is_the_n_step_return_minus_the_value():
    rewards, values, next_values, terminated, truncated = random_rollout(2)
    advantages = gae(rewards, values, next_values, terminated, truncated, 0.95, 1.0)
    returns = discounted_returns(rewards, next_values, terminated, truncated, 0.95)
    torch.testing.assert_close(advantages + values, returns)


def test_episode_returns_give_every_step_its_episodes_whole_return():
    rewards, _, next_values, terminated, truncated = random_rollout(3)
    gamma = 0.97
    to_go = brute_returns(rewards, next_values, terminated, truncated, gamma)
    expected = torch.zeros_like(rewards)
    for i in range(N):
        start = 0
        for t in range(T):
            if t > 0 and (terminated[t - 1, i] or truncated[t - 1, i]):
                start = t
            expected[t, i] = to_go[start, i]
    torch.testing.assert_close(episode_returns(rewards, next_values, terminated, truncated, gamma), expected)

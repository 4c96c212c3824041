"""Advantage actor-critic, synchronous (A2C; Mnih et al. 2016): N parallel envs, n-step rollouts, one update each.

    loss = -mean(A_t log pi(a_t|s_t)) + value_coef * mean((V(s_t) - R_t)^2) - entropy_coef * mean(H[pi(.|s_t)])

A_t is the n-step advantage R_t - V(s_t) or GAE(lambda); R_t = A_t + V(s_t) is the critic's target. Both bootstrap
from V(s') at the end of the rollout and at time-limit truncations, never after termination (rl_lab.rl.returns).
The critic shares the actor's encoder or has its own; a recurrent encoder (lstm/gru) carries its state across
rollouts and is trained by truncated BPTT over each rollout. Env stepping and rollouts live in rl_lab.rl.onpolicy.
"""

from __future__ import annotations

import torch.nn.functional as F

from rl_lab.agents.configs import A2CConfig
from rl_lab.agents.policy_gradient import PolicyGradientAgent
from rl_lab.rl.onpolicy import Rollout
from rl_lab.rl.returns import discounted_returns, gae


class A2C(PolicyGradientAgent):
    def __init__(self, cfg: A2CConfig, observation_space, action_space, device, total_steps: int):
        super().__init__(cfg, observation_space, action_space, device, total_steps, value=True)
        self.n_steps = cfg.n_steps

    def advantages(self, rollout: Rollout):
        """(A, R) from the values seen while collecting: the update's targets do not move with its own gradient."""
        cfg, r = self.cfg, rollout
        if cfg.advantage == "gae":
            advantages = gae(r.rewards, r.values, r.next_values, r.terminated, r.truncated, cfg.gamma, cfg.gae_lambda)
            return advantages, advantages + r.values
        returns = discounted_returns(r.rewards, r.next_values, r.terminated, r.truncated, cfg.gamma)
        return returns - r.values, returns

    def update(self, rollout: Rollout, step: int) -> dict[str, float]:
        cfg = self.cfg
        self.net.train()  # batch statistics and dropout while learning; acting is in eval mode
        advantages, returns = self.advantages(rollout)
        if cfg.normalize_advantages and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        dist, values, _ = self.net(rollout.obs, rollout.state, rollout.starts)
        policy_loss = -(advantages * dist.log_prob(rollout.actions)).mean()
        value_loss = F.mse_loss(values, returns)
        entropy = dist.entropy().mean()
        loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
        grad_norm = self.gradient_step(loss, step)
        return {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "entropy": entropy.item(),
            "grad_norm": grad_norm,
        }

"""REINFORCE (Williams 1992) with the lecture's variance reductions, each a switch.

    grad J ~ 1/|D| sum_t grad log pi(a_t|s_t) * (G_t - b(s_t))

G_t is the whole episode's return (`reward_to_go: false`) or the (discounted, `gamma`) reward-to-go from t; the
baseline b is none, a moving average of the returns, or a learned value function V(s_t) (fit by regression on G_t,
with its own encoder or sharing the policy's). Each update uses `episodes_per_update` complete episodes played by
the vector envs (rl_lab.rl.onpolicy collects them). Read top to bottom: the weights of the log-probabilities, the
update; the settings are REINFORCEConfig in agents/configs.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rl_lab.agents.configs import REINFORCEConfig
from rl_lab.agents.policy_gradient import PolicyGradientAgent
from rl_lab.rl.onpolicy import Rollout
from rl_lab.rl.returns import discounted_returns, episode_returns


def reinforce_weights(
    cfg: REINFORCEConfig, rollout: Rollout, values: torch.Tensor | None, moving_average: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, G - b): the returns and what multiplies each log-probability, before any normalisation.

    Only a learned value function can bootstrap an episode cut by a time limit; without one the return just stops.
    """
    bootstrap = rollout.next_values if cfg.baseline == "learned_value" else torch.zeros_like(rollout.next_values)
    returns_fn = discounted_returns if cfg.reward_to_go else episode_returns
    returns = returns_fn(rollout.rewards, bootstrap, rollout.terminated, rollout.truncated, cfg.gamma)
    if cfg.baseline == "moving_average":
        return returns, returns - moving_average
    if cfg.baseline == "learned_value":
        return returns, returns - values.detach()
    return returns, returns


class REINFORCE(PolicyGradientAgent):
    def __init__(self, cfg: REINFORCEConfig, observation_space, action_space, device, total_steps: int):
        super().__init__(
            cfg, observation_space, action_space, device, total_steps, value=cfg.baseline == "learned_value"
        )
        self.episodes_per_update = cfg.episodes_per_update
        self.moving_average = torch.zeros((), dtype=torch.float64)  # checkpointed with the networks

    def update(self, rollout: Rollout, step: int) -> dict[str, float]:
        cfg, valid = self.cfg, rollout.valid
        self.net.train()  # batch statistics and dropout while learning; acting is in eval mode
        dist, values, _ = self.net(rollout.obs, rollout.state, rollout.starts)
        returns, advantages = reinforce_weights(cfg, rollout, values, float(self.moving_average))
        returns, advantages = returns[valid], advantages[valid]
        if cfg.baseline == "moving_average":
            m = cfg.baseline_momentum
            self.moving_average.mul_(m).add_((1 - m) * returns.mean().double())
        if cfg.normalize_advantages and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(advantages * dist.log_prob(rollout.actions)[valid]).mean()
        entropy = dist.entropy()[valid].mean()
        loss = policy_loss - cfg.entropy_coef * entropy
        metrics = {}
        if values is not None:
            value_loss = F.mse_loss(values[valid], returns)
            loss = loss + cfg.value_coef * value_loss
            metrics["value_loss"] = value_loss.item()
        grad_norm = self.gradient_step(loss, step)
        return {
            "policy_loss": policy_loss.item(),
            "entropy": entropy.item(),
            "grad_norm": grad_norm,
            "return_mean": returns.mean().item(),
            **metrics,
        }

    def state_dict(self) -> dict:
        return {**super().state_dict(), "moving_average": self.moving_average}

    def load_state_dict(self, state: dict, weights_only: bool = False) -> None:
        super().load_state_dict(state, weights_only)
        if not weights_only:
            self.moving_average = state["moving_average"].cpu().double()

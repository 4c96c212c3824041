"""Stochastic policies for policy-gradient agents: action distributions, their heads, and the policy network.

Categorical (Discrete actions) and diagonal Gaussian (Box actions) with exact log-probabilities and entropies.
PolicyNetwork = backbone encoder(s) + action head + optional value head, feed-forward or recurrent alike: it always
takes a time-major batch (T, B, ...) with the episode-start flags a recurrent encoder resets its state on.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_lab.backbone import EncoderSpec, LinearHead, build_encoder
from rl_lab.config import EncoderConfig
from rl_lab.distributed import own_rows
from rl_lab.errors import UserError

LOG_2PI = math.log(2 * math.pi)


class Categorical:
    """pi(a) = softmax(logits)[a] over the last dimension."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # normalised log-probabilities

    def sample(self, across_processes: bool = False) -> torch.Tensor:
        """Actions drawn from pi; `across_processes`: as one process with every data-parallel process's batch would
        draw them (rl_lab.distributed.own_rows; plain sampling in a single process)."""
        flat = self.logits.reshape(-1, self.logits.shape[-1]).exp()
        if across_processes:
            return own_rows(lambda p: torch.multinomial(p, 1), flat, fill=1.0).reshape(self.logits.shape[:-1])
        return torch.multinomial(flat, 1).reshape(self.logits.shape[:-1])

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self.logits.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.logits.exp() * self.logits).sum(-1)

    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1)


class DiagGaussian:
    """Independent normals per action dimension; log_prob and entropy sum over dimensions."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean, self.log_std = mean, log_std.expand_as(mean)

    def sample(self, across_processes: bool = False) -> torch.Tensor:
        """Actions drawn from pi; `across_processes` as in Categorical.sample."""
        if across_processes:
            flat = self.mean.reshape(-1, self.mean.shape[-1])
            return self.mean + self.log_std.exp() * own_rows(torch.randn_like, flat).reshape(self.mean.shape)
        return self.mean + self.log_std.exp() * torch.randn_like(self.mean)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - 0.5 * LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + 0.5 * LOG_2PI + self.log_std).sum(-1)

    def mode(self) -> torch.Tensor:
        return self.mean


class CategoricalHead(nn.Module):
    def __init__(self, in_dim: int, n_actions: int):
        super().__init__()
        self.logits = _init(LinearHead(in_dim, n_actions), 0.01)  # near-uniform first policy

    def forward(self, features: torch.Tensor) -> Categorical:
        return Categorical(self.logits(features))


class GaussianHead(nn.Module):
    """State-dependent mean, state-independent learned log standard deviation (as in A2C/PPO for MuJoCo)."""

    def __init__(self, in_dim: int, action_dim: int, log_std_init: float):
        super().__init__()
        self.mean = _init(LinearHead(in_dim, action_dim), 0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def forward(self, features: torch.Tensor) -> DiagGaussian:
        return DiagGaussian(self.mean(features), self.log_std)


def _init(head: LinearHead, gain: float) -> LinearHead:
    nn.init.orthogonal_(head.linear.weight, gain)
    nn.init.zeros_(head.linear.bias)
    return head


class PolicyNetwork(nn.Module):
    """pi(a|s) and, with `value=True`, V(s); the critic shares the actor's encoder or has its own copy."""

    def __init__(
        self,
        encoder: EncoderConfig,
        observation_space: gym.Space,
        action_space: gym.Space,
        value: bool,
        shared_encoder: bool,
        log_std_init: float = 0.0,
    ):
        super().__init__()
        if not isinstance(observation_space, gym.spaces.Box):
            raise UserError(
                f"policy-gradient agents need Box observations (one-hot a Discrete one), got {observation_space}"
            )
        spec = EncoderSpec(encoder.name, tuple(observation_space.shape), encoder.kwargs)
        self.actor_encoder = build_encoder(spec)
        self.critic_encoder = build_encoder(spec) if value and not shared_encoder else None
        self.recurrent = self.actor_encoder.recurrent
        features = self.actor_encoder.out_dim
        if isinstance(action_space, gym.spaces.Discrete):
            self.action_head = CategoricalHead(features, int(action_space.n))
            self.low = self.high = None
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.action_head = GaussianHead(features, action_space.shape[0], log_std_init)
            self.low, self.high = action_space.low, action_space.high
        else:
            raise UserError(f"policy-gradient agents support Discrete and 1-d Box actions, got {action_space}")
        self.value_head = _init(LinearHead(features, 1), 1.0) if value else None

    def encoders(self) -> list[nn.Module]:
        return [self.actor_encoder] + ([self.critic_encoder] if self.critic_encoder is not None else [])

    def initial_state(self, batch: int, device: torch.device | str) -> torch.Tensor | None:
        """Zero recurrent state of every encoder, concatenated on dim 0; None for feed-forward encoders."""
        if not self.recurrent:
            return None
        return torch.cat([encoder.initial_state(batch, device) for encoder in self.encoders()])

    def forward(
        self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor
    ) -> tuple[Categorical | DiagGaussian, torch.Tensor | None, torch.Tensor | None]:
        """obs (T, B, ...), starts (T, B) -> distribution over (T, B), values (T, B) or None, state after step T."""
        if not self.recurrent:
            steps, batch = starts.shape
            flat = obs.reshape(steps * batch, *obs.shape[2:])
            actor = self.actor_encoder(flat).reshape(steps, batch, -1)
            critic = actor if self.critic_encoder is None else self.critic_encoder(flat).reshape(steps, batch, -1)
            new_state = None
        else:
            parts = self.actor_encoder.parts
            actor, actor_state = self.actor_encoder(obs, state[:parts], starts)
            critic, new_state = actor, actor_state
            if self.critic_encoder is not None:
                critic, critic_state = self.critic_encoder(obs, state[parts:], starts)
                new_state = torch.cat([actor_state, critic_state])
        values = self.value_head(critic).squeeze(-1) if self.value_head is not None else None
        return self.action_head(actor), values, new_state

    def env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """What the env is given: Gaussian samples are clipped to the action bounds (the sample itself is kept)."""
        actions = actions.cpu().numpy()
        return actions if self.low is None else np.clip(actions, self.low, self.high)


class GreedyPolicy:
    """The most likely action, as evaluate() calls it: a batch of observations in, actions out.

    Keeps its own recurrent state for the evaluation envs; evaluate() calls reset(mask) at episode starts.
    """

    def __init__(self, net: PolicyNetwork, device: torch.device):
        self.net, self.device = net, device
        self.state: torch.Tensor | None = None
        self.starts: torch.Tensor | None = None

    def reset(self, mask: np.ndarray) -> None:
        self.starts = torch.as_tensor(np.asarray(mask, dtype=bool), device=self.device)
        if self.state is None or self.state.shape[1] != len(mask):
            self.state = self.net.initial_state(len(mask), self.device)

    @torch.inference_mode()
    def __call__(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of observations: the most likely ones, or samples with `deterministic=False`."""
        if self.starts is None or len(self.starts) != len(obs):
            self.reset(np.ones(len(obs), dtype=bool))
        self.net.eval()
        obs_t = torch.as_tensor(obs, device=self.device).unsqueeze(0)
        dist, _, self.state = self.net(obs_t, self.state, self.starts.unsqueeze(0))
        self.starts = torch.zeros_like(self.starts)
        return self.net.env_actions((dist.mode() if deterministic else dist.sample())[0])

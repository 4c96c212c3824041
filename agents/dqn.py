"""DQN with experience replay (Mnih et al. 2015), with an optional Double-DQN target (van Hasselt et al. 2016).

Read top to bottom: the config, the Q-network (a backbone encoder plus a linear head), epsilon-greedy acting,
the TD target, and the update. Env stepping, replay storage, logging and checkpoints live in rl_lab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_lab.backbone import EncoderSpec, LinearHead, build_encoder
from rl_lab.checkpoint import load_module_state
from rl_lab.config import EncoderConfig, check
from rl_lab.errors import UserError
from rl_lab.replay import Batch, ReplayBuffer
from rl_lab.schedules import crossed, linear_schedule


@dataclass
class DQNConfig:
    name: str = "dqn"
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig("mlp", {"hidden_sizes": [256, 256]}))
    lr: float = 1e-3
    lr_end: float | None = None  # if set, the learning rate decays linearly to lr_end over train.total_steps
    adam_eps: float = 1e-8
    gamma: float = 0.99
    buffer_size: int = 100_000
    batch_size: int = 64
    learning_starts: int = 1_000  # environment steps of random-ish play before the first update
    train_freq: int = 4  # environment steps between training phases
    gradient_steps: int = 1  # gradient steps per training phase
    target_update_interval: int = 1_000  # environment steps between target-network updates
    tau: float = 1.0  # 1 = hard copy; < 1 = Polyak averaging target <- tau * online + (1 - tau) * target
    exploration_initial: float = 1.0
    exploration_final: float = 0.05
    exploration_fraction: float = 0.1  # fraction of train.total_steps over which epsilon decays linearly
    loss: Literal["huber", "mse"] = "huber"
    max_grad_norm: float | None = 10.0  # None = no clipping
    double_dqn: bool = False

    def __post_init__(self):
        check(self.lr > 0, "lr", "must be > 0")
        check(self.lr_end is None or self.lr_end >= 0, "lr_end", "must be >= 0 or null")
        check(self.adam_eps > 0, "adam_eps", "must be > 0")
        check(0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1]")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.buffer_size >= self.batch_size, "buffer_size", f"must be >= batch_size ({self.batch_size})")
        check(self.learning_starts >= 0, "learning_starts", "must be >= 0")
        check(self.train_freq >= 1, "train_freq", "must be >= 1")
        check(self.gradient_steps >= 1, "gradient_steps", "must be >= 1")
        check(self.target_update_interval >= 1, "target_update_interval", "must be >= 1")
        check(0.0 < self.tau <= 1.0, "tau", "must be in (0, 1]")
        for key in ("exploration_initial", "exploration_final", "exploration_fraction"):
            check(0.0 <= getattr(self, key) <= 1.0, key, "must be in [0, 1]")
        check(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be > 0 or null")


class QNetwork(nn.Module):
    """Q(s, .) for every action: a backbone encoder followed by a linear head."""

    def __init__(self, encoder_spec: EncoderSpec, n_actions: int):
        super().__init__()
        self.encoder = build_encoder(encoder_spec)
        self.head = LinearHead(self.encoder.out_dim, n_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(obs))


class DQN:
    loop = "offpolicy"  # trained by rl_lab.offpolicy.OffPolicyTrainer

    def __init__(
        self,
        cfg: DQNConfig,
        observation_space: gym.Space,
        action_space: gym.Space,
        device: torch.device,
        total_steps: int,
    ):
        if not isinstance(action_space, gym.spaces.Discrete):
            raise UserError(f"DQN needs a discrete action space, the env has {action_space}")
        self.cfg = cfg
        self.device = device
        self.n_actions = int(action_space.n)
        self.obs_shape = observation_space.shape
        self.total_steps = total_steps
        self.exploration_steps = int(cfg.exploration_fraction * total_steps)
        spec = EncoderSpec(cfg.encoder.name, tuple(self.obs_shape), cfg.encoder.kwargs)
        self.q_net = QNetwork(spec, self.n_actions).to(device)
        self.target_net = QNetwork(spec, self.n_actions).to(device)
        self.target_net.load_state_dict(self.q_net.state_dict())
        self.target_net.requires_grad_(False)
        # fused: one kernel for all parameters instead of a dozen small ops per tensor (matters for small nets)
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)

    def epsilon(self, step: int) -> float:
        c = self.cfg
        return linear_schedule(c.exploration_initial, c.exploration_final, self.exploration_steps, step)

    @torch.inference_mode()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        q_values = self.q_net(torch.as_tensor(obs, device=self.device))
        return q_values.argmax(dim=1).cpu().numpy()

    def act(self, obs: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        """Epsilon-greedy for a batch of N envs; skips the network when every env explores."""
        n = len(obs)
        explore = rng.random(n) < self.epsilon(step)
        actions = rng.integers(self.n_actions, size=n)
        if not explore.all():
            actions = np.where(explore, actions, self.greedy(obs))
        return actions

    @torch.no_grad()
    def td_target(
        self,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        next_q_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """r + gamma * max_a' Q_target(s', a'), with no bootstrap after termination (truncation does bootstrap).

        Double DQN picks a' with the online network and evaluates it with the target network.
        `next_q_target` may hold Q_target(s', .) computed beforehand. Works on any leading batch shape.
        """
        flat_next = next_obs.reshape(-1, *self.obs_shape)
        if next_q_target is None:
            next_q_target = self.target_net(flat_next)
        next_q_target = next_q_target.reshape(-1, self.n_actions)
        if self.cfg.double_dqn:
            best = self.q_net(flat_next).argmax(dim=1, keepdim=True)
        else:
            best = next_q_target.argmax(dim=1, keepdim=True)
        next_value = next_q_target.gather(1, best).reshape(rewards.shape)
        return rewards + self.cfg.gamma * (~terminated) * next_value

    def loss(self, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q_taken = self.q_net(batch.obs).gather(1, batch.actions.long().unsqueeze(1)).squeeze(1)
        if self.cfg.loss == "huber":
            return F.smooth_l1_loss(q_taken, target), q_taken
        return F.mse_loss(q_taken, target), q_taken

    def update_target(self) -> None:
        online, target = list(self.q_net.parameters()), list(self.target_net.parameters())
        with torch.no_grad():
            if self.cfg.tau == 1.0:
                torch._foreach_copy_(target, online)
            else:
                torch._foreach_lerp_(target, online, self.cfg.tau)

    def train(self, buffer: ReplayBuffer, step: int, steps_taken: int, rng: np.random.Generator) -> dict | None:
        """Called after every env step: updates the target net and runs a training phase when they are due."""
        c = self.cfg
        if crossed(step, steps_taken, c.target_update_interval):
            self.update_target()
        if step < c.learning_starts or not crossed(step, steps_taken, c.train_freq):
            return None
        # All batches of this phase are sampled at once, and since the target net cannot change during a phase,
        # Q_target(s', .) for all of them comes from one forward pass. Double DQN still needs the online net's
        # argmax at each step; plain DQN targets are then complete before the first step.
        if c.lr_end is not None:
            self.optimizer.param_groups[0]["lr"] = linear_schedule(c.lr, c.lr_end, self.total_steps, step)
        batches = buffer.sample((c.gradient_steps, c.batch_size), rng, self.device)
        with torch.no_grad():
            next_q_target = self.target_net(batches.next_obs.reshape(-1, *self.obs_shape))
            next_q_target = next_q_target.reshape(c.gradient_steps, c.batch_size, self.n_actions)
        targets = None
        if not c.double_dqn:
            targets = self.td_target(batches.rewards, batches.next_obs, batches.terminated, next_q_target)
        losses, q_means = [], []
        for g in range(c.gradient_steps):
            batch = Batch(*(getattr(batches, name)[g] for name in ReplayBuffer.FIELDS))
            if targets is None:
                target = self.td_target(batch.rewards, batch.next_obs, batch.terminated, next_q_target[g])
            else:
                target = targets[g]
            loss, q_taken = self.loss(batch, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.q_net.parameters(), c.max_grad_norm)
            self.optimizer.step()
            losses.append(loss.detach())
            q_means.append(q_taken.detach().mean())
        return {"loss": torch.stack(losses).mean().item(), "q_mean": torch.stack(q_means).mean().item()}

    def state_dict(self) -> dict:
        return {
            "q_net": self.q_net.state_dict(),
            "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict, weights_only: bool = False) -> None:
        load_module_state(self.q_net, state["q_net"], "q_net")
        if weights_only:
            return
        load_module_state(self.target_net, state["target_net"], "target_net")
        self.optimizer.load_state_dict(state["optimizer"])

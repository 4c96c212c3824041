"""DQN with experience replay (Mnih et al. 2015) and the Rainbow extensions that pay off most, each a flag:
Double DQN (van Hasselt et al. 2016), a dueling head (Wang et al. 2016), prioritized replay (Schaul et al. 2016)
and n-step returns (Sutton 1988; Hessel et al. 2018).

Read top to bottom: the config, the Q-network (a backbone encoder plus a linear or dueling head), epsilon-greedy
acting, the TD target, and the update. Env stepping, replay storage (uniform, frame-stacked, prioritized, n-step
returns), logging and checkpoints live in rl_lab.
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
from rl_lab.backbone.transfer import init_encoder, param_groups, set_lr
from rl_lab.checkpoint import load_module_state
from rl_lab.config import EncoderConfig, check
from rl_lab.errors import UserError
from rl_lab.replay import Batch
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
    dueling: bool = False  # Q = V + A - mean(A), two linear streams on the encoder features
    n_step: int = 1  # bootstrap after n rewards: sum_k gamma^k r_k + gamma^n max_a Q(s_n, a)
    prioritized: bool = False  # proportional prioritized replay
    per_alpha: float = 0.5  # priority exponent (0 = uniform)
    per_beta: float = 0.4  # importance-sampling exponent at the start, annealed to 1 over train.total_steps
    per_eps: float = 1e-6  # added to |TD error| so no transition gets priority 0
    replay_device: Literal["cpu", "train"] = "cpu"  # "train": keep Atari frames on the training device (GPU)
    compile: bool = False  # torch.compile the Q-network (worth it on a GPU)
    bf16: bool = False  # bfloat16 autocast for the forward passes of an update (for GPUs)

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
        check(self.n_step >= 1, "n_step", "must be >= 1")
        check(self.per_alpha >= 0, "per_alpha", "must be >= 0")
        check(0.0 <= self.per_beta <= 1.0, "per_beta", "must be in [0, 1]")
        check(self.per_eps > 0, "per_eps", "must be > 0")


class DuelingHead(nn.Module):
    """Q(s, a) = V(s) + A(s, a) - mean_a A(s, a): the value is learnt from every action's updates."""

    def __init__(self, in_dim: int, n_actions: int):
        super().__init__()
        self.value = nn.Linear(in_dim, 1)
        self.advantage = nn.Linear(in_dim, n_actions)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        advantage = self.advantage(features)
        return self.value(features) + advantage - advantage.mean(dim=-1, keepdim=True)


class QNetwork(nn.Module):
    """Q(s, .) for every action: a backbone encoder followed by a linear or dueling head."""

    def __init__(self, encoder_spec: EncoderSpec, n_actions: int, dueling: bool = False):
        super().__init__()
        self.encoder = build_encoder(encoder_spec)
        head = DuelingHead if dueling else LinearHead
        self.head = head(self.encoder.out_dim, n_actions)

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
        self.q_net = QNetwork(spec, self.n_actions, cfg.dueling).to(device)
        init_encoder(self.q_net.encoder, cfg.encoder)  # encoder.init (a saved encoder) and encoder.freeze
        self.target_net = QNetwork(spec, self.n_actions, cfg.dueling).to(device)
        self.target_net.load_state_dict(self.q_net.state_dict())
        self.target_net.requires_grad_(False)
        # compiled callables share the modules' parameters; state_dict() stays that of the plain modules
        self.q_fn = torch.compile(self.q_net) if cfg.compile else self.q_net
        self.target_fn = torch.compile(self.target_net) if cfg.compile else self.target_net
        # fused: one kernel for all parameters instead of a dozen small ops per tensor (matters for small nets)
        groups = param_groups(self.q_net, self.q_net.encoder, cfg.encoder, cfg.lr)  # encoder at lr * lr_mult
        self.optimizer = torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.adam_eps, fused=True)

    def epsilon(self, step: int) -> float:
        c = self.cfg
        return linear_schedule(c.exploration_initial, c.exploration_final, self.exploration_steps, step)

    @torch.inference_mode()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """One batched forward pass for all N envs (and a non-blocking copy to a GPU)."""
        obs = torch.from_numpy(np.asarray(obs))
        if self.device.type == "cuda":
            obs = obs.pin_memory().to(self.device, non_blocking=True)
        q_values = self.q_fn(obs.to(self.device))
        return q_values.argmax(dim=1).cpu().numpy()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

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
        discount: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """r + gamma * max_a' Q_target(s', a'), with no bootstrap after termination (truncation does bootstrap).

        Double DQN picks a' with the online network and evaluates it with the target network. For an n-step
        return `rewards` is the discounted sum and `discount` holds gamma^m (m < n where the episode ended).
        `next_q_target` may hold Q_target(s', .) computed beforehand. Works on any leading batch shape.
        """
        flat_next = next_obs.reshape(-1, *self.obs_shape)
        with self.autocast():
            if next_q_target is None:
                next_q_target = self.target_fn(flat_next)
            next_q_target = next_q_target.float().reshape(-1, self.n_actions)
            if self.cfg.double_dqn:
                best = self.q_fn(flat_next).argmax(dim=1, keepdim=True)
            else:
                best = next_q_target.argmax(dim=1, keepdim=True)
        next_value = next_q_target.gather(1, best).reshape(rewards.shape)
        gamma = self.cfg.gamma if discount is None else discount
        return rewards + gamma * (~terminated) * next_value

    def loss(self, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean TD loss, weighted by the importance weights of prioritized replay when the batch has them."""
        with self.autocast():
            q_values = self.q_fn(batch.obs)
        q_taken = q_values.float().gather(1, batch.actions.long().unsqueeze(1)).squeeze(1)
        if self.cfg.loss == "huber":
            losses = F.smooth_l1_loss(q_taken, target, reduction="none")
        else:
            losses = F.mse_loss(q_taken, target, reduction="none")
        if batch.weights is not None:
            losses = losses * batch.weights
        return losses.mean(), q_taken

    def update_target(self) -> None:
        online, target = list(self.q_net.parameters()), list(self.target_net.parameters())
        with torch.no_grad():
            if self.cfg.tau == 1.0:
                torch._foreach_copy_(target, online)
            else:
                torch._foreach_lerp_(target, online, self.cfg.tau)

    def train(self, buffer, step: int, steps_taken: int, rng: np.random.Generator) -> dict | None:
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
            set_lr(self.optimizer, linear_schedule(c.lr, c.lr_end, self.total_steps, step))
        if c.prioritized:
            buffer.beta = linear_schedule(c.per_beta, 1.0, self.total_steps, step)
        batches = buffer.sample((c.gradient_steps, c.batch_size), rng, self.device)
        with torch.no_grad(), self.autocast():
            next_q_target = self.target_fn(batches.next_obs.reshape(-1, *self.obs_shape)).float()
            next_q_target = next_q_target.reshape(c.gradient_steps, c.batch_size, self.n_actions)
        targets = None
        if not c.double_dqn:
            targets = self.td_target(
                batches.rewards, batches.next_obs, batches.terminated, next_q_target, batches.discount
            )
        losses, q_means = [], []
        for g in range(c.gradient_steps):
            batch = batches.row(g)
            if targets is None:
                target = self.td_target(
                    batch.rewards, batch.next_obs, batch.terminated, next_q_target[g], batch.discount
                )
            else:
                target = targets[g]
            loss, q_taken = self.loss(batch, target)
            if c.prioritized:
                buffer.update_priorities(batch.indices, (target - q_taken).detach().cpu().numpy())
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

"""DQN with experience replay (Mnih et al. 2015) and the Rainbow extensions that pay off most, each a flag:
Double DQN (van Hasselt et al. 2016), a dueling head (Wang et al. 2016), prioritized replay (Schaul et al. 2016)
and n-step returns (Sutton 1988; Hessel et al. 2018).

Read top to bottom: the Q-network (a backbone encoder plus a linear or dueling head), epsilon-greedy acting, the
replay it learns from, the TD target, and the update; its settings are DQNConfig in agents/configs.py. Env stepping,
the replay buffers themselves (uniform, frame-stacked, prioritized, n-step returns), logging and checkpoints live in
rl_lab.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_lab.agents.configs import DQNConfig
from rl_lab.backbone import EncoderSpec, LinearHead, build_encoder
from rl_lab.backbone.transfer import init_encoder
from rl_lab.checkpoint import load_module_state
from rl_lab.errors import UserError
from rl_lab.optim import anneal, autocast, make_optimizer
from rl_lab.replay.frames import FrameReplay
from rl_lab.replay.prioritized import Prioritized
from rl_lab.replay.uniform import Batch, ReplayBuffer
from rl_lab.schedules import linear_schedule, multiples


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
    loop = "offpolicy"  # trained by rl_lab.rl.offpolicy.OffPolicyTrainer

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
        self.obs_dtype = observation_space.dtype
        self.total_steps = total_steps
        self.exploration_steps = int(cfg.exploration_fraction * total_steps)
        spec = EncoderSpec(cfg.encoder.name, tuple(self.obs_shape), cfg.encoder.kwargs)
        self.q_net = QNetwork(spec, self.n_actions, cfg.dueling).to(device)
        init_encoder(self.q_net.encoder, cfg.encoder)  # encoder.init (a saved encoder) and encoder.freeze
        self.target_net = QNetwork(spec, self.n_actions, cfg.dueling).to(device)
        self.target_net.load_state_dict(self.q_net.state_dict())
        self.target_net.requires_grad_(False)
        self.target_net.eval()  # only ever evaluated: running statistics, no dropout
        # compiled callables share the modules' parameters; state_dict() stays that of the plain modules
        self.q_fn = torch.compile(self.q_net) if cfg.compile else self.q_net
        self.target_fn = torch.compile(self.target_net) if cfg.compile else self.target_net
        self.optimizer = make_optimizer(self.q_net, self.q_net.encoder, cfg.encoder, cfg.optim, fused=True)

    def make_replay(self, num_envs: int, frame_padding: str | None):
        """The replay this agent learns from, built from its own settings. Stacked Atari frames (the env reports
        its stack padding, "repeat" or "zero") are stored once each; other observations whole."""
        c = self.cfg
        size = min(c.buffer_size, self.total_steps)  # no more than the run can ever store
        if frame_padding is not None:
            storage = self.device if c.replay_device == "train" else "cpu"
            buffer = FrameReplay(size, self.obs_shape, num_envs, c.n_step, c.gamma, frame_padding, storage)
        else:
            buffer = ReplayBuffer(size, self.obs_shape, self.obs_dtype, n_step=c.n_step, gamma=c.gamma)
        return Prioritized(buffer, c.per_alpha, c.per_eps, c.per_weights) if c.prioritized else buffer

    def epsilon(self, step: int) -> float:
        c = self.cfg
        return linear_schedule(c.exploration_initial, c.exploration_final, self.exploration_steps, step)

    @torch.inference_mode()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """One batched forward pass for all N envs (and a non-blocking copy to a GPU), in eval mode: with batch
        norm or dropout in the encoder, one observation's Q-values do not depend on the rest of the batch."""
        self.q_net.eval()
        obs = torch.from_numpy(np.asarray(obs))
        if self.device.type == "cuda":
            obs = obs.pin_memory().to(self.device, non_blocking=True)
        q_values = self.q_fn(obs.to(self.device))
        return q_values.argmax(dim=1).cpu().numpy()

    def autocast(self):
        return autocast(self.device, self.cfg.optim.amp)

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
        """Called after each step of the N envs (`steps_taken` = N env steps, ending at env step `step`): the
        target updates and training phases that fell due in those steps, in order. So the replay ratio is
        gradient_steps / train_freq gradient steps per env step whatever N is: 8 envs with train_freq 4 run two
        phases per vector step. Phases with no target update between them run as one. Returns the mean loss and
        Q of this call's gradient steps, or None when none was due."""
        c = self.cfg
        first = step - steps_taken + 1
        updates = [(s, 0) for s in multiples(first, step, c.target_update_interval)]
        phases = [(s, 1) for s in multiples(max(first, c.learning_starts), step, c.train_freq)]
        losses, q_means, due, last = [], [], 0, step
        for s, is_phase in sorted(updates + phases):  # at the same step the target update comes first
            if is_phase:
                due, last = due + 1, s
                continue
            if due:
                self.phase(buffer, last, due * c.gradient_steps, rng, losses, q_means)
                due = 0
            self.update_target()
        if due:
            self.phase(buffer, last, due * c.gradient_steps, rng, losses, q_means)
        if not losses:
            return None
        return {"loss": torch.stack(losses).mean().item(), "q_mean": torch.stack(q_means).mean().item()}

    def phase(self, buffer, step: int, gradient_steps: int, rng, losses: list, q_means: list) -> None:
        """`gradient_steps` updates at env step `step`; appends each one's loss and mean Q to the lists."""
        c = self.cfg
        self.q_net.train()  # batch statistics and dropout while learning; acting is in eval mode
        anneal(self.optimizer, c.optim, step, self.total_steps)
        if c.prioritized:
            # each batch is drawn after the previous step's TD errors have updated the priorities
            buffer.beta = linear_schedule(c.per_beta, 1.0, self.total_steps, step)
            for _ in range(gradient_steps):
                batch = buffer.sample(c.batch_size, rng, self.device)
                target = self.td_target(batch.rewards, batch.next_obs, batch.terminated, discount=batch.discount)
                q_taken = self.gradient_step(batch, target, losses, q_means)
                buffer.update_priorities(batch.indices, (target - q_taken).cpu().numpy())
            return
        # Without priorities all batches are sampled at once, and since the target net cannot change during a
        # phase, Q_target(s', .) for all of them comes from one forward pass. Double DQN still needs the online
        # net's argmax at each step; plain DQN targets are then complete before the first step.
        batches = buffer.sample((gradient_steps, c.batch_size), rng, self.device)
        with torch.no_grad(), self.autocast():
            next_q_target = self.target_fn(batches.next_obs.reshape(-1, *self.obs_shape)).float()
            next_q_target = next_q_target.reshape(gradient_steps, c.batch_size, self.n_actions)
        targets = None
        if not c.double_dqn:
            targets = self.td_target(
                batches.rewards, batches.next_obs, batches.terminated, next_q_target, batches.discount
            )
        for g in range(gradient_steps):
            batch = batches.row(g)
            if targets is None:
                target = self.td_target(
                    batch.rewards, batch.next_obs, batch.terminated, next_q_target[g], batch.discount
                )
            else:
                target = targets[g]
            self.gradient_step(batch, target, losses, q_means)

    def gradient_step(self, batch: Batch, target: torch.Tensor, losses: list, q_means: list) -> torch.Tensor:
        """One optimiser step on the TD loss; returns Q(s, a) of the batch (detached)."""
        loss, q_taken = self.loss(batch, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.q_net.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        losses.append(loss.detach())
        q_taken = q_taken.detach()
        q_means.append(q_taken.mean())
        return q_taken

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

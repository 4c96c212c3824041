"""Tabular Q-learning (Watkins 1989) with epsilon-greedy exploration: the table that DQN replaces by a network.

    Q(s, a) <- Q(s, a) + lr * (r + gamma * max_a' Q(s', a') - Q(s, a))

with no bootstrap after termination (a time limit does bootstrap). The off-policy loop that trains DQN trains
this agent too, which then learns from each new transition in order (`buffer.latest`), so tabular runs get the
same CLI, run directory, logging, checkpoints, resume and evaluation. Needs a discrete observation: a state index
(rl_lab/GridWorld-v0 with env.kwargs.obs=index, FrozenLake, CliffWalking, Taxi).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_lab.agents.configs import TabularQConfig
from rl_lab.checkpoint import load_module_state
from rl_lab.errors import UserError
from rl_lab.replay.uniform import ReplayBuffer
from rl_lab.schedules import linear_schedule


class QTable(nn.Module):
    """Q(s, .) looked up in a table: the same interface as DQN's QNetwork (observations in, Q-values out)."""

    def __init__(self, n_states: int, n_actions: int, init: float):
        super().__init__()
        self.register_buffer("table", torch.full((n_states, n_actions), float(init), dtype=torch.float64))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.table[obs.long()]


class TabularQ:
    loop = "offpolicy"  # trained by rl_lab.rl.offpolicy.OffPolicyTrainer

    def __init__(
        self,
        cfg: TabularQConfig,
        observation_space: gym.Space,
        action_space: gym.Space,
        device: torch.device,
        total_steps: int,
    ):
        if not isinstance(observation_space, gym.spaces.Discrete):
            raise UserError(
                f"tabular Q-learning needs a discrete observation (a state index), the env has {observation_space}; "
                "for rl_lab/GridWorld-v0 set env.kwargs.obs=index"
            )
        if not isinstance(action_space, gym.spaces.Discrete):
            raise UserError(f"tabular Q-learning needs a discrete action space, the env has {action_space}")
        self.cfg = cfg
        self.device = torch.device("cpu")  # a table lookup gains nothing from an accelerator
        self.n_actions = int(action_space.n)
        self.total_steps = total_steps
        self.exploration_steps = int(cfg.exploration_fraction * total_steps)
        self.q_net = QTable(int(observation_space.n), self.n_actions, cfg.q_init)
        self.q = self.q_net.table.numpy()  # a view: updated in numpy, checkpointed through the module
        self.obs_space = observation_space

    def make_replay(self, num_envs: int, frame_padding: str | None) -> ReplayBuffer:
        """A plain store of recent transitions: `train` reads the newest ones, in order."""
        return ReplayBuffer(self.cfg.buffer_size, self.obs_space.shape, self.obs_space.dtype)

    def epsilon(self, step: int) -> float:
        c = self.cfg
        return linear_schedule(c.exploration_initial, c.exploration_final, self.exploration_steps, step)

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        return self.q[np.asarray(obs, dtype=np.int64)].argmax(axis=1)

    def act(self, obs: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        """Epsilon-greedy for a batch of N envs."""
        explore = rng.random(len(obs)) < self.epsilon(step)
        return np.where(explore, rng.integers(self.n_actions, size=len(obs)), self.greedy(obs))

    def train(self, buffer: ReplayBuffer, step: int, steps_taken: int, rng: np.random.Generator) -> dict:
        """One Q-learning update per transition of the last env step, in the order they happened."""
        c = self.cfg
        lr = c.lr if c.lr_end is None else linear_schedule(c.lr, c.lr_end, self.total_steps, step)
        new = buffer.latest(steps_taken)
        td_errors, q_taken = [], []
        for s, a, r, s_next, terminated in zip(
            new["obs"], new["actions"], new["rewards"], new["next_obs"], new["terminated"], strict=True
        ):
            target = r if terminated else r + c.gamma * self.q[s_next].max()
            q_taken.append(self.q[s, a])
            td_errors.append(target - self.q[s, a])
            self.q[s, a] += lr * td_errors[-1]
        return {"loss": float(np.mean(np.square(td_errors))), "q_mean": float(np.mean(q_taken))}

    def state_dict(self) -> dict:
        return {"q_net": self.q_net.state_dict()}

    def load_state_dict(self, state: dict, weights_only: bool = False) -> None:
        load_module_state(self.q_net, state["q_net"], "q_net")

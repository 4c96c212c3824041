"""The on-policy training loop shared by policy-gradient agents: collect a rollout, update once, evaluate, log, save.

Two kinds of rollout, chosen by the agent:
  - n steps of every env (`agent.n_steps`, A2C and PPO): envs and recurrent state carry on across rollouts;
  - whole episodes (`agent.episodes_per_update`, REINFORCE): every env starts a fresh episode and plays
    episodes_per_update / num_envs of them; an env that is done waits (its steps are masked out, not learned from)
    until the others finish, so long episodes are not under-represented.
A rollout also keeps what the acting policy computed: V(s_t), log pi(a_t|s_t) and, for a recurrent policy, its
state before every step (PPO replays minibatch sequences from it). Acting runs the network in eval mode.
The agent (rl_lab.agents.policy_gradient) supplies `net` (rl_lab.rl.policy.PolicyNetwork), `n_steps` or
`episodes_per_update`, `update(rollout, step) -> metrics`, `greedy`, and
`state_dict()/load_state_dict()`. Checkpoints are taken between rollouts and hold everything a resumed run needs
(networks, optimizer, counters, RNG states, envs' episodes in progress, recurrent state), so a run killed at any
point and resumed writes the same metrics.jsonl as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rl_lab.config import Config
from rl_lab.errors import UserError
from rl_lab.logger import RunLogger
from rl_lab.rl.loop import EnvLoop


@dataclass
class Rollout:
    """T steps of N envs, time-major. `next_values` holds V(s_{t+1}) of the true next state (0 without a critic)."""

    obs: torch.Tensor  # (T, N, *obs_shape)
    actions: torch.Tensor  # (T, N) or (T, N, action_dim)
    rewards: torch.Tensor  # (T, N)
    terminated: torch.Tensor  # (T, N) bool
    truncated: torch.Tensor  # (T, N) bool
    starts: torch.Tensor  # (T, N) bool: step t begins an episode (recurrent state is zeroed before it)
    valid: torch.Tensor  # (T, N) bool: False for steps an env took after its quota of episodes
    values: torch.Tensor | None  # (T, N) V(s_t) at collection time
    next_values: torch.Tensor  # (T, N)
    state: torch.Tensor | None  # recurrent state before step 0
    episodes: int  # complete episodes in the rollout
    log_probs: torch.Tensor | None = None  # (T, N) log pi(a_t|s_t) of the policy that acted (PPO's denominator)
    states: torch.Tensor | None = None  # (T, *state.shape): recurrent state before each step (before its reset)


class OnPolicyTrainer(EnvLoop):
    def __init__(self, config: Config, agent, envs, rng: np.random.Generator):
        n = envs.num_envs
        if agent.episodes_per_update is not None and agent.episodes_per_update % n:
            raise UserError(
                f"agent.episodes_per_update={agent.episodes_per_update} must be a multiple of env.num_envs={n} "
                "(every env plays the same number of episodes per update)"
            )
        super().__init__(config, agent, envs, rng)
        self.starts = np.ones(n, dtype=bool)
        self.rnn_state = agent.net.initial_state(n, agent.device)

    @torch.no_grad()
    def collect(self) -> Rollout:
        agent, envs, net, device = self.agent, self.envs, self.agent.net, self.agent.device
        n = envs.num_envs
        net.eval()  # acting: running statistics and no dropout (the agent's update trains in train mode)
        whole_episodes = agent.episodes_per_update is not None
        if whole_episodes:  # fresh episodes everywhere; unseeded, so each env's RNG carries on
            self.obs, infos = envs.reset()
            self.signals.start(infos)
            self.starts[:] = True
            self.episode_return[:], self.episode_length[:] = 0.0, 0
            self.rnn_state = net.initial_state(n, device)
            quota = agent.episodes_per_update // n
        finished = np.zeros(n, dtype=np.int64)
        state0 = self.rnn_state
        steps: dict[str, list] = {}
        while True:
            obs = torch.as_tensor(self.obs, device=device)
            starts = torch.as_tensor(self.starts, device=device)
            state_before = self.rnn_state
            dist, values, self.rnn_state = net(obs[None], self.rnn_state, starts[None])
            actions = dist.sample()[0]
            next_obs, rewards, terminated, truncated, infos = envs.step(net.env_actions(actions))
            done = terminated | truncated
            learn_rewards, learn_terminated = self.signals(rewards, terminated, truncated, infos)
            valid = finished < quota if whole_episodes else np.ones(n, dtype=bool)
            self.state.step += n
            # V of the state each truncated episode was cut at (the vector env has already reset that env)
            next_values = torch.zeros(n, device=device)
            cut = np.flatnonzero(truncated)
            if values is not None and len(cut):
                final = torch.as_tensor(np.stack([infos["final_obs"][i] for i in cut]), device=device)
                state = None if self.rnn_state is None else self.rnn_state[:, cut]
                _, final_values, _ = net(final[None], state, torch.zeros(1, len(cut), dtype=torch.bool, device=device))
                next_values[cut] = final_values[0]
            record = {
                "obs": obs,
                "actions": actions,
                "rewards": learn_rewards,
                "terminated": learn_terminated,
                "truncated": truncated,
                "starts": starts,
                "valid": valid,
                "values": None if values is None else values[0],
                "next_values": next_values,
                "log_probs": dist.log_prob(actions[None])[0],
                "states": state_before,
            }
            for key, value in record.items():
                steps.setdefault(key, []).append(value)
            self.track_episodes(rewards, done, counted=valid)
            finished += done & valid
            self.obs, self.starts = next_obs, done
            if (whole_episodes and (finished >= quota).all()) or len(steps["obs"]) == agent.n_steps:
                break
        rollout = self._stack(steps, state0, int(finished.sum()))
        if rollout.values is not None:  # V(s_{t+1}): the next step's value inside an episode; V(s_T) at the end
            rollout.next_values[:-1] = torch.where(
                rollout.terminated[:-1] | rollout.truncated[:-1], rollout.next_values[:-1], rollout.values[1:]
            )
            last = ~(rollout.terminated[-1] | rollout.truncated[-1])
            obs = torch.as_tensor(self.obs, device=device)
            _, last_values, _ = net(obs[None], self.rnn_state, torch.zeros(1, n, dtype=torch.bool, device=device))
            rollout.next_values[-1] = torch.where(last, last_values[0], rollout.next_values[-1])
        return rollout

    def _stack(self, steps: dict[str, list], state0: torch.Tensor | None, episodes: int) -> Rollout:
        device = self.agent.device

        def stack(values: list) -> torch.Tensor | None:
            if values[0] is None:
                return None
            return torch.stack([torch.as_tensor(v, device=device) for v in values])

        rollout = Rollout(**{k: stack(v) for k, v in steps.items()}, state=state0, episodes=episodes)
        rollout.rewards = rollout.rewards.float()
        return rollout

    def run(self, run_dir: Path, logger: RunLogger) -> dict:
        c, state = self.config, self.state
        total = c.train.total_steps
        start_step, start_time = state.step, time.perf_counter()
        window_step, window_time = state.step, start_time
        while state.step < total:
            before = state.step
            rollout = self.collect()
            state.last_train = self.agent.update(rollout, state.step)
            self.check_finite(state.last_train)
            taken = state.step - before
            row = self.due_row(taken)
            if row:
                now = time.perf_counter()
                sps = (state.step - window_step) / max(now - window_time, 1e-9)
                window_step, window_time = state.step, now
                logger.log(state.step, row, extra={"time/sps": sps})
                logger.progress(state.step, **self.progress_fields(row, sps))
            if self.checkpoint_due(taken):
                self.save(run_dir, start_time, logger)
        return self.finish(run_dir, logger, start_step, start_time)

    def restart_episodes(self, kept: str = "model, optimiser and counters") -> str:
        self.starts[:] = True
        self.rnn_state = self.agent.net.initial_state(self.envs.num_envs, self.agent.device)
        return super().restart_episodes(kept)

    def checkpoint_extras(self) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        tensors = {} if self.rnn_state is None else {"rnn_state": self.rnn_state}
        return tensors, {"starts": self.starts}

    def load_extras(self, tensors: dict, arrays: dict[str, np.ndarray]) -> None:
        self.starts[:] = arrays["starts"]
        if self.rnn_state is not None:
            self.rnn_state = tensors["rnn_state"].to(self.agent.device)

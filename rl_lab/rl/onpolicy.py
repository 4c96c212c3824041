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

Data-parallel under torchrun (agents with `data_parallel`, PPO): process r of N steps env.num_envs envs of its own,
seeded as envs r * num_envs ... of one process with N * num_envs envs, and draws its actions as that process would
(rl_lab.distributed.own_rows: torch's RNG is seeded alike everywhere and stays in step), so the N processes
together collect that process's rollout. Env steps count globally: every step of the N processes adds
N * num_envs, and train.total_steps, schedules, logging, evaluation and checkpoint intervals are in global steps.
Finished episodes are pooled after every rollout in the single process's order (step, then global env), so every
process holds the same counters. Rank 0 alone evaluates and writes; a checkpoint holds every process's envs in
the global order (as that single process's would) and each process resumes its own share of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import rl_lab.distributed as distributed
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
        self.rank, self.world = distributed.rank_and_world()
        self.env_seed_offset = self.rank * n  # this process's envs are envs rank * n ... of the global rollout
        self.ended: list[tuple] = []  # data-parallel: episodes ended during this rollout, pooled at its end
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
            actions = dist.sample(across_processes=True)[0]
            next_obs, rewards, terminated, truncated, infos = envs.step(net.env_actions(actions))
            done = terminated | truncated
            learn_rewards, learn_terminated = self.signals(rewards, terminated, truncated, infos)
            valid = finished < quota if whole_episodes else np.ones(n, dtype=bool)
            self.state.step += n * self.world
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
        if self.world > 1:
            self.pool_episodes()
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

    def add_episodes(self, returns: list[float], lengths: list[int], envs: np.ndarray) -> None:
        if self.world == 1:
            return super().add_episodes(returns, lengths, envs)
        step, first = self.state.step, self.env_seed_offset
        self.ended += [(step, first + int(e), r, n) for e, r, n in zip(envs, returns, lengths, strict=True)]
        return None

    def pool_episodes(self) -> None:
        """Every process's episodes of this rollout into every process's counters, in the order one process with
        all the envs would have counted them."""
        ended = sorted(e for part in distributed.gather_objects(self.ended) for e in part)
        self.ended = []
        if ended:
            _, envs, returns, lengths = zip(*ended, strict=True)
            super().add_episodes(list(returns), list(lengths), np.array(envs))

    def evaluate(self, *args, **kwargs) -> dict:
        if self.rank != 0:  # data-parallel: rank 0 alone evaluates (and logs)
            return {}
        return super().evaluate(*args, **kwargs)

    def finish(self, run_dir: Path, logger: RunLogger, start_step: int, start_time: float) -> dict:
        summary = super().finish(run_dir, logger, start_step, start_time)
        if self.world > 1:
            divergence = distributed.replica_divergence(self.agent.net)  # 0.0: every replica holds rank 0's weights
            summary.update(processes=self.world, replica_max_abs_diff=divergence)
        return summary

    def save(self, run_dir: Path, start_time: float, logger: RunLogger) -> None:
        """Data-parallel: every process's envs gathered, in the global env order, into rank 0's checkpoint."""
        if self.world == 1:
            return super().save(run_dir, start_time, logger)
        tensors, arrays, envs = self.env_state()
        parts = distributed.gather_objects(({k: v.cpu() for k, v in tensors.items()}, arrays, envs))
        if self.rank != 0:
            return None
        tensors = {k: torch.cat([p[0][k] for p in parts], dim=1) for k in tensors}  # rnn_state: (layers, envs, h)
        arrays = {k: np.concatenate([p[1][k] for p in parts]) for k in arrays}  # one row per env
        envs = [snapshot for p in parts for snapshot in p[2]]
        self.write_checkpoint(run_dir, start_time, logger, tensors, arrays, envs, processes=self.world)
        return None

    def read_checkpoint(self, path: Path) -> tuple[dict, dict[str, np.ndarray], dict]:
        """Data-parallel: this process's share of the checkpoint's envs; a checkpoint of another number of
        processes is refused."""
        torch_state, arrays, meta = super().read_checkpoint(path)
        processes = meta.get("processes", 1)
        if processes != self.world:
            how = f"torchrun --nproc_per_node {processes} -m rl_lab.cli" if processes > 1 else "rl-lab (no torchrun)"
            raise UserError(
                f"checkpoint {path} was written by {processes} data-parallel process(es), this run has {self.world}; "
                f"resume it with: {how} train --resume {path.parent.parent}"
            )
        if self.world == 1:
            return torch_state, arrays, meta
        n = self.envs.num_envs
        mine = slice(self.rank * n, (self.rank + 1) * n)
        arrays = {k: v[mine] for k, v in arrays.items()}
        meta["envs"] = meta["envs"][mine]
        if "rnn_state" in torch_state:
            torch_state["rnn_state"] = torch_state["rnn_state"][:, mine]
        rng = torch_state["rng"]  # rank 0's CUDA generator is cuda0's; every process's runs in step with it
        for key in [k for k in rng if k.startswith("cuda")]:
            rng[key] = rng["cuda0"]
        return torch_state, arrays, meta

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

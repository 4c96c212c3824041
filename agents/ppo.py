"""Proximal policy optimisation with the clipped surrogate (PPO-clip; Schulman et al. 2017), as CleanRL and SB3
write it. N parallel envs, n-step rollouts, then several epochs of minibatches over each rollout:

    ratio_t = pi(a_t|s_t) / pi_old(a_t|s_t)          pi_old: the policy that acted (its log-probs are stored)
    L_clip  = -mean(min(ratio_t A_t, clip(ratio_t, 1 - eps, 1 + eps) A_t))
    L_V     = mean((V(s_t) - R_t)^2)                  clip_value: mean(max of that and the clipped prediction's error)
    loss    = L_clip + value_coef * L_V - entropy_coef * mean(H[pi(.|s_t)])

A_t is GAE(lambda) from the values seen while collecting, normalised per minibatch; R_t = A_t + V_old(s_t). Both
bootstrap from V(s') at the end of the rollout and at time-limit truncations, never after termination
(rl_lab.rl.returns). Gradients are clipped globally (optim.grad_clip), the learning rate follows optim.schedule
over env steps, eps can decay linearly (clip_range_end), and the update stops at a minibatch whose approximate KL
from pi_old exceeds 1.5 * target_kl (SB3's rule), before stepping on it. A recurrent policy (lstm/gru encoder)
learns from minibatches of whole env sequences (seq_len steps each, n_steps by default), each replayed from the
recurrent state stored at its first step. Env stepping and rollouts live in rl_lab.rl.onpolicy; the settings are
PPOConfig in agents/configs.py.

Data-parallel under torchrun (N processes, each with env.num_envs envs of its own): the N rollouts together are the
global rollout of one process with N * num_envs envs, and every update is that process's update. An epoch's order
is drawn over the global rollout (the same torch RNG on every process) and each process takes its own samples in
that order; a minibatch is batch_size samples globally, batch_size / N from each process's rollout (so batch_size,
in sequences for a recurrent policy, must be a multiple of N). Everything a minibatch averages is global: the
gradients (all-reduced, rl_lab.distributed.average_gradients), the advantage normalisation (mean and std of the
whole minibatch, gathered), the approximate KL that may stop the update (so every process stops at the same
minibatch), and the logged figures. With full-batch minibatches (batch_size >= the global rollout) an update is
therefore the single process's up to float rounding; smaller minibatches draw batch_size / N samples from each
process rather than batch_size from the pooled rollout.
"""

from __future__ import annotations

import torch

import rl_lab.distributed as distributed
from rl_lab.agents.configs import PPOConfig
from rl_lab.agents.policy_gradient import PolicyGradientAgent
from rl_lab.errors import UserError
from rl_lab.optim import base_lr
from rl_lab.rl.onpolicy import Rollout
from rl_lab.rl.returns import gae
from rl_lab.schedules import linear_schedule


def clipped_surrogate(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_clip, approximate KL(pi_old || pi), fraction of clipped ratios) over a minibatch.

    The KL estimate is mean((r - 1) - log r), unbiased and never negative (Schulman's k3, used by SB3 and CleanRL).
    """
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_range, 1 + clip_range) * advantages
    loss = -torch.min(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip_range).float().mean()
    return loss, approx_kl, clip_fraction


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_value: float | None
) -> torch.Tensor:
    """mean((V - R)^2); with clip_value, the larger of that error and the one of V_old + clip(V - V_old)."""
    error = (values - returns).square()
    if clip_value is None:
        return error.mean()
    clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
    return torch.max(error, (clipped - returns).square()).mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R): 1 for a perfect critic, 0 for one no better than a constant (0 when Var(R) = 0)."""
    variance = returns.var()
    return 0.0 if variance == 0 else float(1 - (returns - values).var() / variance)


class PPO(PolicyGradientAgent):
    data_parallel = True  # trains under torchrun (see the module's docstring)

    def __init__(self, cfg: PPOConfig, observation_space, action_space, device, total_steps: int):
        super().__init__(cfg, observation_space, action_space, device, total_steps, value=True)
        self.n_steps = cfg.n_steps
        self.rank, self.world = distributed.rank_and_world()
        per_batch = max(1, cfg.batch_size // self.sequence_length(cfg.n_steps))
        if per_batch % self.world:
            what = f"minibatches of {per_batch} sequences" if self.net.recurrent else "it"
            raise UserError(
                f"batch_size={cfg.batch_size}: under torchrun {what} must be a multiple of the {self.world} processes "
                f"(each takes 1/{self.world} of every minibatch from its own rollout)"
            )

    def sequence_length(self, steps: int) -> int:
        """Steps per minibatch sequence: seq_len (whole rollouts of `steps` when null) for a recurrent policy, 1
        (single samples) for a feed-forward one."""
        return (self.cfg.seq_len or steps) if self.net.recurrent else 1

    def clip_range(self, step: int) -> float:
        cfg = self.cfg
        end = cfg.clip_range if cfg.clip_range_end is None else cfg.clip_range_end
        return linear_schedule(cfg.clip_range, end, self.total_steps, step)

    def minibatches(self, steps: int, envs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch's minibatches in a random order, as (time, env) index grids of shape (L, B): L = 1 and B =
        batch_size single samples for a feed-forward policy; L = seq_len steps of B = batch_size // L env
        sequences for a recurrent one. The last minibatch takes what is left. Data-parallel: the order is drawn over
        all processes' sequences (env e of rank r is env r * envs + e of the global rollout) and this process
        keeps its own, batch_size / N of them (in samples) per minibatch."""
        cfg, world = self.cfg, self.world
        length = self.sequence_length(steps)
        chunks = steps // length  # sequences per env
        order = torch.randperm(chunks * envs * world)  # the global torch RNG: checkpointed, so resumes are exact
        if world > 1:  # this process's sequences, in that order, as indices of its own rollout
            order = order[order % (envs * world) // envs == self.rank]
            order = order // (envs * world) * envs + order % envs
        per_batch = max(1, cfg.batch_size // length) // world
        grids = []
        for batch in order.split(per_batch):
            time = (batch // envs)[None] * length + torch.arange(length)[:, None]
            grids.append((time, (batch % envs)[None].expand(length, -1)))
        return grids

    def forward(self, rollout: Rollout, time: torch.Tensor, env: torch.Tensor):
        """pi(.|s) and V(s) now, over a minibatch's (L, B) grid of rollout steps; a recurrent policy replays each
        sequence from the state stored at its first step, resetting it where an episode starts."""
        r = rollout
        state = None if r.states is None else r.states[time[0], :, env[0]].transpose(0, 1).contiguous()
        dist, values, _ = self.net(r.obs[time, env], state, r.starts[time, env])
        return dist, values

    def update(self, rollout: Rollout, step: int) -> dict[str, float]:
        cfg, r = self.cfg, rollout
        self.net.train()  # batch statistics and dropout while learning; acting is in eval mode
        advantages = gae(r.rewards, r.values, r.next_values, r.terminated, r.truncated, cfg.gamma, cfg.gae_lambda)
        returns = advantages + r.values
        clip_range = self.clip_range(step)
        steps, envs = r.rewards.shape
        sums = dict.fromkeys(("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm"), 0.0)
        updates, stopped = 0, False
        for _ in range(cfg.epochs):
            for time, env in self.minibatches(steps, envs):
                time, env = time.to(self.device), env.to(self.device)
                dist, values = self.forward(r, time, env)
                adv = advantages[time, env]
                whole = distributed.gather(adv) if cfg.normalize_advantages else adv  # all processes' minibatch
                if cfg.normalize_advantages and whole.numel() > 1:
                    adv = (adv - whole.mean()) / (whole.std() + 1e-8)
                policy_loss, approx_kl, clip_fraction = clipped_surrogate(
                    dist.log_prob(r.actions[time, env]), r.log_probs[time, env], adv, clip_range
                )
                if cfg.target_kl is not None:
                    approx_kl = distributed.mean(approx_kl)  # every process stops at the same minibatch
                if cfg.target_kl is not None and approx_kl > 1.5 * cfg.target_kl:
                    stopped = True  # this minibatch is not stepped on
                    break
                v_loss = value_loss(values, r.values[time, env], returns[time, env], cfg.clip_value)
                entropy = dist.entropy().mean()
                loss = policy_loss + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
                grad_norm = self.gradient_step(loss, step)
                updates += 1
                for key, value in zip(  # summed on the device: one synchronisation per update, not per minibatch
                    sums,
                    (policy_loss.detach(), v_loss.detach(), entropy.detach(), approx_kl, clip_fraction, grad_norm),
                    strict=True,
                ):
                    sums[key] = sums[key] + value
            if stopped:
                break
        distributed.broadcast_buffers(self.net)  # batch-norm statistics, if any, as rank 0's
        if self.world > 1:  # the means over processes of each one's means (equal shares of every minibatch)
            local = torch.tensor([float(v) for v in sums.values()], dtype=torch.float64, device=self.device)
            sums = dict(zip(sums, distributed.mean(local).tolist(), strict=True))
        metrics = {k: float(v) / max(updates, 1) for k, v in sums.items()}
        all_values, all_returns = distributed.gather(r.values, 1), distributed.gather(returns, 1)  # (T, N * envs)
        metrics.update(
            explained_variance=explained_variance(all_values.flatten(), all_returns.flatten()),
            updates=updates,
            kl_stop=float(stopped),
            clip_range=clip_range,
            lr=base_lr(self.optimizer),
        )
        return metrics

"""A2C and the on-policy loop: truncation bootstraps from V(final obs), shared/separate critics, Gaussian actions,
exact resume and determinism, the shipped configs, and (marked learning) solving CartPole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import REPO

from rl_lab.agents.actor_critic import A2C
from rl_lab.cli import main
from rl_lab.envs import make_vector_env
from rl_lab.loader import config_from_dict, load_config
from rl_lab.rl.onpolicy import OnPolicyTrainer

SOLVED = 475.0
QUIET = ["logger.wandb.mode=disabled", "logger.progress=false", "device=cpu"]


def killed_after_first_checkpoint(run_dir: Path, cut: Path) -> int:
    """Copy run_dir to cut as a run killed after its first checkpoint leaves it; returns the checkpoints it had."""
    shutil.copytree(run_dir, cut)
    checkpoints = sorted((cut / "checkpoints").glob("step_*"))
    for later in checkpoints[1:]:
        shutil.rmtree(later)
    (cut / "checkpoints" / "latest").write_text(checkpoints[0].name + "\n")
    (cut / "summary.json").unlink()
    return len(checkpoints)


def a2c_trainer(env_id: str, num_envs: int, env_kwargs: dict | None = None, **agent) -> OnPolicyTrainer:
    config = config_from_dict(
        {
            "env": {"id": env_id, "num_envs": num_envs, "kwargs": env_kwargs or {}},
            "agent": {"name": "a2c", **agent},
        }
    )
    torch.manual_seed(0)
    envs = make_vector_env(env_id, num_envs, **config.env.kwargs)
    agent = A2C(config.agent, envs.single_observation_space, envs.single_action_space, torch.device("cpu"), 10**4)
    return OnPolicyTrainer(config, agent, envs, np.random.default_rng(0))


def test_rollout_bootstraps_from_the_final_observation_of_truncated_episodes():
    """Replaying the rollout's actions in a twin env recovers each final observation; next_values must be its V."""
    trainer = a2c_trainer("CartPole-v1", 2, {"max_episode_steps": 4}, n_steps=13)
    rollout = trainer.collect()
    assert rollout.truncated.any(), "4-step episodes of CartPole end by the time limit"
    twin = make_vector_env("CartPole-v1", 2, max_episode_steps=4)
    obs, _ = twin.reset(seed=0)
    net = trainer.agent.net
    with torch.no_grad():
        for t in range(len(rollout.rewards)):
            np.testing.assert_array_equal(obs, rollout.obs[t].numpy())
            obs, _, terminated, truncated, infos = twin.step(rollout.actions[t].numpy())
            true_next = obs.copy()
            for i in np.flatnonzero(terminated | truncated):
                true_next[i] = infos["final_obs"][i]
            _, values, _ = net(torch.as_tensor(true_next)[None], None, torch.zeros(1, 2, dtype=torch.bool))
            for i in range(2):
                if not terminated[i]:
                    assert rollout.next_values[t, i].item() == pytest.approx(values[0, i].item(), abs=1e-6)


def test_separate_critic_does_not_train_the_actor_and_shared_one_does():
    for shared in (False, True):
        trainer = a2c_trainer("CartPole-v1", 2, n_steps=8, shared_encoder=shared)
        net = trainer.agent.net
        assert (net.critic_encoder is None) == shared
        rollout = trainer.collect()
        _, values, _ = net(rollout.obs, rollout.state, rollout.starts)
        values.square().mean().backward()
        actor_grads = [p.grad for p in net.actor_encoder.parameters()]
        touched = any(g is not None and g.abs().sum() > 0 for g in actor_grads)
        assert touched == shared


def test_gaussian_policy_on_pendulum_keeps_samples_and_clips_what_the_env_gets():
    trainer = a2c_trainer("Pendulum-v1", 2, n_steps=50, log_std_init=1.0)
    rollout = trainer.collect()
    assert rollout.actions.shape == (50, 2, 1) and rollout.actions.dtype == torch.float32
    assert rollout.actions.abs().max() > 2.0, "samples with std e^1 leave the [-2, 2] bounds"
    assert np.abs(trainer.agent.net.env_actions(rollout.actions)).max() <= 2.0
    log_std = trainer.agent.net.action_head.log_std.detach().clone()
    metrics = trainer.agent.update(rollout, step=100)
    assert np.isfinite(list(metrics.values())).all()
    assert not torch.equal(log_std, trainer.agent.net.action_head.log_std)
    greedy = trainer.agent.greedy(rollout.obs[0].numpy())
    assert greedy.shape == (2, 1) and np.abs(greedy).max() <= 2.0


TINY_RUNS = {
    "reinforce_moving_average": (
        "cartpole_reinforce.yaml",
        ["env.num_envs=2", "agent.episodes_per_update=4", "agent.baseline=moving_average"],
    ),
    "a2c_lstm": (
        "cartpole_novel_lstm_a2c.yaml",
        [
            "env.num_envs=2",
            "agent.encoder.kwargs.hidden_size=16",
            "agent.encoder.kwargs.torso_kwargs.hidden_sizes=[16]",
        ],
    ),
    "ppo": ("cartpole_ppo.yaml", ["env.num_envs=4", "agent.n_steps=32", "agent.epochs=2", "agent.batch_size=64"]),
    "ppo_lstm": (  # minibatch sequences of 16 steps, replayed from the recurrent states stored in the rollout
        "cartpole_novel_lstm_ppo.yaml",
        [
            "env.num_envs=4",
            "agent.n_steps=32",
            "agent.epochs=2",
            "agent.batch_size=64",
            "agent.seq_len=16",
            "agent.encoder.kwargs.hidden_size=8",
            "agent.encoder.kwargs.torso_kwargs.hidden_sizes=[8]",
        ],
    ),
}


def tiny(run_dir: Path, overrides: list[str]) -> list[str]:
    return [
        *overrides,
        *QUIET,
        "train.total_steps=1500",
        "run.checkpoint_every=500",
        "run.keep_checkpoints=5",
        "eval.every=700",
        "eval.episodes=2",
        "logger.log_every=300",
        f"run.dir={run_dir}",
    ]


@pytest.mark.parametrize("name", list(TINY_RUNS))
def test_resume_from_a_middle_checkpoint_repeats_the_run_exactly(tmp_path, name):
    """Same seed -> identical metrics; a run cut back to an early checkpoint and resumed ends identically."""
    config, overrides = TINY_RUNS[name]
    full, twin, cut = tmp_path / "full", tmp_path / "twin", tmp_path / "cut"
    for run_dir in (full, twin):
        assert main(["train", str(REPO / "configs" / config), *tiny(run_dir, overrides)]) == 0
    metrics = (full / "metrics.jsonl").read_text()
    assert metrics == (twin / "metrics.jsonl").read_text()
    assert killed_after_first_checkpoint(full, cut) >= 3
    assert main(["train", "--resume", str(cut)]) == 0
    assert (cut / "metrics.jsonl").read_text() == metrics
    final = sorted((full / "checkpoints").glob("step_*"))[-1].name
    for file in ("model.safetensors", "arrays.safetensors"):
        assert (cut / "checkpoints" / final / file).read_bytes() == (full / "checkpoints" / final / file).read_bytes()
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["final_eval"] == json.loads((full / "summary.json").read_text())["final_eval"]


MY_CONFIGS = [
    "cartpole_reinforce.yaml",
    "cartpole_reinforce_none.yaml",
    "cartpole_reinforce_moving_average.yaml",
    "cartpole_a2c.yaml",
    "cartpole_novel_lstm_a2c.yaml",
    "cartpole_novel_mlp_a2c.yaml",
    "pendulum_a2c.yaml",
    "pong_a2c.yaml",
    "cartpole_ppo.yaml",
    "cartpole_novel_lstm_ppo.yaml",
    "pendulum_ppo.yaml",
    "pong_ppo.yaml",
    "breakout_ppo.yaml",
]


@pytest.mark.parametrize("name", MY_CONFIGS)
def test_shipped_configs_resolve(name):
    config = load_config(REPO / "configs" / name)
    assert config.agent.name in ("a2c", "reinforce", "ppo")


def test_pong_a2c_trains_a_few_rollouts(tmp_path):
    """The Atari path: ALE vector envs, Nature CNN encoder, uint8 frames; a handful of updates and a checkpoint."""
    run_dir = tmp_path / "pong"
    overrides = [
        *QUIET,
        "env.num_envs=2",
        "train.total_steps=40",
        "eval.every=0",
        "eval.episodes=1",
        "env.kwargs.max_episode_steps=50",
        f"run.dir={run_dir}",
    ]
    assert main(["train", str(REPO / "configs" / "pong_a2c.yaml"), *overrides]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 40 and summary["final_eval"]["episodes"] == 1


@pytest.mark.learning
def test_a2c_solves_cartpole(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", str(REPO / "configs" / "cartpole_a2c.yaml"), *QUIET, f"run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_eval"]["episodes"] == 20
    assert summary["final_eval"]["return_mean"] >= SOLVED, summary["final_eval"]


def test_space_checks_are_user_errors():
    from rl_lab.errors import UserError

    with pytest.raises(UserError, match="Box observations"):
        a2c_trainer("FrozenLake-v1", 1)
    with pytest.raises(UserError, match="Discrete and 1-d Box actions"):
        space = gym.spaces.Box(-1, 1, (3,))
        cfg = config_from_dict({"agent": {"name": "a2c"}}).agent
        A2C(cfg, space, gym.spaces.MultiDiscrete([2, 2]), torch.device("cpu"), 10)


def test_async_envs_give_the_sync_run_and_resume_exactly(tmp_path):
    """env.vector=async steps each env in its own process: same numbers as in-process, and resumable."""
    sync, asyn, cut = tmp_path / "sync", tmp_path / "async", tmp_path / "cut"
    base = [str(REPO / "configs" / "cartpole_a2c.yaml")]
    assert main(["train", *base, *tiny(sync, ["env.num_envs=4"])]) == 0
    assert main(["train", *base, *tiny(asyn, ["env.num_envs=4", "env.vector=async"])]) == 0
    metrics = (sync / "metrics.jsonl").read_text()
    assert (asyn / "metrics.jsonl").read_text() == metrics
    killed_after_first_checkpoint(asyn, cut)
    assert main(["train", "--resume", str(cut)]) == 0
    assert (cut / "metrics.jsonl").read_text() == metrics


def test_encoder_init_and_freeze_reach_policy_gradient_agents(tmp_path):
    """encoder.init loads a saved encoder into actor and critic; encoder.freeze keeps it fixed while heads learn."""
    from rl_lab.backbone import save_encoder

    source = a2c_trainer("CartPole-v1", 2, shared_encoder=False)
    with torch.no_grad():  # both trainers start from seed 0: make the saved weights differ from a fresh init
        for p in source.agent.net.actor_encoder.parameters():
            p.add_(1.0)
    save_encoder(source.agent.net.actor_encoder, tmp_path / "enc")
    trainer = a2c_trainer(
        "CartPole-v1", 2, shared_encoder=False, encoder={"name": "mlp", "init": str(tmp_path / "enc"), "freeze": True}
    )
    net = trainer.agent.net
    saved = source.agent.net.actor_encoder.state_dict()
    for encoder in net.encoders():
        before = {k: v.clone() for k, v in encoder.state_dict().items()}
        assert all(torch.equal(before[k], saved[k]) for k in saved)
    head = {k: v.clone() for k, v in net.action_head.state_dict().items()}
    dist = net.action_head(net.actor_encoder(torch.randn(8, 4)))
    trainer.agent.gradient_step(-dist.log_prob(torch.zeros(8, dtype=torch.long)).mean(), step=0)
    assert all(torch.equal(v, saved[k]) for encoder in net.encoders() for k, v in encoder.state_dict().items())
    assert not all(torch.equal(v, head[k]) for k, v in net.action_head.state_dict().items())

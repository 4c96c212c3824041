"""REINFORCE: the policy's distributions, the weights of each variance-reduction option, whole-episode rollouts,
the update's direction, config errors, and (marked learning) solving CartPole with the learned value baseline."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import REPO, run_rl_lab
from scipy import stats

from rl_lab.agents.reinforce import REINFORCE, REINFORCEConfig, reinforce_weights
from rl_lab.cli import main
from rl_lab.config import EncoderConfig, OptimConfig
from rl_lab.envs import make_vector_env
from rl_lab.loader import config_from_dict
from rl_lab.rl.onpolicy import OnPolicyTrainer, Rollout
from rl_lab.rl.policy import Categorical, DiagGaussian

SOLVED = 475.0
REINFORCE_CONFIG = REPO / "configs" / "cartpole_reinforce.yaml"


# --------------------------------------------------------------------------- distributions


def test_categorical_log_prob_entropy_and_mode():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    dist = Categorical(logits)
    probs = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    actions = torch.tensor([1, 2])
    np.testing.assert_allclose(dist.log_prob(actions).numpy(), np.log(probs[[0, 1], [1, 2]]), rtol=1e-6)
    np.testing.assert_allclose(dist.entropy().numpy(), [stats.entropy(p) for p in probs], rtol=1e-6)
    assert dist.entropy()[1].item() == pytest.approx(math.log(3))  # uniform over 3 actions
    assert dist.mode().tolist() == [1, 0]
    torch.manual_seed(0)
    samples = Categorical(logits[:1].expand(20_000, 3)).sample()
    np.testing.assert_allclose(np.bincount(samples.numpy(), minlength=3) / 20_000, probs[0], atol=0.015)


def test_diagonal_gaussian_log_prob_entropy_and_sampling():
    mean = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    log_std = torch.tensor([0.3, -0.7])
    dist = DiagGaussian(mean, log_std)
    actions = torch.tensor([[0.0, 0.0], [2.5, -0.2]])
    std = np.exp(log_std.numpy())
    expected = stats.norm.logpdf(actions.numpy(), mean.numpy(), std).sum(1)
    np.testing.assert_allclose(dist.log_prob(actions).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(dist.entropy().numpy(), [stats.norm.entropy(scale=std).sum()] * 2, rtol=1e-6)
    assert torch.equal(dist.mode(), mean)
    torch.manual_seed(0)
    samples = DiagGaussian(mean[:1].expand(50_000, 2), log_std).sample()
    np.testing.assert_allclose(samples.mean(0).numpy(), mean[0].numpy(), atol=0.03)
    np.testing.assert_allclose(samples.std(0).numpy(), std, rtol=0.02)


# --------------------------------------------------------------------------- the weights of log pi


def one_episode(terminated_at_end: bool) -> Rollout:
    """One env, rewards 1, 2, 3; the episode ends at t = 2 by termination or by the time limit."""
    end = torch.tensor([[False], [False], [True]])
    no = torch.zeros(3, 1, dtype=torch.bool)
    return Rollout(
        obs=torch.zeros(3, 1, 4),
        actions=torch.zeros(3, 1, dtype=torch.long),
        rewards=torch.tensor([[1.0], [2.0], [3.0]]),
        terminated=end if terminated_at_end else no,
        truncated=no if terminated_at_end else end,
        starts=torch.tensor([[True], [False], [False]]),
        valid=torch.ones(3, 1, dtype=torch.bool),
        values=None,
        next_values=torch.tensor([[0.0], [0.0], [8.0]]),  # V(final obs) = 8
        state=None,
        episodes=1,
    )


GAMMA = 0.5
TO_GO = [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]  # 2.75, 3.5, 3


@pytest.mark.parametrize(
    ("settings", "expected_returns", "expected_weights"),
    [
        ({"reward_to_go": False, "baseline": "none"}, [2.75] * 3, [2.75] * 3),
        ({"reward_to_go": True, "baseline": "none"}, TO_GO, TO_GO),
        ({"reward_to_go": True, "baseline": "moving_average"}, TO_GO, [g - 1.5 for g in TO_GO]),
        ({"reward_to_go": True, "baseline": "learned_value"}, TO_GO, [2.75 - 1, 3.5 - 2, 3.0 - 4]),
    ],
    ids=["total_return", "reward_to_go", "moving_average", "learned_value"],
)
def test_weights_of_each_option_by_hand(settings, expected_returns, expected_weights):
    cfg = REINFORCEConfig(gamma=GAMMA, **settings)
    values = torch.tensor([[1.0], [2.0], [4.0]])
    returns, weights = reinforce_weights(cfg, one_episode(terminated_at_end=True), values, moving_average=1.5)
    torch.testing.assert_close(returns[:, 0], torch.tensor(expected_returns))
    torch.testing.assert_close(weights[:, 0], torch.tensor(expected_weights))


def test_only_a_learned_value_bootstraps_a_time_limit():
    rollout = one_episode(terminated_at_end=False)
    learned, _ = reinforce_weights(REINFORCEConfig(gamma=GAMMA), rollout, torch.zeros(3, 1), 0.0)
    plain, _ = reinforce_weights(REINFORCEConfig(gamma=GAMMA, baseline="none"), rollout, None, 0.0)
    torch.testing.assert_close(learned[:, 0], torch.tensor(TO_GO) + torch.tensor([0.125, 0.25, 0.5]) * 8)
    torch.testing.assert_close(plain[:, 0], torch.tensor(TO_GO))


# --------------------------------------------------------------------------- rollouts and updates


def make_trainer(num_envs: int, episodes: int, **agent) -> OnPolicyTrainer:
    config = config_from_dict(
        {
            "env": {"id": "CartPole-v1", "num_envs": num_envs},
            "agent": {"name": "reinforce", "episodes_per_update": episodes, **agent},
        }
    )
    torch.manual_seed(0)
    envs = make_vector_env("CartPole-v1", num_envs)
    agent = REINFORCE(config.agent, envs.single_observation_space, envs.single_action_space, torch.device("cpu"), 10)
    return OnPolicyTrainer(config, agent, envs, np.random.default_rng(0))


def test_every_env_plays_its_quota_of_whole_episodes():
    trainer = make_trainer(num_envs=3, episodes=6)
    for _ in range(2):
        r = trainer.collect()
        done = (r.terminated | r.truncated) & r.valid
        assert r.episodes == 6 and done.sum(0).tolist() == [2, 2, 2]
        assert r.starts[0].all()
        for i in range(3):  # valid up to and including each env's second episode end, not a step after
            last = int(torch.nonzero(done[:, i])[-1])
            assert r.valid[: last + 1, i].all() and not r.valid[last + 1 :, i].any()
        assert r.valid[-1].any(), "the rollout stops as soon as the last env finishes"


def test_update_makes_the_better_action_more_likely():
    """One state, two actions: after one update without a baseline, the action with the higher return gains."""
    space = gym.spaces.Box(-1, 1, (2,))
    cfg = REINFORCEConfig(
        encoder=EncoderConfig("mlp", {"hidden_sizes": []}), baseline="none", optim=OptimConfig(lr=0.1), gamma=1.0
    )
    agent = REINFORCE(cfg, space, gym.spaces.Discrete(2), torch.device("cpu"), 10)
    obs = torch.tensor([[[1.0, 0.5]], [[1.0, 0.5]]])  # two one-step episodes from the same state
    rollout = replace(
        one_episode(True),
        obs=obs,
        actions=torch.tensor([[0], [1]]),
        rewards=torch.tensor([[10.0], [1.0]]),
        terminated=torch.ones(2, 1, dtype=torch.bool),
        truncated=torch.zeros(2, 1, dtype=torch.bool),
        starts=torch.ones(2, 1, dtype=torch.bool),
        valid=torch.ones(2, 1, dtype=torch.bool),
        next_values=torch.zeros(2, 1),
        episodes=2,
    )

    def p_action_0() -> float:
        with torch.no_grad():
            return agent.net(obs[:1], None, torch.ones(1, 1, dtype=torch.bool))[0].logits.exp()[0, 0, 0].item()

    before = p_action_0()
    metrics = agent.update(rollout, step=2)
    assert p_action_0() > before + 0.05
    assert metrics["return_mean"] == pytest.approx(5.5)


def test_moving_average_baseline_is_updated_and_checkpointed():
    trainer = make_trainer(num_envs=2, episodes=2, baseline="moving_average", baseline_momentum=0.5)
    rollout = trainer.collect()
    trainer.agent.update(rollout, step=1)
    returns, _ = reinforce_weights(trainer.agent.cfg, rollout, None, 0.0)
    assert trainer.agent.moving_average.item() == pytest.approx(0.5 * returns[rollout.valid].mean().item(), rel=1e-5)
    state = trainer.agent.state_dict()
    other = make_trainer(num_envs=2, episodes=2, baseline="moving_average").agent
    other.load_state_dict(state)
    assert other.moving_average.item() == trainer.agent.moving_average.item()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["env.num_envs=3", "agent.episodes_per_update=8"], ["episodes_per_update=8", "multiple", "num_envs=3"]),
        (["agent.baseline=average"], ["agent.baseline", "none, moving_average, learned_value"]),
        (["agent.baseline_momentum=1.0"], ["baseline_momentum", "[0, 1)"]),
        (["agent.n_steps=5"], ["agent.n_steps", "unknown key"]),
    ],
)
def test_bad_reinforce_settings_are_one_line_user_errors(tmp_path, capsys, overrides, words):
    assert main(["train", str(REINFORCE_CONFIG), *overrides, f"run.dir={tmp_path / 'run'}"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rl-lab: error: "), lines
    assert all(word in lines[0] for word in words), lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.learning
def test_reinforce_with_learned_baseline_solves_cartpole(tmp_path):
    run_dir = tmp_path / "run"
    args = [f"run.dir={run_dir}", "logger.wandb.mode=disabled", "logger.progress=false", "device=cpu"]
    result = run_rl_lab("train", REINFORCE_CONFIG, *args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_eval"]["episodes"] == 20
    assert summary["final_eval"]["return_mean"] >= SOLVED, summary["final_eval"]

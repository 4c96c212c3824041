"""DQN on CartPole's spaces with hand-set linear Q-networks, so every Q-value and target is known exactly."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_lab.agents.dqn import DQN, DQNConfig
from rl_lab.config import EncoderConfig, OptimConfig
from rl_lab.errors import UserError
from rl_lab.replay.uniform import Batch, ReplayBuffer

ENV = gym.make("CartPole-v1")  # observation Box(4,), actions Discrete(2)
GAMMA = 0.9

# With no hidden layer the encoder is the identity, so Q(s) = W s + b with W (2x4) and b (2) set by hand.
ONLINE_W = [[0, 0, 1, 0], [0, 0, 0, 1]]  # online argmax compares s[2] with s[3]
TARGET_W = [[1, 0, 0, 0], [0, 1, 0, 0]]  # target values are s[0] and s[1]

# next_obs rows chosen so that the online argmax and the target argmax differ in rows 0 and 1
NEXT_OBS = [[3, 1, 0, 1], [1, 2, 5, 0], [4, -1, 2, 0], [0.5, 2.5, 0, 3]]
REWARDS = [1, -1, 2, 0.5]
TERMINATED = [False, False, True, False]  # row 2 ended for real; row 3 stands for a time-limit truncation
PLAIN_TARGET = [1 + GAMMA * 3, -1 + GAMMA * 2, 2, 0.5 + GAMMA * 2.5]  # max over target Q
DOUBLE_TARGET = [1 + GAMMA * 1, -1 + GAMMA * 1, 2, 0.5 + GAMMA * 2.5]  # target Q at the online argmax


def make_agent(hidden_sizes=(), total_steps: int = 1000, **overrides) -> DQN:
    settings = {"gamma": GAMMA, "learning_starts": 0, "train_freq": 1, "target_update_interval": 10**6}
    settings.update(overrides)
    cfg = DQNConfig(encoder=EncoderConfig("mlp", {"hidden_sizes": list(hidden_sizes)}), **settings)
    return DQN(cfg, ENV.observation_space, ENV.action_space, torch.device("cpu"), total_steps)


def set_linear(net: torch.nn.Module, weight, bias=(0.0, 0.0)) -> None:
    with torch.no_grad():
        net.head.linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        net.head.linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def hand_set_agent(**overrides) -> DQN:
    agent = make_agent(**overrides)
    set_linear(agent.q_net, ONLINE_W)
    set_linear(agent.target_net, TARGET_W)
    return agent


def tensor(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


@pytest.mark.parametrize(("double_dqn", "expected"), [(False, PLAIN_TARGET), (True, DOUBLE_TARGET)])
def test_td_target_by_hand(double_dqn, expected):
    agent = hand_set_agent(double_dqn=double_dqn)
    target = agent.td_target(tensor(REWARDS), tensor(NEXT_OBS), tensor(TERMINATED, torch.bool))
    torch.testing.assert_close(target, tensor(expected))
    # the same batch with a leading (G, B) shape, as the training phase uses it
    target = agent.td_target(
        tensor(REWARDS).reshape(2, 2), tensor(NEXT_OBS).reshape(2, 2, 4), tensor(TERMINATED, torch.bool).reshape(2, 2)
    )
    torch.testing.assert_close(target, tensor(expected).reshape(2, 2))


def one_transition_buffer(next_obs, reward: float, terminated: bool, truncated: bool) -> ReplayBuffer:
    buffer = ReplayBuffer(4, (4,), np.float32)
    obs = np.array([[0.0, 0.0, 1.0, 2.0]], dtype=np.float32)  # online Q(obs) = (1, 2)
    action, next_obs = np.array([1]), np.array([next_obs], np.float32)
    buffer.add(obs, action, np.array([reward], np.float32), next_obs, np.array([terminated]), np.array([truncated]))
    return buffer


@pytest.mark.parametrize("double_dqn", [False, True])
@pytest.mark.parametrize(
    ("terminated", "truncated"), [(True, False), (False, True), (False, False)], ids=["terminated", "truncated", "mid"]
)
def test_training_phase_bootstraps_on_truncation_not_termination(double_dqn, terminated, truncated):
    """Through the real path (replay buffer -> train): the loss reported is that of the hand-computed target."""
    agent = hand_set_agent(double_dqn=double_dqn, loss="mse", batch_size=4)
    next_obs = NEXT_OBS[0]  # target max 3, target at online argmax 1
    buffer = one_transition_buffer(next_obs, reward=1.0, terminated=terminated, truncated=truncated)
    metrics = agent.train(buffer, step=1, steps_taken=1, rng=np.random.default_rng(0))
    bootstrap = 0.0 if terminated else GAMMA * (1.0 if double_dqn else 3.0)
    q_taken = 2.0  # action 1 in obs
    assert metrics["q_mean"] == pytest.approx(q_taken)
    assert metrics["loss"] == pytest.approx((q_taken - (1.0 + bootstrap)) ** 2)


@pytest.mark.parametrize(("loss", "expected"), [("huber", (2.5 + 0.125) / 2), ("mse", (9 + 0.25) / 2)])
def test_loss_selection(loss, expected):
    agent = hand_set_agent(loss=loss)
    obs = tensor([[0, 0, 1, 2], [0, 0, 4, 0]])  # online Q: (1, 2) and (4, 0)
    no = tensor([0, 0], torch.bool)
    batch = Batch(obs, tensor([1, 0], torch.int64), tensor([0, 0]), obs, terminated=no, truncated=no)
    value, q_taken = agent.loss(batch, target=tensor([5.0, 3.5]))  # errors 3 (linear part) and 0.5 (quadratic)
    torch.testing.assert_close(q_taken, tensor([2.0, 4.0]))
    assert value.item() == pytest.approx(expected)


def random_buffer(capacity: int, seed: int) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(capacity, (4,), np.float32)
    buffer.add(
        rng.normal(size=(capacity, 4)).astype(np.float32),
        rng.integers(2, size=capacity),
        rng.normal(size=capacity).astype(np.float32),
        rng.normal(size=(capacity, 4)).astype(np.float32),
        rng.random(capacity) < 0.2,
        rng.random(capacity) < 0.1,
    )
    return buffer


@pytest.mark.parametrize("double_dqn", [False, True])
def test_one_phase_of_g_steps_equals_g_single_step_phases(double_dqn):
    """The fast path (all G batches sampled at once, target-net values for all of them precomputed) must train
    exactly like G phases of one gradient step each on the same batches (the target net is fixed throughout)."""
    g, b, seed = 8, 32, 7
    buffer = random_buffer(256, seed=1)  # 256 slots: numpy draws (G, B) indices as G draws of (1, B)
    idx_all = buffer.sample_indices((g, b), np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    idx_steps = np.concatenate([buffer.sample_indices((1, b), rng) for _ in range(g)])
    np.testing.assert_array_equal(idx_all, idx_steps)  # so both agents see the same batches in the same order
    assert len({tuple(row) for row in idx_all.tolist()}) == g

    common = {
        "hidden_sizes": [16],
        "batch_size": b,
        "double_dqn": double_dqn,
        "optim": OptimConfig(lr=1e-2, grad_clip=1.0),
    }
    torch.manual_seed(0)
    fast = make_agent(gradient_steps=g, **common)
    with torch.no_grad():  # a target net unlike the online net, so using the wrong one would show
        for p in fast.target_net.parameters():
            p.add_(torch.randn_like(p))
    slow = make_agent(gradient_steps=1, **common)
    slow.q_net.load_state_dict(fast.q_net.state_dict())
    slow.target_net.load_state_dict(fast.target_net.state_dict())
    start = [p.clone() for p in fast.q_net.parameters()]
    target_before = [p.clone() for p in fast.target_net.parameters()]

    fast_metrics = fast.train(buffer, step=1, steps_taken=1, rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    slow_metrics = [slow.train(buffer, step=s, steps_taken=1, rng=rng) for s in range(1, g + 1)]

    for p_fast, p_slow, p0 in zip(fast.q_net.parameters(), slow.q_net.parameters(), start, strict=True):
        assert (p_fast - p0).abs().max() > 1e-3, "the phase should have moved the weights"
        torch.testing.assert_close(p_fast, p_slow, rtol=1e-5, atol=1e-6)
    for p_fast, p_slow, p0 in zip(
        fast.target_net.parameters(), slow.target_net.parameters(), target_before, strict=True
    ):
        assert torch.equal(p_fast, p0) and torch.equal(p_slow, p0), "no target update was due"
    assert fast_metrics["loss"] == pytest.approx(np.mean([m["loss"] for m in slow_metrics]), rel=1e-5)
    assert fast_metrics["q_mean"] == pytest.approx(np.mean([m["q_mean"] for m in slow_metrics]), rel=1e-5)


def test_no_training_before_learning_starts_and_between_train_freq():
    agent = make_agent(learning_starts=100, train_freq=4)
    buffer = random_buffer(64, seed=2)
    before = [p.clone() for p in agent.q_net.parameters()]
    assert agent.train(buffer, step=99, steps_taken=1, rng=np.random.default_rng(0)) is None
    assert agent.train(buffer, step=101, steps_taken=1, rng=np.random.default_rng(0)) is None  # 101 % 4 != 0
    assert all(torch.equal(p, q) for p, q in zip(agent.q_net.parameters(), before, strict=True))
    assert agent.train(buffer, step=105, steps_taken=2, rng=np.random.default_rng(0)) is not None  # 104, 105


def test_epsilon_schedule_start_middle_end():
    agent = make_agent(exploration_initial=1.0, exploration_final=0.1, exploration_fraction=0.5, total_steps=1000)
    assert agent.epsilon(0) == pytest.approx(1.0)
    assert agent.epsilon(250) == pytest.approx(0.55)  # halfway through the 500 decay steps
    assert agent.epsilon(500) == pytest.approx(0.1)
    assert agent.epsilon(999) == pytest.approx(0.1)


@pytest.mark.parametrize(("epsilon", "expected_random_share"), [(0.0, 0.0), (0.5, 0.25), (1.0, 0.5)])
def test_act_is_epsilon_greedy(epsilon, expected_random_share):
    agent = hand_set_agent(exploration_initial=epsilon, exploration_final=epsilon)
    obs = np.random.default_rng(0).normal(size=(4000, 4)).astype(np.float32)
    greedy = (obs[:, 3] > obs[:, 2]).astype(np.int64)  # argmax of the hand-set online Q = (s[2], s[3])
    np.testing.assert_array_equal(agent.greedy(obs), greedy)
    actions = agent.act(obs, step=0, rng=np.random.default_rng(1))
    # a random action differs from the greedy one half the time
    assert np.mean(actions != greedy) == pytest.approx(expected_random_share, abs=0.03)


def fill(net: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)


def target_values(agent: DQN) -> set[float]:
    return {v for p in agent.target_net.parameters() for v in p.flatten().tolist()}


def test_hard_target_update_copies_at_the_interval():
    agent = make_agent(hidden_sizes=[8], target_update_interval=100, learning_starts=10**6)
    empty = ReplayBuffer(8, (4,), np.float32)
    fill(agent.q_net, 1.0)
    fill(agent.target_net, 0.0)
    agent.train(empty, step=99, steps_taken=1, rng=None)
    assert target_values(agent) == {0.0}
    agent.train(empty, step=100, steps_taken=1, rng=None)
    assert target_values(agent) == {1.0}
    fill(agent.q_net, 2.0)
    agent.train(empty, step=150, steps_taken=1, rng=None)
    assert target_values(agent) == {1.0}
    agent.train(empty, step=202, steps_taken=4, rng=None)  # 4 envs: steps 199..202 passed 200
    assert target_values(agent) == {2.0}


def test_polyak_target_update_with_tau():
    agent = make_agent(hidden_sizes=[8], target_update_interval=100, learning_starts=10**6, tau=0.25)
    empty = ReplayBuffer(8, (4,), np.float32)
    fill(agent.q_net, 1.0)
    fill(agent.target_net, 0.0)
    agent.train(empty, step=100, steps_taken=1, rng=None)
    assert target_values(agent) == {0.25}
    agent.train(empty, step=200, steps_taken=1, rng=None)
    assert target_values(agent) == {0.25 + 0.25 * 0.75}


def test_continuous_actions_are_a_user_error():
    box = gym.spaces.Box(-1, 1, (2,))
    with pytest.raises(UserError, match="discrete"):
        DQN(DQNConfig(), ENV.observation_space, box, torch.device("cpu"), 1000)


def test_lr_end_anneals_the_learning_rate():
    agent = make_agent(optim=OptimConfig(lr=1e-2, schedule="linear", lr_end=0.0), total_steps=1000)
    buffer = random_buffer(64, seed=3)
    agent.train(buffer, step=500, steps_taken=1, rng=np.random.default_rng(0))
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3, rel=0.05)


def test_dueling_head_is_value_plus_centred_advantage():
    agent = make_agent(hidden_sizes=[8], dueling=True)
    features = torch.randn(5, 8)
    head = agent.q_net.head
    value, advantage = head.value(features), head.advantage(features)
    torch.testing.assert_close(head(features), value + advantage - advantage.mean(dim=1, keepdim=True))
    q = agent.q_net(torch.randn(5, 4))
    assert q.shape == (5, 2)


@pytest.mark.parametrize("double_dqn", [False, True])
def test_nstep_target_uses_the_batch_discount(double_dqn):
    agent = hand_set_agent(double_dqn=double_dqn)
    discount = tensor([GAMMA**3, GAMMA, GAMMA**2, GAMMA**3])  # episodes that ended early bootstrap sooner
    target = agent.td_target(tensor(REWARDS), tensor(NEXT_OBS), tensor(TERMINATED, torch.bool), discount=discount)
    best = DOUBLE_TARGET if double_dqn else PLAIN_TARGET
    next_values = [(b - r) / GAMMA for b, r in zip(best, REWARDS, strict=True)]  # recover max Q from the 1-step target
    expected = [r + d * v for r, d, v in zip(REWARDS, discount.tolist(), next_values, strict=True)]
    torch.testing.assert_close(target, tensor(expected))


def test_prioritized_training_weights_the_loss_and_sets_priorities_to_the_td_errors():
    from rl_lab.replay.prioritized import Prioritized

    agent = hand_set_agent(loss="mse", batch_size=8, prioritized=True, per_alpha=1.0, per_beta=0.5)
    buffer = Prioritized(ReplayBuffer(8, (4,), np.float32), alpha=1.0, eps=1e-6)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(8, 4)).astype(np.float32)
    buffer.add(
        obs, rng.integers(2, size=8), rng.normal(size=8).astype(np.float32), obs, np.ones(8, bool), np.zeros(8, bool)
    )
    buffer.update_priorities(np.arange(8), np.arange(1.0, 9.0))  # unequal priorities -> unequal weights
    buffer.beta = 0.5 + 0.5 * 1 / 1000  # annealed towards 1 over the agent's 1000 steps: its value at step 1
    state = np.random.default_rng(5).bit_generator.state
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    batch = buffer.sample((1, 8), rng)  # what train() will draw with the same generator state
    q_taken = agent.q_net(batch.obs[0]).gather(1, batch.actions[0].unsqueeze(1)).squeeze(1).detach()
    td = batch.rewards[0] - q_taken  # terminated: the target is the reward
    expected_loss = (batch.weights[0] * td**2).mean().item()
    rng.bit_generator.state = state
    metrics = agent.train(buffer, step=1, steps_taken=1, rng=rng)
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    idx = batch.indices[0]
    np.testing.assert_allclose(buffer.tree.values(idx), np.abs(td.numpy()) + 1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("num_envs", "train_freq", "gradient_steps"), [(1, 4, 1), (8, 4, 1), (16, 4, 2), (8, 1, 1), (3, 4, 1), (2, 8, 3)]
)
def test_replay_ratio_does_not_depend_on_the_number_of_envs(num_envs, train_freq, gradient_steps):
    """gradient_steps / train_freq gradient steps per env step, however many envs step at once (each vector step
    is num_envs env steps; a window can hold several training phases, or none)."""
    agent = make_agent(hidden_sizes=[8], train_freq=train_freq, gradient_steps=gradient_steps, batch_size=8)
    buffer, rng, total = random_buffer(64, seed=4), np.random.default_rng(0), 240
    calls = 0
    for step in range(num_envs, total + 1, num_envs):
        calls += agent.train(buffer, step, num_envs, rng) is not None
    updates = {int(s["step"]) for s in agent.optimizer.state.values()}
    assert updates == {total * gradient_steps // train_freq}
    assert calls == min(total // num_envs, total // train_freq)  # a metrics row whenever something trained


def test_target_updates_and_phases_keep_their_order_inside_one_vector_step():
    """16 envs, a phase every 4 env steps, a target copy every 12: within one vector step the copy at step 12
    comes after the phases at steps 4 and 8 and before those at 12 and 16 (at the same step, target first)."""
    settings = {"hidden_sizes": [8], "train_freq": 4, "target_update_interval": 12, "batch_size": 8}
    torch.manual_seed(0)
    agent, twin = make_agent(**settings), make_agent(**settings)
    twin.q_net.load_state_dict(agent.q_net.state_dict())
    twin.target_net.load_state_dict(agent.target_net.state_dict())
    buffer = random_buffer(64, seed=5)
    agent.train(buffer, 16, 16, np.random.default_rng(0))
    twin.train(buffer, 11, 11, np.random.default_rng(0))  # the phases at steps 4 and 8 alone, on the same batches
    for target, learned, online in zip(
        agent.target_net.parameters(), twin.q_net.parameters(), agent.q_net.parameters(), strict=True
    ):
        assert torch.equal(target, learned)
        assert not torch.equal(online, learned)


def image_agent(encoder: str) -> DQN:
    space = gym.spaces.Box(0, 255, (3, 8, 8), np.uint8)
    kwargs = {"width": 4, "blocks": [1]} if encoder == "resnet" else {"channels": [4], "hidden_sizes": [8]}
    cfg = DQNConfig(
        encoder=EncoderConfig(encoder, {**kwargs, "dropout": 0.5}), learning_starts=0, train_freq=1, batch_size=4
    )
    torch.manual_seed(0)
    return DQN(cfg, space, gym.spaces.Discrete(3), torch.device("cpu"), 1000)


@pytest.mark.parametrize("encoder", ["resnet", "vgg"])
def test_acting_is_in_eval_mode_and_learning_in_train_mode(encoder):
    """With batch norm and dropout in the encoder, the Q-values an env's observation gets must not depend on the
    other envs' observations in the batch, nor on chance: acting runs in eval mode, the update in train mode."""
    agent = image_agent(encoder)
    outputs, modes = [], []

    def record(module, args, out):
        outputs.append(out.detach())
        modes.append(module.training)

    agent.q_net.register_forward_hook(record)
    obs = np.random.default_rng(0).integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    agent.greedy(obs)
    agent.greedy(obs[:2])
    torch.testing.assert_close(outputs[1], outputs[0][:2])
    buffer = ReplayBuffer(16, (3, 8, 8), np.uint8)
    no = np.zeros(8, bool)
    buffer.add(obs, np.zeros(8, np.int64), np.ones(8, np.float32), obs, no, no)
    agent.train(buffer, step=1, steps_taken=1, rng=np.random.default_rng(0))
    assert modes[:2] == [False, False] and all(modes[2:])
    modes.clear()
    agent.act(obs, step=10**6, rng=np.random.default_rng(0))  # epsilon 0.05: the network is asked
    assert modes == [False]
    assert not agent.target_net.training


def test_prioritized_phase_draws_each_batch_after_the_previous_step_updated_the_priorities():
    """A phase of G gradient steps on prioritized replay must train exactly like G phases of one step each:
    every batch is drawn from the priorities the previous step's TD errors set (Schaul et al. 2016, Alg. 1)."""
    from rl_lab.replay.prioritized import Prioritized

    def buffer():
        per = Prioritized(random_buffer(64, seed=6), alpha=1.0)
        per.update_priorities(np.arange(64), np.linspace(0.1, 3.0, 64))
        return per

    g = 4
    common = {"hidden_sizes": [16], "batch_size": 16, "prioritized": True, "per_alpha": 1.0, "per_beta": 1.0}
    torch.manual_seed(0)
    fast = make_agent(gradient_steps=g, optim=OptimConfig(lr=0.05), **common)
    slow = make_agent(gradient_steps=1, optim=OptimConfig(lr=0.05), **common)
    slow.q_net.load_state_dict(fast.q_net.state_dict())
    slow.target_net.load_state_dict(fast.target_net.state_dict())
    fast_buffer, slow_buffer = buffer(), buffer()
    fast.train(fast_buffer, step=1, steps_taken=1, rng=np.random.default_rng(7))
    rng = np.random.default_rng(7)
    for s in range(1, g + 1):
        slow.train(slow_buffer, step=s, steps_taken=1, rng=rng)
    np.testing.assert_allclose(fast_buffer.tree.tree, slow_buffer.tree.tree, rtol=1e-5)
    for p_fast, p_slow in zip(fast.q_net.parameters(), slow.q_net.parameters(), strict=True):
        torch.testing.assert_close(p_fast, p_slow)

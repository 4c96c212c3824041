"""GPU checks (`pytest -m gpu`): run where CUDA is available; the CPU-only CI skips them."""

import numpy as np
import pytest
import torch

from rl_lab.agents.dqn import DQN, DQNConfig
from rl_lab.envs import make_vector_env
from rl_lab.replay.uniform import ReplayBuffer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _trained_q_values(device: str) -> np.ndarray:
    torch.manual_seed(0)
    envs = make_vector_env("CartPole-v1", 1)
    cfg = DQNConfig(learning_starts=0, train_freq=1, gradient_steps=8, batch_size=32, buffer_size=256)
    agent = DQN(cfg, envs.single_observation_space, envs.single_action_space, torch.device(device), 1000)
    buffer = ReplayBuffer(256, (4,), np.float32)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(256, 4)).astype(np.float32)
    buffer.add(
        obs, rng.integers(2, size=256), rng.random(256), np.roll(obs, 1, 0), rng.random(256) < 0.1, np.zeros(256, bool)
    )
    for step in range(1, 6):
        agent.train(buffer, step, 1, rng)
    return agent.q_net(torch.as_tensor(obs[:16], device=device)).detach().cpu().numpy()


def test_dqn_update_on_cuda_matches_cpu_within_float_noise():
    # CPU and CUDA start from the same weights (same seed) and see the same batches (same numpy rng).
    np.testing.assert_allclose(_trained_q_values("cuda"), _trained_q_values("cpu"), rtol=1e-3, atol=1e-4)

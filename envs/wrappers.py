"""Observation wrappers that make partially observable tasks out of standard ones."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control import CartPoleEnv


class KeepObservations(gym.ObservationWrapper):
    """Keep only the given entries of a 1-d Box observation (e.g. positions without velocities)."""

    def __init__(self, env: gym.Env, indices: list[int]):
        super().__init__(env)
        self.indices = np.asarray(indices)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low[self.indices], space.high[self.indices], dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.indices]


def cartpole_no_velocity(**kwargs) -> gym.Env:
    """CartPole that shows the cart position and pole angle only: the velocities must be inferred from history.

    A memoryless policy cannot tell a pole falling left from one swinging back; a recurrent one can.
    Registered as rl_lab/CartPoleNoVelocity-v1 (500-step limit, solved at 475, like CartPole-v1).
    """
    return KeepObservations(CartPoleEnv(**kwargs), [0, 2])

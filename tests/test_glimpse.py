"""The glimpse sensor against a slow per-pixel reference, and the glimpse task as a gymnasium env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import rl_lab.envs  # noqa: F401 - registers rl_lab/Glimpse-v0
from rl_lab.errors import UserError
from rl_lab.ram.sensor import glimpse


def reference_glimpse(image: np.ndarray, loc: tuple[float, float], size: int, scales: int, scale: int) -> np.ndarray:
    """Written from the definition, one output pixel at a time: patch i has side P = size * scale**i around the
    pixel centre (floor((l + 1) / 2 * side), last pixel for l = 1); each output pixel averages a (P/size)^2 block;
    pixels outside the image count as 0."""
    channels, height, width = image.shape
    col = min(int(np.floor((loc[0] + 1) / 2 * width)), width - 1)
    row = min(int(np.floor((loc[1] + 1) / 2 * height)), height - 1)
    out = np.zeros((scales, channels, size, size))
    for i in range(scales):
        side = size * scale**i
        block = side // size
        top, left = row - side // 2, col - side // 2
        for c in range(channels):
            for u in range(size):
                for v in range(size):
                    total = 0.0
                    for y in range(top + u * block, top + (u + 1) * block):
                        for x in range(left + v * block, left + (v + 1) * block):
                            if 0 <= y < height and 0 <= x < width:
                                total += image[c, y, x]
                    out[i, c, u, v] = total / block**2
    return out


@pytest.mark.parametrize(
    ("shape", "size", "scales", "scale"),
    [((1, 28, 28), 8, 1, 2), ((1, 28, 28), 5, 3, 2), ((3, 13, 17), 4, 2, 3), ((1, 60, 60), 12, 3, 2)],
)
def test_sensor_matches_reference(shape, size, scales, scale):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, *shape, generator=gen, dtype=torch.float64)
    # centre, corners (half the patch outside: zero padding), edges, and random places
    locs = torch.tensor([[0.0, 0.0], [-1.0, -1.0], [1.0, 1.0], [1.0, -0.3], [0.37, -0.91], [-0.55, 0.8]])
    out = glimpse(images, locs, size, scales, scale)
    assert out.shape == (6, scales, shape[0], size, size)
    for b in range(6):
        expected = reference_glimpse(images[b].numpy(), tuple(locs[b].tolist()), size, scales, scale)
        np.testing.assert_allclose(out[b].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_sensor_zero_padding_and_coordinates():
    image = torch.ones(1, 1, 10, 10)
    corner = glimpse(image, torch.tensor([[-1.0, -1.0]]), 4)[0, 0, 0]
    assert corner[:2].sum() == 0 and corner[:, :2].sum() == 0  # above and left of the image: zeros
    assert (corner[2:, 2:] == 1).all()
    marked = torch.zeros(1, 1, 10, 10)
    marked[0, 0, 1, 8] = 1.0  # top right: x > 0, y < 0
    assert glimpse(marked, torch.tensor([[0.7, -0.7]]), 2).sum() == 1
    assert glimpse(marked, torch.tensor([[-0.7, 0.7]]), 2).sum() == 0


def test_sensor_is_batched_per_image():
    """Each image of a batch is read at its own location: the batch equals the images one by one."""
    images = torch.rand(5, 2, 20, 20)
    locs = torch.rand(5, 2) * 2 - 1
    batched = glimpse(images, locs, 6, 2, 2)
    single = torch.cat([glimpse(images[i : i + 1], locs[i : i + 1], 6, 2, 2) for i in range(5)])
    torch.testing.assert_close(batched, single)


@pytest.mark.parametrize("actions", ["discrete", "continuous"])
def test_env_passes_gymnasium_check(actions):
    env = gym.make("rl_lab/Glimpse-v0", actions=actions, glimpses=3).unwrapped
    check_env(env, skip_render_check=True)


def test_env_episode_discrete():
    env = gym.make("rl_lab/Glimpse-v0", glimpses=3, grid=3).unwrapped
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    assert obs[-1] == pytest.approx(2 / 3) and (obs[-3:-1] == 0).all()  # budget left, centre location
    obs, reward, terminated, _, _ = env.step(0)  # top-left cell
    assert (reward, terminated) == (0.0, False)
    np.testing.assert_allclose(obs[-3:-1], [-2 / 3, -2 / 3], rtol=1e-6)
    label = info["label"]
    _, reward, terminated, _, info = env.step(9 + label)  # answer early, correctly
    assert (reward, terminated, info["correct"]) == (1.0, True, True)

    env.reset(seed=1)
    env.step(4)
    env.step(4)
    _, reward, terminated, _, _ = env.step(4)  # a look with no glimpse left: ends unanswered
    assert (reward, terminated) == (0.0, True)
    _, info = env.reset(seed=1)
    _, reward, _, _, _ = env.step(9 + (info["label"] + 1) % 10)
    assert reward == 0.0


def test_env_episode_continuous_is_fixed_length_and_deterministic():
    env = gym.make("rl_lab/Glimpse-v0", glimpses=4, actions="continuous").unwrapped
    first, info = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(first, again)
    answer = np.zeros(12, dtype=np.float32)
    answer[2 + info["label"]] = 1.0
    for _ in range(3):
        _, reward, terminated, _, _ = env.step(answer)
        assert (reward, terminated) == (0.0, False)
    _, reward, terminated, _, _ = env.step(answer)
    assert (reward, terminated) == (1.0, True)


def test_env_uses_the_ram_sensor():
    """The observation's pixels are the sensor's glimpse of the episode's image at the current location."""
    env = gym.make("rl_lab/Glimpse-v0", glimpses=3, glimpse_size=6, scales=2, actions="continuous").unwrapped
    env.reset(seed=0)
    obs, *_ = env.step(np.array([0.4, -0.2] + [0.0] * 10, dtype=np.float32))
    image = env.images[env.index : env.index + 1]
    expected = glimpse(image, torch.tensor([[0.4, -0.2]]), 6, 2, 2).flatten().numpy()
    np.testing.assert_allclose(obs[:-3], expected, rtol=1e-6)


def test_env_bad_kwargs_are_user_errors():
    with pytest.raises(UserError, match="glimpses"):
        gym.make("rl_lab/Glimpse-v0", glimpses=0)
    with pytest.raises(UserError, match="actions"):
        gym.make("rl_lab/Glimpse-v0", actions="both")
    with pytest.raises(UserError, match="dataset"):
        gym.make("rl_lab/Glimpse-v0", dataset="nope")

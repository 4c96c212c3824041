"""What a new user meets first: a thread count that stays fast on a busy machine, a run that talks when its output
is not a terminal, and replay memory sized for the run rather than for the paper."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import gymnasium as gym
import torch
import yaml
from conftest import CARTPOLE_CONFIG, TINY, run_rl_lab

from rl_lab.agents.dqn import DQN, DQNConfig
from rl_lab.config import EncoderConfig
from rl_lab.device import busy_cores, choose_threads, free_cores
from rl_lab.loader import load_config, uses_small_network


def test_auto_threads_give_small_networks_one_and_large_ones_the_free_cores():
    assert choose_threads(3, small_model=True)[0] == 3  # the user's choice wins
    assert choose_threads(0, small_model=True)[0] == 1
    assert 1 <= choose_threads(0, small_model=False)[0] <= len(os.sched_getaffinity(0))
    assert uses_small_network(load_config(CARTPOLE_CONFIG))
    assert uses_small_network(load_config(CARTPOLE_CONFIG.parent / "cartpole_novel_lstm_a2c.yaml"))
    assert not uses_small_network(load_config(CARTPOLE_CONFIG.parent / "pong_a2c.yaml"))
    assert not uses_small_network(load_config(CARTPOLE_CONFIG.parent / "mnist_cnn.yaml"))


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def test_free_cores_sees_a_load_that_started_a_moment_ago():
    """Busy cores are measured now, not read from the lagging 1-minute load average: one spinning process per core,
    started a second ago, leaves one free core (the minimum) at once."""
    cores = len(os.sched_getaffinity(0))
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,)) for _ in range(cores)]
    for p in spinners:
        p.start()
    try:
        time.sleep(1.0)
        assert busy_cores() > cores - 0.5
        assert free_cores() == 1
    finally:
        stop.set()
        for p in spinners:
            p.join()


def test_a_run_records_its_thread_count_says_where_it_is_and_prints_progress_without_a_terminal(tmp_path):
    tiny = [a for a in TINY if not a.startswith(("torch_threads", "logger.progress"))]
    run_dir = tmp_path / "run"
    result = run_rl_lab("train", CARTPOLE_CONFIG, *tiny, "logger.print_every=0", f"run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert f"run dir {run_dir}" in first and "torch threads 1 (auto)" in first
    progress = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(progress) == 6  # one per log line (logger.log_every=500 over 3,000 steps)
    assert progress[-1].startswith("step 3,000/3,000 (100%)") and "sps " in progress[-1] and "ret " in progress[-1]
    assert "eval " in progress[1]  # evaluated at 1,000
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["torch_threads"] == 1


def test_replay_holds_no_more_than_the_run_can_store():
    env = gym.make("CartPole-v1")
    cfg = DQNConfig(encoder=EncoderConfig("mlp", {"hidden_sizes": [8]}), buffer_size=1_000_000)
    agent = DQN(cfg, env.observation_space, env.action_space, torch.device("cpu"), total_steps=3_000)
    assert agent.make_replay(num_envs=1, frame_padding=None).capacity == 3_000

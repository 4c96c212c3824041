"""Tabular Q-learning: the update rule, convergence to the value-iteration Q*, and the lab's run machinery
(determinism, checkpoint resume, eval, user errors) through the same off-policy loop as DQN."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import REPO

from rl_lab.agents.tabular_q import TabularQ, TabularQConfig
from rl_lab.cli import main
from rl_lab.envs.gridworld import MAPS
from rl_lab.replay.uniform import ReplayBuffer

CONFIG = str(REPO / "configs" / "gridworld_q.yaml")
QUIET = ["device=cpu", "logger.wandb.mode=disabled", "logger.progress=false"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """In-process runs set torch's thread count from the config; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_update_bootstraps_in_order_and_never_after_termination():
    agent = TabularQ(
        TabularQConfig(lr=0.5, gamma=0.9), gym.spaces.Discrete(3), gym.spaces.Discrete(2), torch.device("cpu"), 100
    )
    agent.q[2] = [1.0, 3.0]
    buffer = ReplayBuffer(8, (), np.int64)
    step = [np.array([x]) for x in (1, 1, 5.0, 2, False, False)]  # an old transition: must not be learned again
    buffer.add(*step)
    for s, a, r, s_next, terminated, truncated in [
        (0, 1, -1.0, 2, False, True),  # truncated: bootstraps, -1 + 0.9 * 3 = 1.7
        (1, 0, -1.0, 2, True, False),  # terminated: no bootstrap, -1
        (0, 0, 0.0, 0, False, False),  # uses the Q(0, .) just updated: 0.9 * 0.85
    ]:
        buffer.add(*(np.array([x]) for x in (s, a, r, s_next, terminated, truncated)))
    metrics = agent.train(buffer, step=4, steps_taken=3, rng=np.random.default_rng(0))
    np.testing.assert_allclose(agent.q[:2], [[0.5 * 0.765, 0.85], [-0.5, 0.0]])
    np.testing.assert_allclose(agent.q_net(torch.tensor([0, 1])).numpy(), agent.q[:2])  # the module sees updates
    assert metrics["loss"] == pytest.approx(np.mean(np.square([1.7, -1.0, 0.765])))


def test_greedy_and_epsilon_greedy_actions():
    agent = TabularQ(TabularQConfig(), gym.spaces.Discrete(2), gym.spaces.Discrete(3), torch.device("cpu"), 1000)
    agent.q[:] = [[0, 5, 1], [9, 0, 0]]
    np.testing.assert_array_equal(agent.greedy(np.array([0, 1, 0])), [1, 0, 1])
    rng = np.random.default_rng(0)
    late = np.concatenate([agent.act(np.zeros(100, dtype=np.int64), 1000, rng) for _ in range(20)])
    assert 0.85 < (late == 1).mean() < 0.97  # epsilon 0.1 at the end: 1 - 0.1 * 2/3 greedy on average


@pytest.mark.learning
def test_converges_to_q_star_on_a_deterministic_maze(tmp_path, capsys):
    """With step size 1 on a deterministic MDP each update is exact, so Q reaches Q* once every pair is tried."""
    maze = tmp_path / "maze.txt"
    maze.write_text("\n".join(row.replace("S", ".") for row in MAPS["maze"]))  # start anywhere: visit every cell
    run = tmp_path / "run"
    args = [f"env.kwargs.map={maze}", "agent.gamma=0.9", "agent.lr=1.0", "train.total_steps=20000", f"run.dir={run}"]
    assert main(["train", CONFIG, *args, *QUIET]) == 0
    assert main(["solve", str(run)]) == 0
    solution = json.loads((run / "plots" / "solution.json").read_text())
    assert solution["gamma"] == 0.9 and len(solution["reachable_nonterminal"]) == 30
    assert solution["q_error_max"] < 1e-9, solution["q_error_max"]
    assert solution["greedy_optimal_fraction"] == 1.0
    assert (run / "plots" / "solve.png").is_file() and "max |Q - Q*|" in capsys.readouterr().out


@pytest.mark.learning
def test_shipped_config_converges_on_the_lecture_map(tmp_path):
    run = tmp_path / "run"
    assert main(["train", CONFIG, f"run.dir={run}", *QUIET]) == 0
    assert main(["solve", str(run)]) == 0
    solution = json.loads((run / "plots" / "solution.json").read_text())
    assert solution["gamma"] == 1.0 and solution["q_error_max"] < 1e-6, solution["q_error_max"]
    assert json.loads((run / "summary.json").read_text())["final_eval"]["return_mean"] > -2.5  # optimal: about -2


def test_same_seed_same_run_and_resume_from_a_checkpoint_ends_identically(tmp_path, capsys):
    short = ["train.total_steps=2000", "run.checkpoint_every=1000", "eval.every=1000", "logger.log_every=250"]
    for name in ("a", "b"):
        assert main(["train", CONFIG, *short, *QUIET, "agent.lr_end=0.1", f"run.dir={tmp_path / name}"]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    # rewind a copy to its step-1000 checkpoint, as if killed there, and resume it
    rewound = tmp_path / "rewound"
    shutil.copytree(a, rewound)
    (rewound / "summary.json").unlink()
    shutil.rmtree(rewound / "checkpoints" / "step_0000002000")
    (rewound / "checkpoints" / "latest").write_text("step_0000001000\n")
    assert main(["train", "--resume", str(rewound)]) == 0
    assert (rewound / "metrics.jsonl").read_text() == (a / "metrics.jsonl").read_text()
    final = "checkpoints/step_0000002000/model.safetensors"
    assert (rewound / final).read_bytes() == (a / final).read_bytes()
    capsys.readouterr()
    assert main(["eval", str(a), "--episodes", "5"]) == 0
    assert "return mean" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "words"),
    [("env.kwargs.obs=onehot", ["discrete observation", "env.kwargs.obs=index"]), ("agent.lr=0", ["agent.lr=0"])],
)
def test_user_errors_leave_nothing_behind(tmp_path, capsys, override, words):
    assert main(["train", CONFIG, override, f"run.dir={tmp_path / 'run'}", *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "run").exists()

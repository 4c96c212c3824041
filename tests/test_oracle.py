"""The exact oracle for the deep agents: on a Grid World, value iteration gives Q*, so a correct DQN (loss, TD
target, no bootstrap after termination, bootstrap after truncation) must learn Q-values that match it, which no
return threshold can check; REINFORCE and actor-critic must learn an optimal policy. `rl-lab solve RUN_DIR`
compares with the same gamma and env as the run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO
from test_tabular_q import QUIET

from rl_lab.cli import main

DQN_CONFIG = str(REPO / "configs" / "gridworld_dqn.yaml")
QUICK = [*QUIET, "eval.every=0", "eval.episodes=5", "run.checkpoint_every=0"]


@pytest.fixture(scope="module", autouse=True)
def _keep_torch_threads():
    """In-process runs set torch's thread count from the config (1); give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dqn_solutions(tmp_path_factory) -> dict[str, dict]:
    """A DQN run on the 4x4 map (one-hot observations) and one stopped before its first update, each solved."""
    root = tmp_path_factory.mktemp("oracle")
    runs = {"trained": 3000, "untrained": 200}
    for name, steps in runs.items():
        assert main(["train", DQN_CONFIG, f"train.total_steps={steps}", *QUICK, f"run.dir={root / name}"]) == 0
        assert main(["solve", str(root / name)]) == 0
    return {name: json.loads((root / name / "plots" / "solution.json").read_text()) for name in runs}


@pytest.mark.learning
def test_dqn_learns_q_star(dqn_solutions):
    solution = dqn_solutions["trained"]
    assert solution["gamma"] == 1.0 and len(solution["reachable_nonterminal"]) == 14
    assert solution["q_error_max"] < 0.05, solution["q_error_max"]
    assert solution["greedy_optimal_fraction"] == 1.0


@pytest.mark.learning
def test_the_oracle_tells_an_untrained_network_apart(dqn_solutions):
    assert dqn_solutions["untrained"]["q_error_max"] > 1.0


@pytest.mark.learning
@pytest.mark.parametrize("agent", ["reinforce", "a2c"])
def test_policy_gradient_agents_learn_an_optimal_policy(agent, tmp_path):
    run = tmp_path / agent
    config = str(REPO / "configs" / f"gridworld_{agent}.yaml")
    assert main(["train", config, *QUICK, f"run.dir={run}"]) == 0
    assert main(["solve", str(run)]) == 0
    solution = json.loads((run / "plots" / "solution.json").read_text())
    assert solution["greedy_optimal_fraction"] == 1.0
    assert solution["greedy_value_gap_max"] < 1e-9  # its greedy policy's exact value is V* from every state

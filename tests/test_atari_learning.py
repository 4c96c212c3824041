"""Learning test for the pixel pipeline: the CNN DQN learns MinAtar Breakout from 10x10 planes on a CPU."""

import json

import pytest
from conftest import REPO, run_rl_lab

RANDOM_POLICY = 0.4  # mean return of uniformly random play (200 episodes, MinAtar Breakout)


@pytest.mark.learning
def test_cnn_dqn_learns_minatar_breakout(tmp_path):
    run_dir = tmp_path / "run"
    result = run_rl_lab(
        "train",
        REPO / "configs" / "minatar_breakout_dqn.yaml",
        "device=cpu",
        "eval.every=0",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
        f"run.dir={run_dir}",
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    final = json.loads((run_dir / "summary.json").read_text())["final_eval"]
    assert final["episodes"] == 20
    assert final["return_mean"] >= 5 * RANDOM_POLICY, final  # seed 0 reaches 3.4: the agent tracks the ball

"""Learning tests: the shipped default config solves CartPole-v1 from fixed seeds (greedy 20-episode mean >= 475)."""

import json
import subprocess
import sys

import pytest
import yaml

SOLVED = 475.0


@pytest.mark.learning
@pytest.mark.parametrize("seed", [0, 1])
def test_default_dqn_config_solves_cartpole(tmp_path, seed):
    run_dir = tmp_path / f"s{seed}"
    cmd = [
        sys.executable,
        "-m",
        "rl_lab.cli",
        "train",
        "configs/cartpole_dqn.yaml",
        f"seed={seed}",
        f"run.dir={run_dir}",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert summary["env_steps"] == config["train"]["total_steps"]
    assert summary["final_eval"]["episodes"] == 20
    assert summary["final_eval"]["return_mean"] >= SOLVED, summary["final_eval"]

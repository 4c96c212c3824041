"""The `rl-lab` command as users run it: config errors (exit 2, one line, nothing written), `rl-lab config`,
the run directory a training run leaves, and `rl-lab eval`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from conftest import CARTPOLE_CONFIG, run_many, run_rl_lab, tree_bytes, user_error_line

from rl_lab.agents.dqn import DQNConfig
from rl_lab.config import Config, to_yaml
from rl_lab.loader import load_config

CFG = str(CARTPOLE_CONFIG)

# (id, rl-lab arguments, substrings the one error line must contain). "{cfg}" is the shipped CartPole config,
# "{d}" the case's own directory (holding the broken YAML files below). Every `train` case also gets
# run.dir={d}/run, and that directory must not exist afterwards.
ERROR_CASES = [
    ("unknown_top_level_key", ["train", "{cfg}", "sed=3"], ["{cfg}", "sed", "unknown key", "did you mean seed?"]),
    (
        "unknown_nested_key",
        ["train", "{cfg}", "agent.optim.lrr=0.1"],
        ["{cfg}", "agent.optim.lrr", "did you mean agent.optim.lr?"],
    ),
    ("moved_optimiser_key", ["train", "{cfg}", "agent.lr=0.1"], ["{cfg}", "agent.lr", "it is now agent.optim.lr"]),
    (
        "unknown_deeply_nested_key",
        ["train", "{cfg}", "logger.wandb.mdoe=offline"],
        ["{cfg}", "logger.wandb.mdoe", "did you mean logger.wandb.mode?"],
    ),
    (
        "unknown_key_in_yaml_file",
        ["train", "{d}/typo.yaml"],
        ["{d}/typo.yaml", "agent.gama", "did you mean agent.gamma?"],
    ),
    ("wrong_type_float", ["train", "{cfg}", "agent.optim.lr=abc"], ["{cfg}", "agent.optim.lr='abc'", "expected float"]),
    ("wrong_type_int", ["train", "{cfg}", "agent.batch_size=1.5"], ["{cfg}", "agent.batch_size=1.5", "expected int"]),
    ("wrong_type_bool", ["train", "{cfg}", "agent.double_dqn=maybe"], ["agent.double_dqn='maybe'", "expected bool"]),
    ("wrong_type_in_yaml_file", ["train", "{d}/wrongtype.yaml"], ["{d}/wrongtype.yaml", "seed='three'", "int"]),
    ("negative_lr", ["train", "{cfg}", "agent.optim.lr=-0.001"], ["{cfg}", "agent.optim.lr=-0.001", "must be > 0"]),
    ("gamma_above_one", ["train", "{cfg}", "agent.gamma=1.5"], ["{cfg}", "agent.gamma=1.5", "[0, 1]"]),
    (
        "buffer_smaller_than_batch",
        ["train", "{cfg}", "agent.buffer_size=32", "agent.batch_size=64"],
        ["{cfg}", "agent.buffer_size=32", "batch_size (64)"],
    ),
    ("invalid_choice", ["train", "{cfg}", "agent.loss=l1"], ["agent.loss='l1'", "huber", "mse"]),
    (
        "unknown_env_id",
        ["train", "{cfg}", "env.id=CartPol-v1"],
        ["{cfg}", "'CartPol-v1'", "did you mean", "CartPole-v1"],
    ),
    ("unknown_encoder", ["train", "{cfg}", "agent.encoder.name=mpl"], ["{cfg}", "agent.encoder.name='mpl'", "mlp"]),
    ("unknown_agent", ["train", "{cfg}", "agent.name=dqm"], ["{cfg}", "agent.name='dqm'", "dqn"]),
    # only found when the network is built: still before the run directory exists
    ("bad_encoder_kwarg", ["train", "{cfg}", "agent.encoder.kwargs.hidden_sizes=abc"], ["hidden_sizes", "'abc'"]),
    (
        "override_without_equals",
        ["train", "{cfg}", "agent.optim.lr"],
        ["{cfg}", "'agent.optim.lr'", "dotted.key=value"],
    ),
    ("override_into_a_value", ["train", "{cfg}", "seed.value=1"], ["{cfg}", "'seed'", "not a section"]),
    ("missing_config_file", ["train", "{d}/nope.yaml"], ["{d}/nope.yaml", "not found"]),
    ("invalid_yaml", ["train", "{d}/bad.yaml"], ["{d}/bad.yaml", "not valid YAML", "line 3"]),
    (
        "config_command_bad_override",
        ["config", "{cfg}", "agent.optim.lrr=1"],
        ["{cfg}", "did you mean agent.optim.lr?"],
    ),
    ("eval_missing_run_dir", ["eval", "{d}/missing"], ["{d}/missing", "does not exist"]),
    ("eval_zero_episodes", ["eval", "{d}", "--episodes", "0"], ["--episodes 0", ">= 1"]),
    ("resume_not_a_run_dir", ["train", "--resume", "{d}"], ["{d}", "not a run directory"]),
    ("train_without_config", ["train"], ["config file or --resume"]),
    ("unknown_option", ["eval", "{d}", "--bogus"], ["--bogus", "(see rl-lab --help)"]),
    ("unknown_command", ["trian"], ["invalid choice", "'trian'", "(see rl-lab --help)"]),
]

BROKEN_FILES = {
    "typo.yaml": "agent:\n  name: dqn\n  gama: 0.9\n",
    "wrongtype.yaml": "seed: three\nagent:\n  name: dqn\n",
    "bad.yaml": "seed: 0\nagent: {name: dqn,\n  lr: [0.1, }\n",
}


@pytest.fixture(scope="module")
def error_results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path, list[str]]]:
    """Run every error case (a few at a time, they are independent) and keep result, case dir and needles."""
    root = tmp_path_factory.mktemp("cli_errors")
    commands, cases = [], {}
    for case_id, args, needles in ERROR_CASES:
        d = root / case_id
        d.mkdir()
        for name, text in BROKEN_FILES.items():
            (d / name).write_text(text)
        args = [a.format(cfg=CFG, d=d) for a in args]
        if args[:1] == ["train"] and "--resume" not in args and len(args) > 1:
            args += ["logger.wandb.mode=disabled", f"run.dir={d / 'run'}"]
        commands.append(args)
        cases[case_id] = (d, [n.format(cfg=CFG, d=d) for n in needles])
    results = run_many(commands, cwd=root)
    return {case_id: (result, *cases[case_id]) for case_id, result in zip(cases, results, strict=True)}


@pytest.mark.parametrize("case_id", [case[0] for case in ERROR_CASES])
def test_user_error_is_one_line_exit_2_and_writes_nothing(error_results, case_id):
    result, case_dir, needles = error_results[case_id]
    line = user_error_line(result)
    for needle in needles:
        assert needle in line, f"{needle!r} missing from: {line}"
    assert not (case_dir / "run").exists(), "a failed command created its run directory"
    assert sorted(p.name for p in case_dir.iterdir()) == sorted(BROKEN_FILES), "a failed command wrote files"


def test_existing_non_empty_run_dir_is_refused_and_left_alone(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    (run_dir / "checkpoints" / "latest").write_text("step_0000000001\n")
    before = tree_bytes(run_dir)
    result = run_rl_lab("train", CFG, "logger.wandb.mode=disabled", f"run.dir={run_dir}", cwd=tmp_path)
    line = user_error_line(result)
    assert str(run_dir) in line and "--resume" in line
    assert tree_bytes(run_dir) == before


def test_run_dir_that_is_a_file_is_a_user_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a directory\n")
    result = run_rl_lab("train", CFG, "logger.wandb.mode=disabled", f"run.dir={target}", cwd=tmp_path)
    assert str(target) in user_error_line(result)
    assert target.read_text() == "not a directory\n"


# ---------------------------------------------------------------------------------------------- rl-lab config

MINIMAL_YAML = """\
agent:
  name: dqn
  optim: {lr: 1e-3}
  exploration_final: 2e-2
logger:
  wandb:
    mode: disabled
"""

CONFIG_OVERRIDES = ["seed=7", "agent.optim.eps=1e-6", "env.num_envs=2", "agent.encoder.kwargs.hidden_sizes=[16,8]"]


@pytest.fixture(scope="module")
def printed_config(tmp_path_factory) -> tuple[dict, str, Path]:
    d = tmp_path_factory.mktemp("config_cmd")
    (d / "minimal.yaml").write_text(MINIMAL_YAML)
    result = run_rl_lab("config", d / "minimal.yaml", *CONFIG_OVERRIDES, f"run.dir={d / 'run'}", cwd=d)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout), result.stdout, d


def test_config_command_prints_fully_resolved_yaml(printed_config):
    printed, _, d = printed_config
    expected = Config(agent=DQNConfig()).to_dict()  # every default of every section
    expected["agent"].update(exploration_final=0.02)
    expected["agent"]["optim"].update(lr=0.001, eps=1e-6)  # the rest of the optim section keeps DQN's defaults
    expected["agent"]["encoder"]["kwargs"] = {"hidden_sizes": [16, 8]}
    expected["logger"]["wandb"]["mode"] = "disabled"
    expected.update(seed=7)
    expected["env"]["num_envs"] = 2
    expected["run"]["dir"] = str(d / "run")
    assert printed == expected
    assert not (d / "run").exists(), "rl-lab config must not create the run directory"


def test_exponent_without_dot_is_a_float_in_yaml_and_overrides(printed_config):
    printed, _, _ = printed_config
    agent = printed["agent"]
    for value, expected in [
        (agent["optim"]["lr"], 1e-3),
        (agent["exploration_final"], 2e-2),
        (agent["optim"]["eps"], 1e-6),
    ]:
        assert isinstance(value, float) and value == expected  # YAML, YAML, override
    config = load_config(CARTPOLE_CONFIG, ["agent.optim.lr=5e-4", "agent.optim.lr_end=1e-5"])
    assert isinstance(config.agent.optim.lr, float) and config.agent.optim.lr == 5e-4
    assert isinstance(config.agent.optim.lr_end, float) and config.agent.optim.lr_end == 1e-5


def test_printed_config_loads_back_to_itself(printed_config, tmp_path):
    _, text, _ = printed_config
    (tmp_path / "resolved.yaml").write_text(text)
    assert to_yaml(load_config(tmp_path / "resolved.yaml")) == text


# ------------------------------------------------------------------------------------- run directory and eval


def test_run_dir_holds_config_metrics_summary_checkpoints_and_plot(tiny_runs):
    run_dir = tiny_runs["base"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["run"]["dir"] == str(run_dir)
    assert config["train"]["total_steps"] == 3000
    assert config["agent"]["encoder"]["kwargs"]["hidden_sizes"] == [32, 32]
    assert config["agent"]["double_dqn"] is True  # from the YAML file, not a default

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows]
    assert steps[:-1] == list(range(500, 3001, 500)), steps  # logger.log_every=500, then the final row
    assert steps[-1] == 3000
    assert all("eval/return_mean" in row for row in rows if row["step"] in (1000, 2000))
    assert all("train/loss" in row for row in rows)  # learning_starts=500: every row follows an update

    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final_eval"]
    assert final["episodes"] == 3
    assert isinstance(final["return_mean"], float) and final["return_mean"] >= 8  # CartPole episodes last >= 8
    assert isinstance(final["return_std"], float) and final["return_std"] >= 0
    assert final["return_mean"] == rows[-1]["eval/return_mean"]  # the last metrics row is the final evaluation
    assert summary["env_steps"] == 3000
    assert summary["wall_time_s"] > 0
    assert summary["sps"] == pytest.approx(summary["env_steps"] / summary["wall_time_s"])

    checkpoints = run_dir / "checkpoints"
    latest = checkpoints / (checkpoints / "latest").read_text().strip()
    assert latest.name == "step_0000003000"
    assert {p.name for p in latest.iterdir()} == {"model.safetensors", "arrays.safetensors", "state.json"}

    png = run_dir / "plots" / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 300
    assert np.unique(image.reshape(-1, image.shape[2]), axis=0).shape[0] > 10, "the plot is blank"


def _table_value(stdout: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}\s+(\S+)\s*$", stdout, re.MULTILINE)
    assert match, f"no {name!r} row in:\n{stdout}"
    return match.group(1)


def test_eval_prints_a_table_and_reproduces_the_final_evaluation(tiny_runs):
    run_dir = tiny_runs["base"]
    before = tree_bytes(run_dir)
    five, default = run_many([("eval", run_dir, "--episodes", "5"), ("eval", run_dir)], cwd=run_dir.parent)
    assert five.returncode == 0, five.stderr
    assert _table_value(five.stdout, "episodes") == "5"
    assert "step 3000" in five.stdout
    assert default.returncode == 0, default.stderr
    # the config's eval.episodes=3, the same evaluation seed and the final weights: the same returns as training
    final = json.loads((run_dir / "summary.json").read_text())["final_eval"]
    assert _table_value(default.stdout, "episodes") == "3"
    assert _table_value(default.stdout, "return mean") == f"{final['return_mean']:.2f}"
    assert _table_value(default.stdout, "return std") == f"{final['return_std']:.2f}"
    assert tree_bytes(run_dir) == before, "rl-lab eval must not modify the run"

"""The Python API as a user calls it: rl_lab.train / load / evaluate / resume, the same runs, validation and errors
as the command line, quietly, leaving the process's threads and RNG states alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import CARTPOLE_CONFIG, REPO, TINY, run_rl_lab, user_error_line

import rl_lab
from rl_lab import errors

# conftest's TINY command-line overrides as a dict of dotted keys with Python values
TINY_DICT = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in TINY)}


@pytest.fixture(scope="module")
def api_run(tmp_path_factory) -> rl_lab.TrainedRun:
    """The README's example, with the tiny settings: a path, a dict of overrides, a run directory."""
    root = tmp_path_factory.mktemp("api")
    return rl_lab.train(CARTPOLE_CONFIG, overrides={**TINY_DICT, "agent.optim.lr": 1e-3, "seed": 3}, run_dir=root / "r")


def test_train_returns_the_finished_run_with_its_settings(api_run):
    assert api_run.summary == json.loads((api_run.dir / "summary.json").read_text())
    assert api_run.summary["env_steps"] == 3000
    config = api_run.config
    assert (config["seed"], config["agent"]["optim"]["lr"]) == (3, 1e-3)
    assert config["agent"]["optim"]["grad_clip"] == 10.0  # the agent's own optimiser defaults stay
    assert api_run.metrics[-1]["step"] == 3000
    assert (api_run.dir / "plots" / "learning_curve.png").is_file()
    assert "Final evaluation" in api_run.report


def test_train_prints_nothing_and_leaves_threads_and_rng_alone(tmp_path, capfd):
    torch.set_num_threads(2)
    torch.manual_seed(123)
    np.random.seed(123)
    expected = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    rl_lab.train(CARTPOLE_CONFIG, [*TINY, "train.total_steps=600", "eval.every=0"], run_dir=tmp_path / "r")
    assert torch.get_num_threads() == 2  # the config's torch_threads=1 held only while training
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert capfd.readouterr() == ("", "")


def test_a_dict_config_trains_the_same_run_as_its_yaml_file(api_run, tmp_path):
    data = yaml.safe_load(CARTPOLE_CONFIG.read_text())
    run = rl_lab.train(data, {**TINY_DICT, "agent.optim.lr": 1e-3, "seed": 3, "run.dir": str(tmp_path / "d")})
    assert (run.dir / "metrics.jsonl").read_bytes() == (api_run.dir / "metrics.jsonl").read_bytes()


def test_load_and_act_greedy_and_sampled(api_run):
    agent = rl_lab.load(api_run.dir, seed=0)
    assert isinstance(agent, rl_lab.Agent) and agent.env_id == "CartPole-v1" and agent.step == 3000
    env = agent.make_env()
    obs, _ = env.reset(seed=0)
    one = agent.act(obs)
    assert np.ndim(one) == 0 and agent.action_space.contains(int(one))
    batch = np.stack([obs + i * 0.01 for i in range(8)])
    greedy = agent.act(batch)
    assert greedy.shape == (8,) and greedy[0] == one
    assert np.array_equal(agent.act(batch.tolist()), greedy)  # lists of float64 are taken too
    assert np.array_equal(agent.act(batch), greedy)  # greedy is deterministic
    # sampled for DQN: epsilon-greedy with the exploration rate the run ended with
    epsilon = agent._agent.epsilon(agent.step)
    sampled = agent.act(np.repeat(obs[None], 4000, axis=0), deterministic=False)
    assert abs(np.mean(sampled != one) - epsilon / 2) < 0.02  # a random action differs half the time (2 actions)
    with pytest.raises(rl_lab.UserError, match=r"observations of shape \(8, 3\) do not fit CartPole-v1's \(4,\)"):
        agent.act(batch[:, :3])


def test_evaluate_an_agent_or_a_run_dir_as_rl_lab_eval_does(api_run, tmp_path):
    agent = rl_lab.load(api_run.dir)
    by_agent = rl_lab.evaluate(agent, episodes=4)
    by_dir = rl_lab.evaluate(api_run.dir, episodes=4)
    assert by_agent == by_dir
    assert by_agent["episodes"] == len(by_agent["returns"]) == 4
    cli = run_rl_lab("eval", api_run.dir, "--episodes", "4", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert f"{by_agent['return_mean']:.2f}" in cli.stdout
    assert rl_lab.evaluate(agent, episodes=4, seed=99) != by_agent  # other episodes
    with pytest.raises(rl_lab.UserError, match="episodes=0: must be an integer >= 1"):
        rl_lab.evaluate(agent, episodes=0)


def test_sampled_actions_of_a_policy_gradient_agent(tmp_path):
    run = rl_lab.train(
        REPO / "configs" / "cartpole_a2c.yaml",
        {"device": "cpu", "torch_threads": 1, "train.total_steps": 256, "eval.episodes": 2, "eval.every": 0,
         "logger.wandb.mode": "disabled"},
        run_dir=tmp_path / "a2c",
    )  # fmt: skip
    agent = run.load()
    obs = np.zeros((500, 4), dtype=np.float32)
    greedy, sampled = agent.act(obs), agent.act(obs, deterministic=False)
    assert len(set(greedy.tolist())) == 1  # the mode: one action for one observation
    assert set(sampled.tolist()) == {0, 1}  # a near-uniform young policy samples both


def test_a_supervised_run_loads_as_a_model_and_evaluates_on_its_held_out_splits(tmp_path):
    overrides = [
        *("device=cpu", "torch_threads=1", "logger.wandb.mode=disabled", "data.name=digits", "task.ema_decay=null"),
        *("train.batch_size=16", "train.epochs=1", "task.encoder={name: mlp, kwargs: {hidden_sizes: [16]}}"),
        "task.augment={}",
    ]
    run = rl_lab.train(REPO / "configs" / "mnist_cnn.yaml", overrides, run_dir=tmp_path / "digits")
    model = rl_lab.load(run.dir)
    assert isinstance(model, rl_lab.Model) and not model.module.training
    logits = model(torch.zeros(5, 1, 8, 8))
    assert logits.shape == (5, 10)
    scores = rl_lab.evaluate(run.dir)
    assert scores["test"]["acc"] == pytest.approx(run.summary["test_acc"])


def test_resume_continues_an_interrupted_run_to_the_same_metrics(api_run, tmp_path):
    from test_actor_critic import killed_after_first_checkpoint

    cut = tmp_path / "cut"
    killed_after_first_checkpoint(api_run.dir, cut)
    resumed = rl_lab.resume(cut)
    assert (cut / "metrics.jsonl").read_bytes() == (api_run.dir / "metrics.jsonl").read_bytes()
    assert resumed.summary["final_eval"] == api_run.summary["final_eval"]


def test_resume_with_total_steps_trains_a_finished_run_on(api_run, tmp_path):
    longer = tmp_path / "longer"
    shutil.copytree(api_run.dir, longer)
    with pytest.raises(rl_lab.UserError, match="already finished"):
        rl_lab.resume(longer)
    resumed = rl_lab.resume(longer, total_steps=3500)
    assert resumed.summary["env_steps"] == 3500 and resumed.metrics[-1]["step"] == 3500
    assert resumed.config["train"]["total_steps"] == 3500


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        (CARTPOLE_CONFIG, {"agent.lr": 1e-3}),  # moved key
        (CARTPOLE_CONFIG, ["agent.gamma=2"]),  # invalid value
        (CARTPOLE_CONFIG, {"env.id": "CartPole-v9"}),  # unknown env id
        (REPO / "configs" / "missing.yaml", None),
    ],
    ids=["moved-key", "bad-value", "env-id", "missing-file"],
)
def test_user_errors_are_the_command_lines(tmp_path, config, overrides):
    """The same UserError message the CLI prints after `rl-lab: error: `, and nothing written."""
    with pytest.raises(rl_lab.UserError) as caught:
        rl_lab.train(config, overrides, run_dir=tmp_path / "r")
    args = overrides.items() if isinstance(overrides, dict) else overrides or []
    cli = run_rl_lab("train", config, *(a if isinstance(a, str) else f"{a[0]}={a[1]}" for a in args), cwd=tmp_path)
    assert user_error_line(cli) == f"rl-lab: error: {caught.value}"
    assert list(tmp_path.iterdir()) == []


def test_other_mistakes_are_user_errors(api_run, tmp_path):
    with pytest.raises(rl_lab.UserError, match="config must be a YAML file's path or a dict, not int"):
        rl_lab.train(3)
    with pytest.raises(rl_lab.UserError, match="overrides must be a dict or a list"):
        rl_lab.train(CARTPOLE_CONFIG, "seed=3")
    with pytest.raises(rl_lab.UserError, match="does not exist"):
        rl_lab.load(tmp_path / "nothing")
    with pytest.raises(rl_lab.UserError, match="not a run directory"):
        rl_lab.evaluate(tmp_path)
    assert rl_lab.UserError is errors.UserError


def test_import_rl_lab_is_cheap_and_lists_the_api():
    code = "import sys, rl_lab; print(sorted(m for m in ('torch', 'numpy', 'wandb', 'gymnasium') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr
    assert {"train", "load", "evaluate", "resume", "UserError", "__version__"} <= set(dir(rl_lab))
    assert rl_lab.__version__ == __import__("importlib.metadata").metadata.version("rl-lab")
    with pytest.raises(AttributeError):
        rl_lab.nothing  # noqa: B018

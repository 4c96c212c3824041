"""Random search: sampling, sweep files, the local `rl-lab search`, and the argument forms a W&B agent passes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CARTPOLE_CONFIG, REPO, TINY
from test_vision_backbone import one_thread  # noqa: F401 - autouse fixture: one torch thread
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from rl_lab.cli import main
from rl_lab.commands.search import as_overrides, load_sweep, metric_value, sample, search
from rl_lab.errors import UserError
from rl_lab.loader import load_config

SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
# TINY, shorter still: a trial is about 2 s of CPU
QUICK = [*TINY, "train.total_steps=600", "agent.learning_starts=200", "eval.episodes=2", "eval.every=0"]
QUICK += ["run.checkpoint_every=0"]


def _sweep_file(tmp_path: Path, params: dict, **changes) -> Path:
    sweep = {
        "method": "random",
        "metric": {"name": "final_eval.return_mean", "goal": "maximize"},
        "parameters": params,
        "command": ["rl-lab", "train", str(CARTPOLE_CONFIG), "${args_no_hyphens}"],
        **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_log_uniform_puts_equal_mass_in_each_decade() -> None:
    rng = np.random.default_rng(0)
    spec = {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}}
    draws = np.array([sample(spec, rng)["lr"] for _ in range(3000)])
    assert draws.min() >= 1e-4 and draws.max() <= 1e-1
    decades = np.histogram(np.log10(draws), bins=[-4, -3, -2, -1])[0] / len(draws)
    np.testing.assert_allclose(decades, 1 / 3, atol=0.04)  # uniform sampling would put 90% in the top decade


def test_other_distributions_and_determinism() -> None:
    spec = {
        "u": {"distribution": "uniform", "min": 2.0, "max": 4.0},
        "i": {"distribution": "int_uniform", "min": 1, "max": 3},
        "c": {"values": ["adam", "sgd"]},
        "k": {"value": [64, 64]},
    }
    draws = [sample(spec, np.random.default_rng(0)) for _ in range(2)]
    assert draws[0] == draws[1]  # same seed, same trials
    rng = np.random.default_rng(1)
    many = [sample(spec, rng) for _ in range(600)]
    assert min(d["u"] for d in many) >= 2.0 and max(d["u"] for d in many) <= 4.0
    assert np.mean([d["u"] for d in many]) == pytest.approx(3.0, abs=0.1)
    assert {d["i"] for d in many} == {1, 2, 3} and all(isinstance(d["i"], int) for d in many)  # both ends included
    assert {d["c"] for d in many} == {"adam", "sgd"} and all(d["k"] == [64, 64] for d in many)


def test_overrides_round_trip_through_yaml() -> None:
    values = {"a.lr": 1.2345678e-5, "a.sizes": [32, 32], "a.flag": False, "a.name": "adamw", "a.n": 7}
    parsed = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in as_overrides(values))}
    assert parsed == values


def test_metric_value_reads_flat_and_nested_keys() -> None:
    summary = {"final_eval": {"return_mean": 42.0}, "best_val_acc": 0.9, "a.b": 1}
    assert metric_value(summary, "final_eval.return_mean") == 42.0
    assert metric_value(summary, "best_val_acc") == 0.9 and metric_value(summary, "a.b") == 1
    with pytest.raises(KeyError):
        metric_value(summary, "final_eval.return_max")


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_file_samples_valid_configs(path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # W&B agents run the command from the repository root
    sweep = load_sweep(path)
    assert "${args_no_hyphens}" in yaml.safe_load(path.read_text())["command"]
    assert any(s.get("distribution") == "log_uniform_values" for s in sweep.parameters.values())
    rng = np.random.default_rng(0)
    for _ in range(5):
        values = sample(sweep.parameters, rng)
        config = load_config(sweep.config, [*sweep.fixed, *as_overrides(values)]).to_dict()
        for key, value in values.items():
            assert metric_value(config, key) == value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "grid"}, "method must be random"),
        ({"metric": {"name": "x"}}, "metric must be"),
        ({"parameters": {"agent.optim.lr": {"distribution": "log_uniform", "min": -9, "max": -2}}}, "not a supported"),
        ({"parameters": {"agent.optim.lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}}, "min > 0"),
        ({"parameters": {"agent.optim.lr": {"values": []}}}, "not a supported"),
        ({"parameters": {"agent.optim.lrr": {"value": 1e-3}}}, "agent.optim.lrr"),  # not a config key
        ({"parameters": {"agent.gamma": {"value": 2.0}}}, "gamma"),  # not a valid value
        ({"command": ["rl-lab", "train", str(CARTPOLE_CONFIG)]}, "command must be"),
        ({"early_terminate": {"type": "hyperband"}}, "unknown key"),
        ({"parameters": {"eval.episodes": {"value": 5}}}, "both an override and a parameter"),
    ],
)
def test_bad_sweeps_are_user_errors_before_anything_is_written(tmp_path, change, message) -> None:
    path = _sweep_file(tmp_path, {"agent.optim.lr": {"value": 1e-3}}, **change)
    with pytest.raises(UserError, match=message):
        search(path, 2, tmp_path / "out", overrides=QUICK)
    assert not (tmp_path / "out").exists()


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path, capsys) -> None:
    """A value that passes the config check but not the encoder's own (no such activation) fails that trial only."""
    path = _sweep_file(tmp_path, {"agent.encoder.kwargs.activation": {"values": ["swish"]}})
    rows = search(path, 2, tmp_path / "out", overrides=QUICK)
    assert [r["metric"] for r in rows] == [None, None]
    assert all("activation" in r["error"] for r in rows)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["trial"] for r in saved["trials"]] == [0, 1]
    assert "failed: " in (tmp_path / "out" / "results.md").read_text()


def test_rl_lab_search_runs_trials_and_ranks_them(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(REPO)  # the sweep's command names configs/cartpole_dqn.yaml, as a W&B agent would run it
    out = tmp_path / "search"
    sweep = REPO / "configs" / "sweeps" / "cartpole_dqn.yaml"
    swept = set(load_sweep(sweep).parameters)
    quick = [o for o in QUICK if o.split("=")[0] not in swept]
    # overrides after the options, too
    assert main(["search", str(sweep), "--trials", "2", "--out", str(out), *quick]) == 0
    saved = json.loads((out / "results.json").read_text())
    metrics = [t["metric"] for t in saved["trials"]]
    assert saved["metric"] == "final_eval.return_mean" and metrics == sorted(metrics, reverse=True)
    for trial in saved["trials"]:
        summary = json.loads((Path(trial["run_dir"]) / "summary.json").read_text())
        assert trial["metric"] == summary["final_eval"]["return_mean"]
        config = yaml.safe_load((Path(trial["run_dir"]) / "config.yaml").read_text())
        assert config["agent"]["optim"]["lr"] == trial["params"]["agent.optim.lr"]
        assert config["train"]["total_steps"] == 600  # the command-line overrides reach every trial
    assert saved["trials"][0]["params"] != saved["trials"][1]["params"]
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 4 and "agent.optim.lr" in table[0]
    assert f"results: {out / 'results.md'}" in capsys.readouterr().out


def test_rl_lab_search_bad_input_is_one_line(tmp_path, capsys) -> None:
    path = _sweep_file(tmp_path, {"agent.optim.lr": {"distribution": "uniform", "min": 1, "max": 0}})
    assert main(["search", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("rl-lab: error: ") and "parameters.agent.optim.lr" in err[0]
    assert not (tmp_path / "out").exists()
    assert main(["search", str(path), "--trials", "2", "--bogus"]) == 2  # a stray option is still an error
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def _agent_command(sweep: dict, values: dict, macro: str) -> list[str]:
    """The command `wandb agent` runs for one trial (wandb_agent.Agent._command_run), with wandb's own code."""
    command = [macro if c == "${args_no_hyphens}" else c for c in sweep["command"]]
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    expanded: list[str] = []
    for c in create_sweep_command(command):
        expanded += sweep_vars[c[2:-1]] if c.startswith("${") else [c]
    return expanded


@pytest.mark.parametrize("macro", ["${args_no_hyphens}", "${args}"])  # key=value, and --key=value
def test_rl_lab_train_accepts_what_a_wandb_agent_passes(macro, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    path = REPO / "configs" / "sweeps" / "cartpole_dqn.yaml"
    values = sample(load_sweep(path).parameters, np.random.default_rng(3))
    fixed = dict(o.split("=", 1) for o in QUICK)
    run_dir = tmp_path / "run"
    command = _agent_command(yaml.safe_load(path.read_text()), {**fixed, **values, "run.dir": str(run_dir)}, macro)
    assert command[:3] == ["rl-lab", "train", "configs/cartpole_dqn.yaml"]
    assert any(a.startswith("--agent.optim.lr=" if macro == "${args}" else "agent.optim.lr=") for a in command)
    assert main(command[1:]) == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["agent"]["optim"]["lr"] == values["agent.optim.lr"] and math.isfinite(config["agent"]["optim"]["lr"])
    assert config["agent"]["batch_size"] == values["agent.batch_size"]
    assert (run_dir / "summary.json").is_file()

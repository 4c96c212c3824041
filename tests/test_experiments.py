"""Multi-seed experiments (`rl-lab train CONFIG --seeds ...`): one ordinary run per seed in one directory, a killed
run reported alone and resumed by the same command, finished runs skipped, W&B grouping, threads per trial, and
`rl-lab eval EXPERIMENT`."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import CARTPOLE_CONFIG, TINY, run_rl_lab, start_rl_lab, user_error_line

from rl_lab import device, experiments
from rl_lab.errors import UserError
from rl_lab.loader import load_config


def test_parse_and_format_seeds():
    assert experiments.parse_seeds("0-3") == [0, 1, 2, 3]
    assert experiments.parse_seeds("5,1,3") == [1, 3, 5]
    assert experiments.parse_seeds("0-2,9, 2") == [0, 1, 2, 9]
    assert experiments.format_seeds([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    for bad in ("", "a", "3-1", "-2", "1-", "0-2;5"):
        with pytest.raises(UserError, match="not a list of seeds"):
            experiments.parse_seeds(bad)


def test_the_same_command_finds_the_same_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default directory is runs/<config name>-<digest of the resolved config>
    first, before = experiments.prepare(CARTPOLE_CONFIG, ["train.total_steps=1000"], [0, 1])
    assert first.dir.parent == Path("runs") and first.dir.name.startswith("cartpole_dqn-") and before == []
    assert first.record["wandb_group"] == first.dir.name
    again, before = experiments.prepare(CARTPOLE_CONFIG, ["train.total_steps=1000"], [1, 2])  # one more seed
    assert again.dir == first.dir and before == [0, 1] and again.seeds == [0, 1, 2]
    assert json.loads((first.dir / "experiment.json").read_text())["seeds"] == [0, 1, 2]
    other, _ = experiments.prepare(CARTPOLE_CONFIG, ["train.total_steps=2000"], [0])
    assert other.dir != first.dir  # another config, another experiment


def test_threads_per_trial_share_the_cores(monkeypatch):
    monkeypatch.setattr(device, "free_cores", lambda: 4)
    small = load_config(CARTPOLE_CONFIG)  # an MLP: one thread, whatever the cores
    assert experiments.trial_threads(small, 1) == experiments.trial_threads(small, 4) == 1
    cnn = load_config(CARTPOLE_CONFIG, ["agent.encoder.name=lenet"])
    assert experiments.trial_threads(cnn, 1) == 4 and experiments.trial_threads(cnn, 2) == 2
    assert experiments.trial_threads(cnn, 8) == 1  # never below one
    assert experiments.trial_threads(load_config(CARTPOLE_CONFIG, ["torch_threads=3"]), 2) == 3  # the user's choice


def _wait_for(path: Path, proc, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the experiment ended first:\n{proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_killed_run_fails_alone_and_the_same_command_resumes_it(tmp_path, tiny_runs):
    exp = tmp_path / "exp"
    command = ("train", CARTPOLE_CONFIG, *TINY, f"run.dir={exp}", "--seeds", "0-1", "--parallel", "2")
    proc = start_rl_lab(*command, cwd=tmp_path)
    _wait_for(exp / "seed-0" / "checkpoints" / "latest", proc)
    record = json.loads((exp / "experiment.json").read_text())
    os.kill(record["runs"]["0"]["pid"], signal.SIGKILL)  # the run of seed 0, a subprocess of the experiment
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stdout + stderr
    assert "seed 0: failed (killed by SIGKILL)" in stdout and "seed 1: finished" in stdout  # the other one went on
    assert "1 of 2 runs did not finish (seeds 0" in stderr and f"rl-lab train --resume {exp}" in stderr
    record = json.loads((exp / "experiment.json").read_text())
    assert record["runs"]["0"]["status"] == "failed" and record["runs"]["0"]["error"] == "killed by SIGKILL"
    assert record["runs"]["1"]["status"] == "finished" and record["runs"]["1"]["final"] is not None
    finished_metrics = (exp / "seed-1" / "metrics.jsonl").stat().st_mtime_ns

    again = run_rl_lab(*command, cwd=tmp_path)  # the same command: seed 0 resumed, seed 1 skipped
    assert again.returncode == 0, again.stdout + again.stderr
    assert "seed 1: skipped" in again.stdout and "seed 0: finished" in again.stdout
    log = (exp / "logs" / "seed-0.log").read_text()
    assert [line.split(" (pid")[0].split(" rl-lab ")[1] for line in log.splitlines() if line.startswith("== ")] == [
        f'train {exp}/config.yaml seed=0 run.dir={exp}/seed-0 logger.wandb.tags=["seed-0"] torch_threads=1',
        f"train --resume {exp}/seed-0",
    ]
    assert "resuming" in log and "from step_" in log
    # resumed from its checkpoint to the same result as an uninterrupted run of the same config and seed
    assert (exp / "seed-0" / "metrics.jsonl").read_bytes() == (tiny_runs["base"] / "metrics.jsonl").read_bytes()
    assert (exp / "seed-1" / "metrics.jsonl").stat().st_mtime_ns == finished_metrics
    record = json.loads((exp / "experiment.json").read_text())
    assert [record["runs"][s]["status"] for s in ("0", "1")] == ["finished", "finished"]
    assert record["runs"]["0"]["attempts"] == 2 and record["runs"]["1"]["attempts"] == 1
    assert "| entry | runs | IQM |" in again.stdout and (exp / "results.md").is_file()

    for seed in (0, 1):  # ordinary runs, grouped on W&B by the experiment, tagged by seed, one thread each
        config = yaml.safe_load((exp / f"seed-{seed}" / "config.yaml").read_text())
        assert config["seed"] == seed and config["torch_threads"] == 1
        assert config["logger"]["wandb"]["group"] == "exp" and config["logger"]["wandb"]["tags"] == [f"seed-{seed}"]

    resumed = run_rl_lab("train", "--resume", exp, cwd=tmp_path)  # nothing left to do
    assert resumed.returncode == 0, resumed.stderr
    assert "seeds none unfinished" in resumed.stdout and resumed.stdout.count("skipped") == 2

    evaluated = run_rl_lab("eval", exp, "--episodes", "2", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "seed 0: return" in evaluated.stdout and "seed 1: return" in evaluated.stdout
    assert "| exp | 2 |" in evaluated.stdout

    changed = run_rl_lab(
        "train", CARTPOLE_CONFIG, *TINY, "agent.gamma=0.9", f"run.dir={exp}", "--seeds", "0-1", cwd=tmp_path
    )
    assert "holds an experiment of another config (agent.gamma: 0.9 here, 0.99" in user_error_line(changed)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--seeds", "0-1", "seed=3"), "seed=... and --seeds both given"),
        (("--seeds", "1-0"), "not a list of seeds"),
        (("--parallel", "2"), "add --seeds"),
        (("--seeds", "0-1", "--parallel", "0"), "--parallel 0: must be >= 1"),
        (("--seeds", "0-1", "--address", "127.0.0.1:1"), "use it with --backend ray"),
        (("--seeds", "0-1", "agent.gamma=2"), "agent.gamma"),
    ],
)
def test_experiment_user_errors_write_nothing(tmp_path, args, message):
    result = run_rl_lab("train", CARTPOLE_CONFIG, f"run.dir={tmp_path / 'exp'}", *args, cwd=tmp_path)
    assert message in user_error_line(result)
    assert not (tmp_path / "exp").exists() and not (tmp_path / "runs").exists()


def test_resume_of_a_directory_that_is_not_an_experiment(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "experiment.json").write_text("{}")
    result = run_rl_lab("train", "--resume", tmp_path / "exp", cwd=tmp_path)
    assert "not an rl-lab experiment record" in user_error_line(result)

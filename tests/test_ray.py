"""Trials on Ray (`--backend ray`): a real local Ray cluster (head on 127.0.0.1, 2 CPUs) runs a two-seed experiment,
one trial's worker is killed and the trial resumes from its checkpoint; `rl-lab search` runs its trials there too.
Without the `ray` package, `--backend ray` is a user error naming the extra. The cluster tests skip when ray is not
installed (pip install -e ".[ray]")."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import CARTPOLE_CONFIG, TINY, run_rl_lab, start_rl_lab, user_error_line

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install -e '.[ray]')"
)
# The ray package blocked, as on an install without the extra.
WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from rl_lab.commands import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.parametrize("command", ["train", "search"])
def test_backend_ray_without_ray_names_the_extra(tmp_path, command):
    if command == "train":
        args = ["train", str(CARTPOLE_CONFIG), f"run.dir={tmp_path / 'out'}", "--seeds", "0-1", "--backend", "ray"]
    else:
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(yaml.safe_dump(_sweep()))
        args = ["search", str(sweep), "--trials", "2", "--out", str(tmp_path / "out"), "--backend", "ray"]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_RAY, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    line = user_error_line(result)
    assert "'ray' extra" in line and "pip install -e '.[ray]'" in line
    assert not (tmp_path / "out").exists()


@needs_ray
def test_an_address_where_no_cluster_answers_is_a_user_error(tmp_path):
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    args = ("train", CARTPOLE_CONFIG, f"run.dir={tmp_path / 'out'}", "--seeds", "0-1", "--backend", "ray")
    result = run_rl_lab(*args, "--address", address, cwd=tmp_path)
    assert f"no Ray cluster answers at {address}" in user_error_line(result)
    assert not (tmp_path / "out").exists()


def _sweep() -> dict:
    return {
        "method": "random",
        "metric": {"name": "final_eval.return_mean", "goal": "maximize"},
        "parameters": {"agent.optim.lr": {"values": [1e-3, 3e-3]}},
        "command": ["rl-lab", "train", str(CARTPOLE_CONFIG), "${args_no_hyphens}"],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address():
    """A Ray head on 127.0.0.1 with 2 CPUs, for this module; stopped (with every process it started) at the end."""
    pytest.importorskip("ray")
    # Ray resolves 127.0.0.1 to the machine's outward address unless told it runs on one machine only: keep every
    # connection on the loopback (the CLI's driver inherits these too)
    saved = dict(os.environ)
    os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    ports = [f"--dashboard-agent-listen-port={_free_port()}"]  # not the fixed default: another Ray may hold it
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1"]
    command += [f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"]
    command += [f"--temp-dir={temp}", *ports]
    log = Path(temp) / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, f"ray start failed:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"ray start did not finish:\n{log.read_text()}"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the node's processes on SIGTERM
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(temp, ignore_errors=True)


def _headers(log: Path) -> list[tuple[str, int]]:
    """(command, pid) of each attempt in a trial's log."""
    found = re.findall(r"^== \S+ \S+ rl-lab (.*) \(pid (\d+) on .*\)$", log.read_text(), re.MULTILINE)
    return [(command, int(pid)) for command, pid in found]


@needs_ray
def test_an_experiment_on_ray_resumes_a_trial_whose_worker_was_killed(ray_address, tmp_path, tiny_runs):
    exp = tmp_path / "exp"
    args = ("train", CARTPOLE_CONFIG, *TINY, f"run.dir={exp}", "--seeds", "0-1", "--backend", "ray")
    proc = start_rl_lab(*args, "--address", ray_address, cwd=tmp_path)
    checkpoint, deadline = exp / "seed-0" / "checkpoints" / "latest", time.monotonic() + 240
    while not checkpoint.exists():
        assert proc.poll() is None, f"the experiment ended first:\n{proc.communicate()}"
        assert time.monotonic() < deadline, "seed 0 wrote no checkpoint"
        time.sleep(0.05)
    (_, worker), *_ = _headers(exp / "logs" / "seed-0.log")
    os.kill(worker, signal.SIGKILL)  # the Ray worker process that runs seed 0
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr
    assert "seed 0: submitted (a Ray task of 1 CPU(s) and 0 GPU(s)" in stdout
    (first, _), (second, again) = _headers(exp / "logs" / "seed-0.log")  # Ray started the task again ...
    assert first.startswith(f"train {exp}/config.yaml seed=0") and second == f"train --resume {exp}/seed-0"
    assert again != worker and "from step_" in (exp / "logs" / "seed-0.log").read_text()  # ... from its checkpoint
    assert (exp / "seed-0" / "metrics.jsonl").read_bytes() == (tiny_runs["base"] / "metrics.jsonl").read_bytes()
    assert len(_headers(exp / "logs" / "seed-1.log")) == 1
    record = json.loads((exp / "experiment.json").read_text())
    assert [record["runs"][s]["status"] for s in ("0", "1")] == ["finished", "finished"]


@needs_ray
def test_search_runs_its_trials_on_ray(ray_address, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(_sweep()))
    quick = [*TINY, "train.total_steps=600", "agent.learning_starts=200", "eval.episodes=2", "eval.every=0"]
    out = tmp_path / "search"
    result = run_rl_lab("search", sweep, "--trials", "2", "--out", out, "--backend", "ray", "--address", ray_address,
                        *quick, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert sorted(t["trial"] for t in trials) == [0, 1] and all(t["metric"] is not None for t in trials)
    for i in (0, 1):
        assert (out / f"trial-{i:03d}" / "summary.json").is_file()
        ((command, _),) = _headers(out / "logs" / f"trial-{i:03d}.log")  # each trial ran once, in a Ray worker
        assert command.startswith(f"train {CARTPOLE_CONFIG}")

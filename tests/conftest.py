"""Shared helpers: run the real `rl-lab` command in subprocesses, tiny CPU configs, and trained tiny runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CARTPOLE_CONFIG = REPO / "configs" / "cartpole_dqn.yaml"

# A few seconds of CartPole DQN on one CPU core; every subprocess run of the suite starts from these.
TINY = [
    "device=cpu",
    "torch_threads=1",  # several runs share 2 cores: one thread each, or they slow each other down 10x
    "train.total_steps=3000",
    "agent.learning_starts=500",
    "agent.train_freq=4",
    "agent.gradient_steps=1",
    "agent.target_update_interval=200",
    "agent.buffer_size=2000",
    "agent.encoder.kwargs.hidden_sizes=[32,32]",
    "eval.episodes=3",
    "eval.every=1000",
    "logger.log_every=500",
    "logger.wandb.mode=disabled",
    "logger.progress=false",
    "run.checkpoint_every=1000",
]

# Subprocesses started at once by fixtures that need several runs (2 cores: more only adds contention).
PARALLEL = 3


def rl_lab_command(*args: str | Path) -> list[str]:
    """The installed console script next to this interpreter, else `python -m rl_lab.cli`."""
    script = Path(sys.executable).parent / "rl-lab"
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "rl_lab.cli"]
    return base + [str(a) for a in args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["WANDB_MODE"] = "disabled"  # belt and braces: the commands also pass logger.wandb.mode=disabled
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_rl_lab(*args: str | Path, cwd: Path) -> subprocess.Popen:
    """Start `rl-lab ARGS` in `cwd` (so a default runs/ directory could never land in the repository), with SIGINT's
    default action even when pytest itself ignores it (a background job of a script), so tests can interrupt it."""
    return subprocess.Popen(
        rl_lab_command(*args),
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def run_rl_lab(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(rl_lab_command(*args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def run_many(commands: list[tuple], cwd: Path, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Run several `rl-lab` commands (each a tuple of args), PARALLEL at a time, results in order."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda args: run_rl_lab(*args, cwd=cwd, timeout=timeout), commands))


def user_error_line(result: subprocess.CompletedProcess) -> str:
    """Assert the contract for user errors (exit 2, one stderr line, no traceback) and return that line."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("rl-lab: error: "), lines[0]
    return lines[0]


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included) and its bytes, to prove a command left a directory alone."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """Three finished tiny runs made concurrently: `base` and `twin` (seed 0) and `seed1`.

    Tests must not modify them; copy a run directory first (shutil.copytree) to damage or resume it.
    """
    root = tmp_path_factory.mktemp("tiny_runs")
    runs = {"base": (0, root / "base"), "twin": (0, root / "twin"), "seed1": (1, root / "seed1")}
    commands = [("train", CARTPOLE_CONFIG, *TINY, f"seed={seed}", f"run.dir={d}") for seed, d in runs.values()]
    for (name, _), result in zip(runs.items(), run_many(commands, cwd=root), strict=True):
        assert result.returncode == 0, f"{name} run failed:\n{result.stdout}\n{result.stderr}"
    return {name: d for name, (_, d) in runs.items()}

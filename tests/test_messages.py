"""Figures and messages that must not mislead (issue 17, item 5): videos of the evaluated episodes, diagnostics that
check what they claim, labels that name the model, the real run directory in the interrupt message, overrides
anywhere, no `loss=nan`, strict booleans, the README's env ids, readable value labels, bands inside the returns."""

from __future__ import annotations

import json
import re
import shutil
import signal

import gymnasium as gym
import imageio.v2 as imageio
import matplotlib
import numpy as np
import pytest
import torch
import yaml
from conftest import CARTPOLE_CONFIG, REPO, TINY, run_rl_lab, start_rl_lab, user_error_line
from sklearn.datasets import load_digits
from torch import nn

import rl_lab.envs  # noqa: F401 - registers rl_lab/Glimpse-v0
import rl_lab.figures as figures
from rl_lab import diagnostics as D
from rl_lab.data import load_dataset
from rl_lab.envs.gridworld import GridMap
from rl_lab.rl.evaluation import evaluate
from rl_lab.rl.video import Film


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks on a shared machine
    yield
    torch.set_num_threads(threads)


# ---- rl-lab eval --video films the evaluated episodes ----------------------------------------------------------


def test_a_film_records_the_very_episodes_the_evaluation_counts(tmp_path):
    """12 episodes on 10 parallel envs (two envs play a second one), epsilon-greedy so the shared exploration RNG
    matters: every filmed episode has the return and length the evaluation counted at its index, one frame per step
    plus the first."""

    def lean(obs):  # always push left: short episodes, varied by the exploration
        return np.zeros(len(obs), dtype=np.int64)

    film = Film(12, tmp_path, "eval", 7, "CartPole-v1", {})
    result = evaluate(lean, "CartPole-v1", 12, seed=7, epsilon=0.3, film=film)
    assert sorted(clip["index"] for clip in film.clips) == list(range(12))
    for clip in film.clips:
        assert clip["return"] == result["returns"][clip["index"]]
        assert clip["length"] == result["lengths"][clip["index"]]
        frames = imageio.mimread(clip["path"], memtest=False)
        assert len(frames) == clip["length"] + 1
    names = {p.name for p in tmp_path.glob("*.mp4")}
    assert "eval-seed_7.mp4" in names and "eval-seed_8-episode_2.mp4" in names  # envs 0 and 1 played two
    again = evaluate(lean, "CartPole-v1", 12, seed=7, epsilon=0.3)  # filming changes nothing
    np.testing.assert_array_equal(again["returns"], result["returns"])


def test_eval_video_lines_match_the_table(tiny_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["base"], run)
    result = run_rl_lab("eval", run, "--episodes", "2", "--video", "2", "--epsilon", "0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    videos = re.findall(r"video: (\S+) \(episode \d+: return ([\d.]+), (\d+) steps\)", result.stdout)
    assert len(videos) == 2
    mean = float(re.search(r"return mean\s+([\d.]+)", result.stdout).group(1))
    assert np.mean([float(r) for _, r, _ in videos]) == pytest.approx(mean, abs=0.01)
    for path, _, steps in videos:
        assert len(imageio.mimread(path, memtest=False)) == int(steps) + 1
    too_many = run_rl_lab("eval", run, "--episodes", "2", "--video", "3", cwd=tmp_path)
    assert "--video 3: films episodes of the evaluation, which plays 2" in user_error_line(too_many)


# ---- rl-lab diagnose ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    images = torch.tensor(data.images[:200] * 255 / 16, dtype=torch.float32).round().to(torch.uint8).unsqueeze(1)
    return images, torch.tensor(data.target[:200])


def _lenet():
    from rl_lab.backbone import EncoderSpec, LinearHead, build_encoder

    torch.manual_seed(0)
    encoder = build_encoder(EncoderSpec("lenet", (1, 8, 8), {}))
    return nn.Sequential(encoder, LinearHead(encoder.out_dim, 10))


def _blue_pixels(png) -> int:
    """Pixels of matplotlib's default line colour (tab:blue) in a PNG: how much of a curve was drawn."""
    rgb = (matplotlib.image.imread(png)[..., :3] * 255).round()
    return int((np.abs(rgb - [31, 119, 180]).sum(-1) < 30).sum())


def test_overfit_tiny_drives_the_loss_near_zero_and_draws_its_curve(digits, tmp_path):
    result = D.overfit_tiny(_lenet(), *digits, tmp_path, n=20)
    assert result["ok"] and result["final_loss"] < result["threshold"] == 0.01
    assert result["initial_loss"] > 1.5 and result["steps_to_threshold"] > 10  # it trained, not stopped at step 1
    assert result["steps_to_100"] < result["steps_to_threshold"]  # right answers come long before a low loss
    assert _blue_pixels(tmp_path / "overfit_tiny.png") > 300  # a visible curve, not a blank axis

    class Blind(nn.Module):  # logits that ignore the input cannot fit 20 varied labels
        def __init__(self):
            super().__init__()
            self.logits = nn.Parameter(torch.zeros(10))

        def forward(self, x):
            return self.logits.expand(len(x), 10)

    failed = D.overfit_tiny(Blind(), *digits, tmp_path / "blind", n=20, steps=150)
    assert not failed["ok"] and failed["steps_to_threshold"] is None and failed["final_loss"] > 1.0


@pytest.mark.parametrize("name", ["saliency", "occlusion"])
def test_saliency_and_occlusion_show_one_example_per_class_with_a_colour_bar(digits, tmp_path, monkeypatch, name):
    drawn = []
    monkeypatch.setattr(D, "save_figure", lambda fig, path, **kw: drawn.append(fig) or path)
    images, labels = digits
    result = D.DIAGNOSTICS[name](_lenet(), images, labels, tmp_path)
    assert result["classes"] == list(range(10)) and result["n"] == 10
    (fig,) = drawn
    maps = [ax for ax in fig.axes if ax.get_images()]
    bars = [ax for ax in fig.axes if not ax.get_images()]
    assert len(maps) == 20 and len(bars) == 1  # images and maps, one colour bar for the row of maps
    assert [ax.get_title() for ax in maps[:10]] == [f"class {c}" for c in range(10)]
    shown = [ax.get_images()[0].get_array() for ax in maps[:10]]
    for c, image in enumerate(shown):  # the first example of class c, as drawn
        first = images[int(torch.nonzero(labels == c)[0, 0]), 0].float()
        assert np.corrcoef(np.asarray(image).ravel(), first.numpy().ravel())[0, 1] > 0.99
    matplotlib.pyplot.close(fig)


def test_diagnose_uses_the_runs_own_optimiser_and_learning_rate(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "train.total_steps=600", "eval.every=0", "agent.optim.lr=4e-4", f"run.dir={run}"]
    assert run_rl_lab("train", CARTPOLE_CONFIG, *args, cwd=tmp_path).returncode == 0
    result = run_rl_lab("diagnose", run, "--only", "update_ratio", "overfit_tiny", "--n", "40", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ratio = json.loads((run / "diagnostics" / "update_ratio.json").read_text())
    assert (ratio["optimizer"], ratio["lr"]) == ("adam", 4e-4)
    overfit = json.loads((run / "diagnostics" / "overfit_tiny.json").read_text())
    assert overfit["ok"] and overfit["final_loss"] < 0.01
    assert re.search(r"^overfit_tiny\s+ok=True ", result.stdout, re.MULTILINE)  # the verdict first


# ---- the interrupt message, overrides anywhere, the progress line, booleans -----------------------------------


@pytest.mark.parametrize(
    ("extra", "first_line"),
    [([], "run dir {where}"), (["--seeds", "0-1"], "experiment {where}: seeds 0-1")],
    ids=["run", "experiment"],
)
def test_the_interrupt_message_names_what_to_resume(tmp_path, extra, first_line):
    where = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("train.total_steps")]
    proc = start_rl_lab(
        "train", CARTPOLE_CONFIG, *args, "train.total_steps=10000000", f"run.dir={where}", *extra, cwd=tmp_path
    )
    try:
        line = proc.stdout.readline()  # the first line: training has started
        assert first_line.format(where=where) in line, line
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert stderr.splitlines()[-1] == (
        f"rl-lab: interrupted; continue from the last checkpoint with: rl-lab train --resume {where}"
    )


def test_variance_study_takes_overrides_after_its_options(tmp_path):
    """An override after the options reaches the config (here: an unknown key, refused by name), with the config
    given or left at its default."""
    config = REPO / "configs" / "cartpole_reinforce.yaml"
    given = run_rl_lab("variance-study", config, "--out", tmp_path / "a", "--steps", "10", "agent.nope=1", cwd=tmp_path)
    assert "agent.nope: unknown key" in user_error_line(given)
    default = run_rl_lab("variance-study", "--out", tmp_path / "b", "agent.nope=1", cwd=REPO)
    assert "agent.nope: unknown key" in user_error_line(default)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_progress_shows_no_loss_until_there_is_one(tmp_path):
    args = [a for a in TINY if not a.startswith(("agent.learning_starts", "logger.progress", "train.total_steps"))]
    args += ["train.total_steps=2000", "agent.learning_starts=1200", "logger.print_every=0", "eval.every=0"]
    result = run_rl_lab("train", CARTPOLE_CONFIG, *args, f"run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == 4 and "nan" not in result.stdout
    assert all("loss" not in line for line in lines[:2])  # steps 500 and 1,000: nothing learned yet
    assert all(re.search(r"loss \d+\.\d{4}", line) for line in lines[2:])


@pytest.mark.parametrize("value", ["yes", "no", "on", "off", "1", "y"])
def test_booleans_are_true_or_false_only(tmp_path, value):
    line = user_error_line(run_rl_lab("config", CARTPOLE_CONFIG, f"agent.double_dqn={value}", cwd=tmp_path))
    assert "agent.double_dqn=" in line and "expected bool: true or false" in line


def test_booleans_in_a_config_file_are_true_or_false_only(tmp_path):
    data = yaml.safe_load(CARTPOLE_CONFIG.read_text())
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data).replace("double_dqn: true", "double_dqn: yes"))
    assert "double_dqn: yes" in config.read_text()
    line = user_error_line(run_rl_lab("config", config, cwd=tmp_path))
    assert "agent.double_dqn='yes': wrong type, expected bool: true or false" in line
    word = run_rl_lab("config", CARTPOLE_CONFIG, "agent.double_dqn=False", "logger.wandb.mode=off", cwd=tmp_path)
    assert "logger.wandb.mode='off'" in user_error_line(word)  # a string field: 'off' stays the word off


# ---- the README, rl-lab solve, learning-curve bands ---------------------------------------------------------------


def test_readme_names_the_env_each_config_trains_on():
    """Every README line `rl-lab train configs/X.yaml ... # ... on ENV` names X's env.id (Pong: NoFrameskip-v4)."""
    claims = re.findall(
        r"rl-lab train (configs/\w+\.yaml)[^#\n]*#[^\n]*? on ([\w/]+-v\d+)", (REPO / "README.md").read_text()
    )
    assert ("configs/pong_dqn.yaml", "PongNoFrameskip-v4") in claims
    for config, env_id in claims:
        assert yaml.safe_load((REPO / config).read_text())["env"]["id"] == env_id, config


def test_value_labels_are_dark_on_light_cells_and_light_on_dark_ones(monkeypatch, tmp_path):
    cmap = matplotlib.colormaps["viridis"]
    assert figures.text_colours(cmap([0.0, 1.0])) == ["white", "black"]  # dark purple, light yellow
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, **kw: drawn.append(fig) or path)
    grid = GridMap.parse("test", ["....", "....", "...T"])
    values = np.linspace(-10, 0, len(grid.cells))
    policy = np.full((len(grid.cells), 4), 0.25)
    figures.plot_grid_values(grid, [("V", values, policy)], tmp_path / "v.png", "test")
    (fig,) = drawn
    labels = {float(t.get_text()): t.get_color() for t in fig.axes[0].texts if t.get_text() != "T"}
    assert labels[min(labels)] == "white" and labels[max(labels)] == "black"
    matplotlib.pyplot.close(fig)


def test_learning_curve_bands_stay_within_the_observed_returns(monkeypatch, tmp_path):
    rows = [
        {
            "step": 1000,
            "eval/return_mean": 480.0,
            "eval/return_std": 40.0,
            "eval/return_min": 400.0,
            "eval/return_max": 500.0,
        },
        {
            "step": 2000,
            "eval/return_mean": 20.0,
            "eval/return_std": 30.0,
            "eval/return_min": 9.0,
            "eval/return_max": 80.0,
        },
    ]
    assert figures.return_band(rows[0]) == (480.0, 440.0, 500.0)
    assert figures.return_band(rows[1]) == (20.0, 9.0, 50.0)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, **kw: drawn.append(fig) or path)
    figures.plot_learning_curve(metrics, tmp_path / "curve.png", "test")
    (fig,) = drawn
    (band,) = fig.axes[0].collections
    heights = band.get_paths()[0].vertices[:, 1]
    assert heights.max() == 500.0 and heights.min() == 9.0
    matplotlib.pyplot.close(fig)


# ---- the glimpse env: a task where looking around pays, and frames that show it --------------------------------


@pytest.mark.parametrize("config", ["glimpse_a2c.yaml", "glimpse_reinforce.yaml"])
def test_the_shipped_glimpse_task_hides_the_digit_from_the_first_glimpse(config):
    """The first glimpse (at the canvas centre) cannot take in the digit: its widest patch covers less than half of
    the digit's box, on every canvas; a look at one of the grid's places centres the glimpse on the digit."""
    kwargs = yaml.safe_load((REPO / "configs" / config).read_text())["env"]["kwargs"]
    data = load_dataset(kwargs["dataset"], kwargs["split"], **kwargs["data_kwargs"])
    size = data.images.shape[-1]
    side = kwargs["glimpse_size"] * kwargs.get("scale", 2) ** (kwargs["scales"] - 1)
    window = np.array([size // 2 - side // 2, size // 2 - side // 2 + side])  # pixels [start, end) on each axis
    boxes = np.asarray(data.boxes)
    overlap = [
        np.clip(np.minimum(window[1], boxes[:, 2 + a]) - np.maximum(window[0], boxes[:, a]), 0, None) for a in (0, 1)
    ]
    assert (overlap[0] * overlap[1] < 0.5 * 28 * 28).all()
    grid = kwargs["grid"]
    places = ((np.arange(grid) + 0.5) / grid * size).astype(int)  # pixel centres of the places to look at
    centres = (boxes[:, :2] + boxes[:, 2:]) // 2
    assert np.isin(centres, places).all()


def test_glimpse_frames_show_where_the_agent_looks_and_how_it_answered():
    env = gym.make("rl_lab/Glimpse-v0", glimpses=3, glimpse_size=8, scales=2, grid=2, render_mode="rgb_array")
    _, info = env.reset(seed=0)
    first = env.render()
    assert first.shape == (252, 252, 3) and first.dtype == np.uint8  # 28x28 digits, 9 pixels per pixel
    env.step(0)  # look at the top-left place
    looked = env.render()
    changed = np.argwhere((looked != first).any(-1))
    assert changed[:, 0].min() < 60 and changed[:, 1].min() < 60  # the new glimpse's squares, top left
    env.step(4 + info["label"])  # answer right: a green frame
    assert tuple(env.render()[0, 0]) == (0, 200, 0)
    _, info = env.reset(seed=1)
    env.step(4 + (info["label"] + 1) % 10)  # answer wrong at once: a red frame
    assert tuple(env.render()[0, 0]) == (220, 0, 0)
    plain = gym.make("rl_lab/Glimpse-v0")
    plain.reset(seed=0)
    assert plain.render() is None  # no render_mode: no frames


@pytest.mark.learning
def test_a_glimpse_agent_learns_to_look_before_it_answers_and_its_video_shows_it(tmp_path):
    """A short A2C run of the shipped config already looks before answering (an answer at once is a guess), and
    `rl-lab eval --video` films the glimpse moving."""
    run = tmp_path / "run"
    quiet = ["device=cpu", "torch_threads=1", "logger.wandb.mode=disabled", "logger.progress=false"]
    args = [*quiet, "train.total_steps=40000", "eval.every=0", "eval.episodes=100", f"run.dir={run}"]
    result = run_rl_lab("train", REPO / "configs" / "glimpse_a2c.yaml", *args, cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr
    final = json.loads((run / "summary.json").read_text())["final_eval"]
    assert final["length_mean"] > 2.0, final  # at most 3: two looks and the answer
    filmed = run_rl_lab("eval", run, "--episodes", "2", "--video", "2", cwd=tmp_path)
    assert filmed.returncode == 0, filmed.stderr
    for path, steps in re.findall(r"video: (\S+) \(episode \d+: return [\d.]+, (\d+) steps\)", filmed.stdout):
        frames = np.array(imageio.mimread(path, memtest=False), dtype=np.int64)
        assert len(frames) == int(steps) + 1 >= 3
        moved = (np.abs(frames[1] - frames[0]) > 80).any(-1).sum()  # the glimpse's squares went elsewhere
        assert moved > 500

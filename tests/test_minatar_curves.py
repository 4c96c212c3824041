"""benchmarks/minatar_curves.py: a curve recorded by an earlier invocation stays in the figure's JSON when its run
directory is gone (the 1M-step runs take hours each and are made in different sessions); a run directory that is
there gives its curve and summary to its own game's panel only."""

import json
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "minatar_curves.py"


def plot_only(runs, png):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--plot-only", "--out", str(runs), "--png", str(png)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(png.with_suffix(".json").read_text())


def test_plot_only_keeps_curves_recorded_earlier(tmp_path):
    png = tmp_path / "curves.png"
    earlier = [{"step": 50_000, "mean": 3.1, "std": 0.4}, {"step": 100_000, "mean": 5.5, "std": 1.0}]
    png.with_suffix(".json").write_text(
        json.dumps({"evaluations": {"breakout_dqn": earlier}, "commands": {"breakout_dqn": ["rl-lab", "train"]}})
    )
    stdout, record = plot_only(tmp_path / "runs", png)
    assert record["evaluations"] == {"breakout_dqn": earlier}
    assert record["commands"] == {"breakout_dqn": ["rl-lab", "train"]}
    assert png.stat().st_size > 10_000 and "breakout_dqn" in stdout
    assert set(record["random_play"]) == {"breakout", "spaceinvaders"}


def test_a_finished_run_gives_its_curve_and_summary_to_its_own_game_only(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import minatar_curves
    finally:
        sys.path.remove(str(SCRIPT.parent))
    runs = tmp_path / "runs"
    overrides = ["train.total_steps=1200", "eval.every=600", "eval.episodes=2", "agent.learning_starts=200"]
    quiet = ["logger.wandb.mode=disabled", f"run.dir={runs / 'breakout_dqn'}"]
    train = [sys.executable, "-m", "rl_lab", "train", str(REPO / "configs" / "minatar_breakout_dqn.yaml")]
    subprocess.run([*train, *overrides, *quiet], check=True, capture_output=True, timeout=300)

    trained = minatar_curves.game_curves("breakout", runs, {})
    assert [e["step"] for e in trained["breakout_dqn"]] == [600, 1200]
    assert minatar_curves.game_curves("spaceinvaders", runs, {}) == {}

    _, record = plot_only(runs, tmp_path / "curves.png")
    assert record["evaluations"] == trained
    summary = json.loads((runs / "breakout_dqn" / "summary.json").read_text())
    assert record["summaries"]["breakout_dqn"]["final_mean"] == summary["final_eval"]["return_mean"]
    assert record["summaries"]["breakout_dqn"]["sps"] > 0 and set(record["summaries"]) == {"breakout_dqn"}

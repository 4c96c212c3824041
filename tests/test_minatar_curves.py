"""benchmarks/minatar_curves.py: a curve recorded by an earlier invocation stays in the figure's JSON when its run
directory is gone (the 1M-step runs take hours each and are made in different sessions)."""

import json
import subprocess
import sys

from conftest import REPO


def test_plot_only_keeps_curves_recorded_earlier(tmp_path):
    png = tmp_path / "curves.png"
    earlier = [{"step": 50_000, "mean": 3.1, "std": 0.4}, {"step": 100_000, "mean": 5.5, "std": 1.0}]
    png.with_suffix(".json").write_text(
        json.dumps({"evaluations": {"breakout_dqn": earlier}, "commands": {"breakout_dqn": ["rl-lab", "train"]}})
    )
    command = [sys.executable, str(REPO / "benchmarks" / "minatar_curves.py"), "--plot-only"]
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "runs"), "--png", str(png)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(png.with_suffix(".json").read_text())
    assert record["evaluations"] == {"breakout_dqn": earlier}
    assert record["commands"] == {"breakout_dqn": ["rl-lab", "train"]}
    assert png.stat().st_size > 10_000 and "breakout_dqn" in result.stdout
    assert set(record["random_play"]) == {"breakout", "spaceinvaders"}

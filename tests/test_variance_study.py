"""`rl-lab variance-study` end to end on a tiny budget: runs, snapshots, numbers, figure; and its user errors."""

from __future__ import annotations

import json
import math

from conftest import REPO

from rl_lab.cli import main

OPTIONS = ["total_return", "reward_to_go", "discount", "moving_average", "learned_value"]
TINY = [
    "env.num_envs=2",
    "agent.episodes_per_update=4",
    "eval.episodes=2",
    "eval.every=0",
    "logger.log_every=500",
    "logger.wandb.mode=disabled",
    "logger.progress=false",
    "device=cpu",
]


def test_variance_study_writes_every_option_at_every_snapshot(tmp_path):
    out = tmp_path / "study"
    args = ["--out", str(out), "--steps", "1500", "--snapshots", "2", "--batches", "4"]
    assert main(["variance-study", *args, str(REPO / "configs" / "cartpole_reinforce.yaml"), *TINY]) == 0
    result = json.loads((out / "variance.json").read_text())
    snapshots = result["snapshots"]
    assert [s["step"] for s in snapshots][0] == 0 and len(snapshots) == 2 and snapshots[1]["step"] >= 1500
    for snap in snapshots:
        values = [snap[k]["variance"] for k in OPTIONS]
        assert all(math.isfinite(v) and v > 0 for v in values)
        assert len(set(values)) == len(values), "each option weighs the log-probabilities differently"
        assert snap["moving_average_baseline"] > 0
    # at the random initial policy every step carrying the whole return is the noisiest estimate of all
    first = snapshots[0]
    assert first["total_return"]["variance"] > first["reward_to_go"]["variance"]
    for key in OPTIONS:
        assert (out / "runs" / key / "summary.json").is_file()
        assert result["curves"][key]["steps"], key
    assert (out / "variance_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [s["step"] for s in snapshots]
    assert set(rows[0]) >= {f"variance/{k}" for k in OPTIONS}


def test_variance_study_user_errors(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    cases = [
        (["--out", str(taken), str(REPO / "configs" / "cartpole_reinforce.yaml")], "not an empty directory"),
        (["--out", str(tmp_path / "a"), str(REPO / "configs" / "cartpole_a2c.yaml")], "needs a REINFORCE config"),
        (["--out", str(tmp_path / "b"), "--snapshots", "1"], "--snapshots >= 2"),
    ]
    for args, words in cases:
        assert main(["variance-study", *args]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

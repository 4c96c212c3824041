"""Statistics over seeds (rl_lab.stats) against hand computations and exact bootstrap distributions, and
`rl-lab compare` on run directories written here (no training): its table, JSON, figures and Atari scores."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_rl_lab, user_error_line
from scipy.stats import trim_mean

from rl_lab import stats
from rl_lab.comparison import collect, compare

# ------------------------------------------------------------------------------------------------ rl_lab.stats


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # 1..8: 2 cut at each end, mean(3, 4, 5, 6)
    assert stats.iqm(np.array([100.0, 1, 2, 3, 4, 5, 6, -50])) == pytest.approx(3.5)  # outliers cut: mean(2..5)
    assert stats.iqm(np.array([7.0])) == 7.0
    rng = np.random.default_rng(0)
    for n in (3, 5, 10, 11, 37):  # int(n / 4) cut from each end, as scipy.stats.trim_mean (rliable's definition)
        x = rng.normal(size=n)
        assert stats.iqm(x) == pytest.approx(trim_mean(x, 0.25))


def test_optimality_gap_counts_only_the_shortfall():
    # min(x, 5) = [1, 2, 5, 5], mean 3.25: the runs fall 1.75 short of 5 on average
    assert stats.optimality_gap(np.array([1.0, 2, 6, 8]), 5.0) == pytest.approx(1.75)
    assert stats.optimality_gap(np.array([500.0, 480]), 475.0) == 0.0


def test_probability_of_improvement_by_hand():
    one = [np.array([1.0, 3.0])], [np.array([2.0, 2.0])]  # pairs (1,2) (1,2) (3,2) (3,2): 2 of 4 wins
    assert stats.probability_of_improvement(*one) == pytest.approx(0.5)
    assert stats.probability_of_improvement([np.array([3.0, 4.0])], [np.array([1.0, 2.0])]) == 1.0
    assert stats.probability_of_improvement([np.array([1.0])], [np.array([1.0])]) == 0.5  # a tie counts one half
    # two tasks: 0.5 on the first, 1.0 on the second, averaged over tasks
    x = [np.array([1.0, 3.0]), np.array([3.0, 4.0])]
    y = [np.array([2.0, 2.0]), np.array([1.0, 2.0])]
    assert stats.probability_of_improvement(x, y) == pytest.approx(0.75)
    assert stats.probability_of_improvement(y, x) == pytest.approx(0.25)


def _exact_bootstrap(x: np.ndarray, statistic) -> np.ndarray:
    """The statistic over every one of the n^n equally likely resamples of x."""
    return np.array([statistic(x[list(rows)]) for rows in itertools.product(range(len(x)), repeat=len(x))])


@pytest.mark.parametrize("name", ["mean", "iqm", "median"])
def test_bootstrap_interval_matches_the_exact_bootstrap_distribution(name):
    x = np.array([1.0, 2.0, 3.0, 10.0])
    statistic = {"mean": np.mean, "iqm": stats.iqm, "median": np.median}[name]
    exact = np.percentile(_exact_bootstrap(x, statistic), [2.5, 97.5])
    estimate = stats.interval_estimates([x], reps=20_000, seed=1)[name]
    assert estimate.point == pytest.approx(statistic(x))
    # resamples take values on a grid of 0.125 or coarser; 20,000 of them land within one step of the exact bounds
    assert estimate.low == pytest.approx(exact[0], abs=0.26)
    assert estimate.high == pytest.approx(exact[1], abs=0.26)
    assert estimate.low <= estimate.point <= estimate.high


def test_bootstrap_is_stratified_by_task():
    # task A always scores 0, task B always 10: a stratified resample keeps 2 runs of each, so the mean is always 5;
    # resampling the 4 pooled runs would mix them (a mean of 0 or 10 with probability 1/256 each, a wide interval)
    estimates = stats.interval_estimates([np.array([0.0, 0.0]), np.array([10.0, 10.0])], target=5.0)
    assert estimates["mean"] == stats.Estimate(5.0, 5.0, 5.0)
    assert estimates["optimality_gap"] == stats.Estimate(2.5, 2.5, 2.5)  # min(x, 5) = [0, 0, 5, 5]
    resampled = stats.stratified_resamples(
        [np.array([1.0, 2.0]), np.array([7.0, 8.0, 9.0])], 500, np.random.default_rng(0)
    )
    assert [r.shape for r in resampled] == [(500, 2), (500, 3)]
    assert set(np.unique(resampled[0])) <= {1.0, 2.0} and set(np.unique(resampled[1])) <= {7.0, 8.0, 9.0}


def test_improvement_interval_and_determinism():
    x, y = [np.array([5.0, 6.0, 7.0, 8.0])], [np.array([1.0, 2.0, 3.0, 4.0])]
    assert stats.improvement_estimate(x, y) == stats.Estimate(1.0, 1.0, 1.0)  # every resample: X beats Y
    a, b = [np.array([1.0, 3.0, 5.0, 7.0])], [np.array([2.0, 4.0, 6.0, 8.0])]
    first, again = stats.improvement_estimate(a, b, seed=3), stats.improvement_estimate(a, b, seed=3)
    assert first == again  # a seed, so the same inputs give the same interval
    assert first.point == pytest.approx(6 / 16) and first.low < first.point < first.high


def test_performance_profile_and_curve_band_by_hand():
    point, low, high = stats.performance_profile([np.array([1.0, 2.0, 3.0, 4.0])], np.array([0.0, 1.5, 3.5, 5.0]))
    np.testing.assert_allclose(point, [1.0, 0.75, 0.25, 0.0])
    assert np.all(low <= point) and np.all(point <= high) and low[0] == high[0] == 1.0 and high[-1] == 0.0
    curves = np.array([[0.0, 10.0, 20.0], [2.0, 12.0, 40.0]])
    mean, low, high = stats.mean_band(curves)
    np.testing.assert_allclose(mean, [1.0, 11.0, 30.0])
    np.testing.assert_allclose(low, [0.0, 10.0, 20.0])  # a resample of 2 runs can be the first run twice...
    np.testing.assert_allclose(high, [2.0, 12.0, 40.0])  # ... or the second twice
    single = stats.mean_band(curves[:1])
    np.testing.assert_allclose(single, [curves[0]] * 3)


# ------------------------------------------------------------------------------------------------ rl-lab compare


def _fake_run(run_dir: Path, env_id: str, seed: int, curve: list[tuple[int, float]], final: float | None) -> Path:
    """A run directory as training leaves it, for what compare reads: config.yaml, metrics.jsonl, summary.json."""
    run_dir.mkdir(parents=True)
    config = {"seed": seed, "env": {"id": env_id}, "agent": {"name": "dqn"}, "run": {"dir": str(run_dir)}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [json.dumps({"step": step, "eval/return_mean": value}) for step, value in curve]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if final is not None:
        (run_dir / "summary.json").write_text(json.dumps({"final_eval": {"return_mean": final}, "env_steps": 100}))
    return run_dir


def _fake_experiment(exp_dir: Path, env_id: str, finals: list[float | None]) -> Path:
    runs = {}
    for seed, final in enumerate(finals):
        curve = [(0, 10.0 + seed), (50, 20.0 + seed), (100, final if final is not None else 30.0)]
        _fake_run(exp_dir / f"seed-{seed}", env_id, seed, curve[: 3 if final is not None else 2], final)
        runs[str(seed)] = {"dir": f"seed-{seed}", "status": "finished" if final is not None else "running"}
    (exp_dir / "experiment.json").write_text(json.dumps({"seeds": list(range(len(finals))), "runs": runs}))
    return exp_dir


def test_compare_writes_the_table_json_and_curves(tmp_path):
    a = _fake_experiment(tmp_path / "dqn", "CartPole-v1", [500.0, 480.0, 200.0, 500.0, None])
    b = _fake_experiment(tmp_path / "a2c", "CartPole-v1", [100.0, 150.0, 300.0, 120.0])
    out = tmp_path / "out"
    result = run_rl_lab("compare", a, b, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = json.loads((out / "compare.json").read_text())
    dqn, a2c = table["entries"]
    assert (dqn["label"], dqn["runs"], a2c["runs"]) == ("dqn", 4, 4)  # the unfinished seed is left out ...
    assert any("1 run(s) without a final score" in note for note in table["notes"])  # ... and said so
    # by hand: dqn finals sorted [200, 480, 500, 500], IQM = mean(480, 500) = 490; mean 420; median 490
    assert dqn["iqm"]["point"] == pytest.approx(490.0)
    assert dqn["mean"]["point"] == pytest.approx(420.0) and dqn["median"]["point"] == pytest.approx(490.0)
    # CartPole-v1's reward threshold 475 is the target: min(x, 475) = [475, 475, 200, 475], mean 406.25
    assert table["target"] == 475.0 and dqn["optimality_gap"]["point"] == pytest.approx(68.75)
    assert a2c["iqm"]["point"] == pytest.approx(135.0)  # [100, 120, 150, 300] -> mean(120, 150)
    # P(dqn > a2c): 500, 480, 500 beat all four a2c runs, 200 beats three of them: (12 + 3) / 16
    (pair,) = table["improvement"]
    assert (pair["x"], pair["y"]) == ("dqn", "a2c") and pair["point"] == pytest.approx(15 / 16)
    assert pair["low"] <= pair["point"] <= pair["high"] <= 1.0
    assert dqn["iqm"]["low"] <= 490.0 <= dqn["iqm"]["high"]
    markdown = (out / "compare.md").read_text()
    assert "| dqn | 4 | 490 [" in markdown and "| dqn | a2c | 0.9375 [" in markdown
    assert markdown in result.stdout
    for name in ("learning_curves.png", "performance_profile.png"):  # one env: the profile compares like with like
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_groups_loose_runs_and_normalises_atari(tmp_path):
    # Pong: random -20.7, human 9.3; a run scoring 9.3 is 1.0 human-normalised, -5.7 is 0.5
    runs = [
        _fake_run(tmp_path / f"pong-s{seed}", "ALE/Pong-v5", seed, [(0, -21.0), (100, final)], final)
        for seed, final in enumerate([9.3, -5.7, -20.7])
    ]
    out = tmp_path / "out"
    result = run_rl_lab("compare", *runs, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = json.loads((out / "compare.json").read_text())
    (entry,) = table["entries"]  # three seeds of one config: one entry, labelled by their common name
    assert entry["label"] == "pong" and entry["runs"] == 3
    assert table["score"].startswith("human-normalised") and table["target"] == 1.0
    np.testing.assert_allclose(sorted(entry["scores"]["ALE/Pong-v5"]), [0.0, 0.5, 1.0])
    assert entry["mean"]["point"] == pytest.approx(0.5)
    assert (out / "performance_profile.png").is_file()


def test_compare_pools_tasks_under_a_label(tmp_path):
    cart = _fake_experiment(tmp_path / "cart", "CartPole-v1", [400.0, 500.0])
    acro = _fake_experiment(tmp_path / "acro", "Acrobot-v1", [-100.0, -80.0])
    entries, _ = collect([f"dqn={cart},{acro}"], "eval/return_mean")
    (entry,) = entries
    assert entry.label == "dqn" and sorted(entry.tasks()) == ["Acrobot-v1", "CartPole-v1"]
    table = compare(entries, "eval/return_mean")
    assert table["entries"][0]["tasks"] == {"CartPole-v1": 2, "Acrobot-v1": 2}
    assert table["target"] is None and "optimality_gap" not in table["entries"][0]  # no common target


def test_compare_user_errors(tmp_path):
    missing = run_rl_lab("compare", tmp_path / "nope", "--out", tmp_path / "out", cwd=tmp_path)
    assert "does not exist" in user_error_line(missing)
    (tmp_path / "empty").mkdir()
    not_a_run = run_rl_lab("compare", tmp_path / "empty", "--out", tmp_path / "out", cwd=tmp_path)
    assert "neither an experiment directory" in user_error_line(not_a_run)
    run = _fake_run(tmp_path / "r", "CartPole-v1", 0, [(0, 1.0)], 1.0)
    bad_metric = run_rl_lab("compare", run, "--metric", "val/acc", "--out", tmp_path / "out", cwd=tmp_path)
    assert "no run has val/acc" in user_error_line(bad_metric)
    assert not (tmp_path / "out").exists()  # nothing written

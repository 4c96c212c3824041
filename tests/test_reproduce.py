"""benchmarks/reproduce.py: a documented command still reproduces its number, and bad input is one line.

The CI check reruns the RAM 28x28 cell (6 glimpses, configs/ram_mnist.yaml) for seed 0 at the reduced budget recorded
in docs/results/ci/ram.json, through reproduce.py itself (the same command, the same JSON), and compares it with the
recorded distribution over seeds 0-2. Tolerance: the recorded 95 % CI is that of a mean over n seeds, half-width
about 1.96 sigma / sqrt(n); one run falls within 1.96 sigma of the mean 95 % of the time, so the band for one run is
the mean ± sqrt(n) times the CI's half-width (at least one binomial standard error on the 1,000 test images, for
seeds that happened to agree). A change that moves the number as much as another seed would passes; one that
breaks RAM (or the command) fails. On the machine and torch of the record, seed 0 reproduces exactly.
Refresh the record after an intended change with the command in the JSON (`last_invocation.command`).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO, tree_bytes

RECORD = REPO / "docs" / "results" / "ci" / "ram.json"
CELL = "mnist-ram6"
TEST_IMAGES = 1000  # the bundled digits' test split


def reproduce(*args, cwd=REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "benchmarks" / "reproduce.py"), *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def band(estimate: dict, seeds: int) -> tuple[float, float]:
    """The range one more seed's error (%) falls in, from the recorded mean and its CI over `seeds` seeds."""
    point = estimate["point"]
    p = point / 100
    binomial = 100 * math.sqrt(p * (1 - p) / TEST_IMAGES)
    half = max(math.sqrt(seeds) * (estimate["high"] - estimate["low"]) / 2, binomial)
    return point - half, point + half


@pytest.mark.learning
def test_ram_28x28_cell_reproduces_its_recorded_number(tmp_path):
    recorded = json.loads(RECORD.read_text())["cells"][CELL]
    assert recorded["seeds"] == [0, 1, 2] and recorded["budget"] < 1
    result = reproduce(
        "ram",
        "--cells",
        CELL,
        "--seeds",
        "0",
        "--budget",
        recorded["budget"],
        "--out",
        tmp_path / "out",
        "--runs",
        tmp_path / "runs",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    rerun = json.loads((tmp_path / "out" / "ram.json").read_text())["cells"][CELL]
    assert rerun["overrides"] == recorded["overrides"], "the cell's command changed; record it again"
    assert rerun["seeds"] == [0] and rerun["stamps"]["0"]["commit"]
    error = rerun["values"]["error"][0]
    low, high = band(recorded["estimates"]["error"], len(recorded["seeds"]))
    assert low <= error <= high, (
        f"RAM 28x28, 6 glimpses, seed 0 at budget {recorded['budget']}: test error {error:.2f} %, recorded "
        f"{recorded['values']['error']} (seeds 0-2) -> accepted [{low:.2f}, {high:.2f}]"
    )
    ml_low, ml_high = band(recorded["estimates"]["error_mean_location"], len(recorded["seeds"]))
    assert ml_low <= rerun["values"]["error_mean_location"][0] <= ml_high
    table = (tmp_path / "out" / "ram.md").read_text()
    assert "| 28×28 digits" in table and "budget ×" in table  # a reduced budget is marked in the table


@pytest.mark.parametrize(
    "args, says",
    [
        (["ram", "--cells", "nope"], "--cells nope: no such cell"),
        (["ram", "--budget", "0"], "--budget 0.0: must be > 0"),
        (["captioning", "--seeds", "x"], "--seeds x: not a list of seeds"),
        (["atari", "does-not-exist"], "not a run directory"),
        (["benchmarks", "--which", "nope"], "--which nope: no such benchmark"),
        (["nope"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, says):
    result = reproduce(*args, "--out", tmp_path / "out", "--runs", tmp_path / "runs", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce.py: error: ") and says in lines[0], result.stderr
    assert tree_bytes(tmp_path) == {}


def test_dry_run_prints_the_documented_commands_and_writes_nothing(tmp_path):
    result = reproduce("ram", "--dry-run", "--cells", "translated-*", "--out", tmp_path / "o", "--runs", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    commands = [line[2:] for line in result.stdout.splitlines() if line.startswith("$ ")]
    assert len(commands) == 5 * 3  # MLP, CNN, RAM 4/6/8, one run per seed
    ram6 = [c for c in commands if c.startswith("rl-lab train configs/ram_translated.yaml task.figure_examples=0")]
    assert len(ram6) == 3 and all("torch_threads=1" in c for c in ram6)
    assert tree_bytes(tmp_path) == {}

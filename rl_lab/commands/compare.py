"""`rl-lab compare EXP_OR_RUN... [--metric eval/return_mean] [--target X] [--out DIR]`: learning curves with
bootstrap bands, and the IQM / mean / median / optimality-gap table with probability of improvement between each
pair (Agarwal et al. 2021), as Markdown, JSON and PNG (rl_lab.comparison computes and draws them)."""

from __future__ import annotations

import time
from pathlib import Path

import rl_lab.comparison as comparison
from rl_lab.errors import UserError
from rl_lab.fileio import dumps_json, write_atomic


def compare(paths: list[str], metric: str, out: str | None, target: float | None = None) -> dict:
    entries, notes = comparison.collect(paths, metric)
    if not any(len(run.steps) or run.final is not None for entry in entries for run in entry.runs):
        raise UserError(
            f"no run has {metric} (in summary.json or metrics.jsonl); choose another --metric, e.g. eval/return_mean "
            "(agents) or val/acc (classification)"
        )
    result = comparison.compare(entries, metric, target)
    out_dir = Path(out) if out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; pass a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    text = comparison.markdown(result)
    write_atomic(out_dir / "compare.md", text)
    write_atomic(out_dir / "compare.json", dumps_json(result, indent=2) + "\n")
    figures = comparison.draw(entries, result, out_dir)
    for note in notes + result["notes"]:
        print(f"note: {note}")
    print(text)
    print(f"table: {out_dir / 'compare.md'} (and compare.json)")
    for figure in figures:
        print(f"figure: {figure}")
    return result

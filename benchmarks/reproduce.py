"""Regenerate the results tables of docs/ from the code as it is, over several seeds, stamped with where they came from.

    python benchmarks/reproduce.py ram --cells mnist-ram6 translated-ram6 --seeds 0 1 2   # docs/RAM.md's table
    python benchmarks/reproduce.py captioning --cells att noatt                         # docs/CAPTIONING.md's table
    python benchmarks/reproduce.py variance                 # REINFORCE variance study: table and full-size figure
    python benchmarks/reproduce.py benchmarks --which dqn_cartpole a2c_cartpole          # the *_vs_sb3.py scripts
    python benchmarks/reproduce.py atari /work/runs/pong-a2c                             # docs/ATARI.md's curve
    python benchmarks/reproduce.py classic                  # benchmarks/classic_control.py's run(seeds, out_dir)
    python benchmarks/reproduce.py ram --dry-run            # the commands only; nothing runs, nothing is written
    python benchmarks/reproduce.py ram --table-only         # the table again from docs/results/ram.json

Each subcommand writes OUT/NAME.json (every seed's numbers and the commands) and OUT/NAME.md (the Markdown table),
plus figures, OUT being docs/results/ (`--out` for another place). With the default OUT and the full budget the table
also replaces the block between `<!-- reproduce.py NAME -->` and `<!-- /reproduce.py NAME -->` in its docs page.
Every result is stamped with the commit, whether the tree was dirty (and which files), the date, the machine (CPU
model, cores, torch version, load average at start: busy or idle) and the exact commands. Each cell of a table is
one `rl-lab train CONFIG ... --seeds S` experiment under RUNS/NAME/CELL (`--runs`, default runs/reproduce), trained
one run at a time; running the same command again skips the seeds that finished (in RUNS, or recorded in the JSON
by the same code with the same overrides) and adds new ones, so a table can be filled cell by cell (`--cells`, shell
patterns) and across sessions. Cells kept from earlier invocations keep their own stamps; the
table marks the cells that were not run with the current commit's code (CODE_PATHS: a docs-only commit keeps a cell
current). Over the seeds: the mean with its 95 % stratified bootstrap CI (rl_lab.stats; with 3 seeds the interval is
the seeds' range).

Budgets come from the configs (epochs for the supervised tasks, the documented command's steps for the variance
study); `--budget 0.1` scales them for a quick check (then OUT defaults to RUNS/budget-0.1, so no docs table is
overwritten by a quick check's numbers). tests/test_reproduce.py reruns the RAM 28x28 cell at the budget recorded in
docs/results/ci/ram.json and fails when it no longer lands within that record's confidence interval.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rl_lab import stats
from rl_lab.experiments import format_seeds, parse_seeds
from rl_lab.fileio import dumps_json, write_atomic

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DEFAULT_OUT = DOCS / "results"
DEFAULT_RUNS = ROOT / "runs" / "reproduce"
COMMON = ("device=cpu", "torch_threads=1", "logger.wandb.mode=disabled")  # every training run: CPU, 1 thread
BUSY_LOAD = 0.5  # 1-minute load average at start above which the machine counts as busy
CODE_PATHS = ("rl_lab/", "agents/", "envs/", "configs/", "pyproject.toml")  # what a number depends on
STAMP_FILE = "reproduce.json"  # beside experiment.json: each seed's stamp, taken when reproduce.py started it


class Problem(Exception):
    """A mistake in the command line or the inputs: one line on stderr, exit 2."""


# ------------------------------------------------------------------------------------------------ stamps


def _git(*args: str) -> str:
    found = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return found.stdout.rstrip("\n") if found.returncode == 0 else ""  # not strip(): status lines start with " "


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    import torch  # here: the --help and bad-input paths stay fast

    return {
        "cpu": cpu,
        # seed 0 of one commit differed between machines that all read "AMD EPYC": the kernels torch picks may differ
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": importlib.metadata.version("torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_1min_at_start": round(load, 2),
        "state_at_start": "busy" if load > BUSY_LOAD else "idle",
    }


def stamp() -> dict:
    """Where a number comes from: the commit, the uncommitted changes (files and a hash of the diff), when, where."""
    dirty = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=normal").splitlines()]
    diff = _git("diff", "HEAD")
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(dirty),
        "dirty_files": dirty,
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
    }


def stamp_line(s: dict) -> str:
    m = s["machine"]
    dirty = f", tree dirty ({len(s['dirty_files'])} changed files)" if s["dirty"] else ", clean tree"
    return (
        f"commit `{s['commit'][:10]}`{dirty}, {s['date']}, {m['cpu']} ({m['cores']} cores), torch {m['torch']}, "
        f"load {m['load_1min_at_start']} at start ({m['state_at_start']})"
    )


def _shell(argv: list[str]) -> str:
    return shlex.join(str(a) for a in argv)


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ------------------------------------------------------------------------------------------------ experiments


@dataclass(frozen=True)
class Cell:
    """One `rl-lab train CONFIG OVERRIDES --seeds S` experiment and what to read from each seed's summary.json."""

    key: str
    config: str
    overrides: tuple[str, ...]
    read: Callable[[dict], dict[str, float]]
    budget_key: str = "train.epochs"  # what --budget scales
    before: tuple[tuple[str, ...], ...] = ()  # rl-lab commands that must have run first ({runs}: this table's runs)
    made: tuple[str, ...] = ()  # what each `before` command leaves (skipped when it exists)


@dataclass
class Context:
    name: str
    seeds: list[int]
    budget: float
    out: Path
    runs: Path
    dry_run: bool
    argv: list[str]
    stamp: dict = field(default_factory=stamp)

    @property
    def suffix(self) -> str:
        return "" if self.budget == 1 else f"-budget{self.budget:g}"


def budget_overrides(config: str, overrides: list[str], key: str, budget: float) -> tuple[list[str], int]:
    """The overrides with `key` scaled by `budget` (at least 1), and the scaled value."""
    from rl_lab.loader import load_config

    node = load_config(ROOT / config, overrides)
    for part in key.split("."):
        node = getattr(node, part)
    if budget == 1:
        return overrides, int(node)
    scaled = max(1, round(int(node) * budget))
    return [*overrides, f"{key}={scaled}"], scaled


def _python() -> str:
    """This interpreter as the commands show it: relative to the repository when it is the venv's (not resolved:
    the venv's python is a link to the base interpreter, which lacks the venv's packages)."""
    here = Path(sys.executable).absolute()
    return os.path.relpath(here, ROOT) if here.is_relative_to(ROOT) else str(here)


def rl_lab(argv: list[str], dry_run: bool) -> int:
    """Run `rl-lab ARGV` (as `python -m rl_lab`, this interpreter) in the repository; its output is ours."""
    print(f"$ {_shell(['rl-lab', *argv])}", flush=True)
    if dry_run:
        return 0
    return subprocess.run([sys.executable, "-m", "rl_lab", *argv], cwd=ROOT).returncode


def _fill(text: str, ctx: Context) -> str:
    """{runs} -> this table's run directory, {suffix} -> the budget's suffix (str.format would trip on YAML braces)."""
    return text.replace("{runs}", _rel(ctx.runs / ctx.name)).replace("{suffix}", ctx.suffix)


def recorded_seeds(entry: dict | None, cell: Cell, overrides: list[str], ctx: Context) -> dict[int, tuple]:
    """Seeds of the cell's JSON entry made by this code with these overrides: seed -> (its numbers, its stamp).
    They count as finished, so a table fills across sessions whose run directories do not survive."""
    if not entry or entry.get("legacy") or (entry.get("config"), entry.get("overrides")) != (cell.config, overrides):
        return {}
    if entry.get("budget", 1) != ctx.budget:
        return {}
    found = {}
    for i, seed in enumerate(entry["seeds"]):
        s = entry["stamps"].get(str(seed))
        if seed in ctx.seeds and s is not None and same_code(s, ctx.stamp["commit"]):
            found[seed] = ({name: v[i] for name, v in entry["values"].items()}, s)
    return found


def run_cell(cell: Cell, ctx: Context, previous: dict | None = None) -> dict:
    """Train the cell's unfinished seeds, one run at a time, and read every seed's numbers. A seed counts as
    finished when its run directory has a summary or when `previous` (the cell's JSON entry) recorded it with this
    code."""
    commands = []
    for before, made in zip(cell.before, cell.made, strict=True):
        argv = [_fill(a, ctx) for a in before]
        if argv[0] == "train":
            argv = ["train", argv[1], *budget_overrides(argv[1], argv[2:], "train.epochs", ctx.budget)[0]]
        commands.append(_shell(["rl-lab", *argv]))
        if not (ROOT / _fill(made, ctx)).exists() and rl_lab(argv, ctx.dry_run) != 0:
            return {"key": cell.key, "failure": f"{commands[-1]} failed", "commands": commands}
    overrides = [_fill(o, ctx) for o in (*cell.overrides, *COMMON)]
    overrides, budget_value = budget_overrides(cell.config, overrides, cell.budget_key, ctx.budget)
    exp = ctx.runs / ctx.name / f"{cell.key}{ctx.suffix}"
    base = ["train", cell.config, *overrides, f"run.dir={_rel(exp)}"]
    commands.append(_shell(["rl-lab", *base, "--seeds", format_seeds(ctx.seeds)]))
    stamps = _read_json(exp / STAMP_FILE) or {}
    recorded = recorded_seeds(previous, cell, overrides, ctx)
    for seed in ctx.seeds:  # one invocation per seed, so each seed's stamp is that of its own start
        if (exp / f"seed-{seed}" / "summary.json").is_file():
            continue
        if seed in recorded:
            print(f"{cell.key}: seed {seed} kept from the JSON (made by this code at {recorded[seed][1]['commit']})")
            continue
        stamps[str(seed)] = stamp()
        keep_stamps(exp, stamps, ctx.dry_run)
        rl_lab([*base, "--seeds", str(seed)], ctx.dry_run)
        keep_stamps(exp, stamps, ctx.dry_run)  # a new experiment's first seed: now that its directory exists
    values: dict[str, list[float]] = {}
    done, failed = [], []
    for seed in ctx.seeds:
        summary = _read_json(exp / f"seed-{seed}" / "summary.json")
        if summary is None and seed in recorded:
            numbers, stamps[str(seed)] = recorded[seed]
        elif summary is None:
            failed.append(seed)
            continue
        else:
            numbers = cell.read(summary)
        done.append(seed)
        for name, value in numbers.items():
            values.setdefault(name, []).append(float(value))
    entry = {
        "key": cell.key,
        "config": cell.config,
        "overrides": overrides,
        "budget": ctx.budget,
        cell.budget_key: budget_value,
        "experiment": _rel(exp),
        "commands": commands,
        "seeds": done,
        "failed_seeds": failed,
        "values": values,
        "estimates": {name: estimate(v) for name, v in values.items()},
        "stamps": {str(s): stamps.get(str(s)) for s in done},
    }
    return entry if done else {**entry, "failure": f"no seed finished (failed: {format_seeds(failed)})"}


def keep_stamps(exp: Path, stamps: dict, dry_run: bool) -> None:
    """Write the seeds' stamps beside experiment.json once it exists (an experiment starts only in a new or empty
    directory)."""
    if not dry_run and (exp / "experiment.json").is_file():
        write_atomic(exp / STAMP_FILE, dumps_json(stamps, indent=2) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def estimate(values: list[float]) -> dict:
    """The mean over seeds with its 95 % stratified bootstrap CI (one task: the seeds of one cell)."""
    return stats.interval_estimates([np.array(values, dtype=float)])["mean"].to_dict()


def same_code(s: dict, commit: str) -> bool:
    """Whether a seed stamped `s` ran the code of `commit`: its commit's CODE_PATHS equal commit's, and none of them
    was changed in its tree (so a docs-only commit during a long table keeps its cells current)."""
    if any(f.split(" -> ")[-1].startswith(CODE_PATHS) for f in s["dirty_files"]):
        return False
    if s["commit"] == commit:
        return True
    unchanged = subprocess.run(["git", "diff", "--quiet", s["commit"], commit, "--", *CODE_PATHS], cwd=ROOT)
    return unchanged.returncode == 0


def at_commit(entry: dict, commit: str) -> bool:
    """Whether every seed of a cell was trained by reproduce.py with the code of `commit`."""
    found = entry.get("stamps") or {}
    return bool(found) and all(s is not None and same_code(s, commit) for s in found.values())


def fmt(entry: dict | None, metric: str, digits: int, ci: bool = True) -> str:
    """`mean [low, high]` over the cell's seeds (just the value for one seed)."""
    if not entry or metric not in entry.get("estimates", {}):
        return "—"
    e = entry["estimates"][metric]
    if len(entry["seeds"]) == 1 or not ci:
        return f"{e['point']:.{digits}f}"
    return f"{e['point']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def seeds_note(entry: dict, commit: str) -> str:
    """The footnote marks of a cell: how many seeds, at which budget, and whether it was run at this commit."""
    marks = []
    if entry.get("legacy"):
        return " †"
    if len(entry["seeds"]) != 3:
        marks.append(f"{len(entry['seeds'])} seed{'s' if len(entry['seeds']) != 1 else ''}")
    if entry.get("budget", 1) != 1:
        marks.append(f"budget ×{entry['budget']:g}")
    if not at_commit(entry, commit):
        marks.append("not at this commit")
    return f" — {', '.join(marks)}" if marks else ""


def legend(record: dict) -> str:
    """What the table's numbers and marks mean (the † sentence only while some cell has that mark)."""
    text = (
        "Mean over seeds [95 % stratified bootstrap CI; with 3 seeds this is the range of the seeds]. Without a mark: "
        "seeds 0-2 trained with this commit's code (rl_lab/, agents/, envs/, configs/)."
    )
    if any(entry.get("legacy") for entry in record["cells"].values()):
        text += " † not rerun at this commit: one seed (0), the table before issue 19, made by older code."
    return text


def select(cells: list[Cell], patterns: list[str] | None) -> list[Cell]:
    if not patterns:
        return cells
    patterns = [p for pattern in patterns for p in pattern.split(",") if p]
    chosen = [c for c in cells if any(fnmatch.fnmatchcase(c.key, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(c.key, p) for c in cells)]
    if unknown:
        raise Problem(f"--cells {' '.join(unknown)}: no such cell; cells: {' '.join(c.key for c in cells)}")
    return chosen


def run_table(ctx: Context, cells: list[Cell], chosen: list[Cell], render: Callable[[dict, str], str]) -> int:
    """Run the chosen cells, merge them into OUT/NAME.json (cells not chosen keep their earlier entries) and write
    OUT/NAME.md; update the docs page's block when writing into docs/results at the full budget."""
    path = ctx.out / f"{ctx.name}.json"
    previous = (_read_json(path) or {}).get("cells", {})
    ran = {}
    for cell in chosen:
        print(f"== {ctx.name}: {cell.key}", flush=True)
        ran[cell.key] = run_cell(cell, ctx, previous.get(cell.key))
    if ctx.dry_run:
        return 0
    entries = {**(_read_json(path) or {}).get("cells", {}), **ran}  # read now: another invocation may have written
    order = [c.key for c in cells]
    entries = dict(sorted(entries.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    record = {"table": ctx.name, "last_invocation": {"command": _shell(ctx.argv), **ctx.stamp}, "cells": entries}
    write_outputs(ctx, record, render(record, ctx.stamp["commit"]))
    failed = [c.key for c in chosen if "failure" in entries[c.key] or entries[c.key]["failed_seeds"]]
    if failed:
        print(f"reproduce.py: cells with failed seeds: {' '.join(failed)} (their output is above)", file=sys.stderr)
    return 1 if failed else 0


def write_outputs(ctx: Context, record: dict, markdown: str) -> None:
    ctx.out.mkdir(parents=True, exist_ok=True)
    write_atomic(ctx.out / f"{ctx.name}.json", dumps_json(record, indent=2) + "\n")
    write_atomic(ctx.out / f"{ctx.name}.md", markdown)
    print(f"wrote {_rel(ctx.out / ctx.name)}.json and .md")
    doc = DOCS_PAGES.get(ctx.name)
    if doc and ctx.out.resolve() == DEFAULT_OUT.resolve() and ctx.budget == 1:
        update_doc(DOCS / doc, ctx.name, markdown)


def update_doc(page: Path, name: str, markdown: str) -> None:
    begin, end = f"<!-- reproduce.py {name} -->", f"<!-- /reproduce.py {name} -->"
    text = page.read_text()
    if begin not in text or end not in text:
        print(f"note: {_rel(page)} has no {begin} block; the table is in {_rel(DEFAULT_OUT / name)}.md")
        return
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_atomic(page, f"{head}{begin}\n{markdown.rstrip()}\n{end}{tail}")
    print(f"updated the table in {_rel(page)}")


def provenance(record: dict, commit: str) -> list[str]:
    """Markdown lines: per cell run by reproduce.py, its seeds, stamp and command; then the cells not rerun."""
    lines = ["", "Cells and their commands (every seed's numbers are in the JSON beside this table):", ""]
    legacy = []
    for key, entry in record["cells"].items():
        if entry.get("legacy"):
            legacy.append(key)
        elif not entry.get("estimates"):
            lines.append(f"- `{key}`: {entry.get('failure', 'no result')}. `{' ; '.join(entry['commands'])}`")
        else:
            stamps = [s for s in entry["stamps"].values() if s]
            where = stamp_line(stamps[0]) if stamps else "trained before reproduce.py stamped its runs"
            state = "" if at_commit(entry, commit) else " **Not run at this commit.**"
            failed = f" (failed: {format_seeds(entry['failed_seeds'])})" if entry["failed_seeds"] else ""
            lines.append(
                f"- `{key}`: seeds {format_seeds(entry['seeds'])}{failed}; {where}.{state} "
                f"`{' ; '.join(entry['commands'])}`"
            )
    if legacy:
        lines.append(
            f"- † not rerun at this commit: {', '.join(f'`{k}`' for k in legacy)}. Each reruns with "
            f"`python benchmarks/reproduce.py {record['table']} --cells KEY` (its `rl-lab train` command: the JSON)."
        )
    return lines


# ------------------------------------------------------------------------------------------------ RAM

C60 = "data.kwargs.canvas_size=60"
RAM_DATA = [  # key, label, RAM config, its extra overrides, the data overrides of the baselines (mnist_cnn.yaml)
    ("mnist", "28×28 digits (3,600 / 400 / 1,000)", "configs/ram_mnist.yaml", ("train.epochs=100",), ()),
    ("translated", "translated 60×60", "configs/ram_translated.yaml", (), ("data.name=translated_mnist", C60)),
    ("cluttered4", "cluttered 60×60, 4 pieces", "configs/ram_cluttered.yaml", (), ("data.name=cluttered_mnist", C60)),
    (
        "cluttered8",
        "cluttered 60×60, 8 pieces",
        "configs/ram_cluttered.yaml",
        ("data.kwargs.clutter=8",),
        ("data.name=cluttered_mnist", C60, "data.kwargs.clutter=8"),
    ),
    (
        "cluttered100",
        "cluttered 100×100, 8 pieces",
        "configs/ram_cluttered100.yaml",
        (),
        ("data.name=cluttered_mnist", "data.kwargs.canvas_size=100", "data.kwargs.clutter=8"),
    ),
]
RAM_MODELS = [("mlp", "MLP 256×256"), ("cnn", "CNN (LeNet)"), ("ram4", "RAM 4"), ("ram6", "RAM 6"), ("ram8", "RAM 8")]
BASELINE = ("task.augment.crop_padding=0", "train.epochs=100")  # configs/mnist_cnn.yaml, no augmentation
MLP = ("task.encoder.name=mlp", "task.encoder.kwargs={hidden_sizes: [256, 256]}")


def _ram_read(summary: dict) -> dict[str, float]:
    return {"error": 100 * summary["test_error"], "error_mean_location": 100 * summary["test_error_mean_location"]}


def _baseline_read(summary: dict) -> dict[str, float]:
    return {"error": 100 * (1 - summary["test_acc"])}


def ram_cells() -> list[Cell]:
    cells = []
    for data, _, config, ram_extra, base_data in RAM_DATA:
        cells.append(Cell(f"{data}-mlp", "configs/mnist_cnn.yaml", (*BASELINE, *base_data, *MLP), _baseline_read))
        cells.append(Cell(f"{data}-cnn", "configs/mnist_cnn.yaml", (*BASELINE, *base_data), _baseline_read))
        for glimpses in (4, 6, 8):
            extra = () if glimpses == 6 else (f"task.glimpses={glimpses}",)
            # no glimpse figures after each epoch: they cost a quarter of the time and change no number
            overrides = (*ram_extra, *extra, "task.figure_examples=0")
            cells.append(Cell(f"{data}-ram{glimpses}", config, overrides, _ram_read))
    return cells


def render_ram(record: dict, commit: str) -> str:
    cells = record["cells"]
    head = "| data | " + " | ".join(label for _, label in RAM_MODELS) + " |"
    lines = [head, "|---|" + "---:|" * len(RAM_MODELS)]
    for data, label, *_ in RAM_DATA:
        row = []
        for model, _ in RAM_MODELS:
            entry = cells.get(f"{data}-{model}")
            if not entry or not entry.get("estimates"):
                row.append("not run")
                continue
            text = fmt(entry, "error", 2)
            if "error_mean_location" in entry.get("estimates", {}):
                text += f" ({fmt(entry, 'error_mean_location', 2, ci=False)})"
            row.append(text + seeds_note(entry, commit))
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Test error (%), 100 epochs per cell unless a budget is marked, best epoch on validation; RAM: Monte Carlo "
        f"(M = 10), mean-location in parentheses. {legend(record)}",
    ]
    return "\n".join(lines + provenance(record, commit)) + "\n"


# ------------------------------------------------------------------------------------------------ captioning

CAPTION_BEAMS = ("1", "3", "5")
CAPTION_MODELS = [  # key, model, encoder
    ("noatt", "no attention (Show and Tell)", "random init, trained"),
    ("att", "attention", "random init, trained"),
    ("digits_finetune", "attention", "digits-pretrained, fine-tuned"),
    ("random_frozen", "attention", "random init, frozen"),
    ("digits_frozen", "attention", "digits-pretrained, frozen"),
]
DIGITS_PRETRAIN = (
    "train",
    "configs/mnist_cnn.yaml",
    "data.name=digits",
    "data.kwargs={}",
    "task.encoder.name=vgg",
    "task.encoder.kwargs={channels: [16, 32, 64], convs_per_block: 1, hidden_sizes: []}",
    "train.epochs=15",
    *COMMON,
    "run.dir={runs}/digits{suffix}",
)
DIGITS_EXPORT = ("export-encoder", "{runs}/digits{suffix}", "{runs}/digits_encoder{suffix}")


def _caption_read(summary: dict) -> dict[str, float]:
    found = {}
    for beam, scores in summary["test_by_beam"].items():
        found.update({f"b{beam}/{m}": scores[m] for m in ("bleu1", "bleu4", "cider")})
    found.update({f"novel/{m}": summary["novel"][m] for m in ("bleu4", "cider")})
    return found


def caption_cells() -> list[Cell]:
    init = "task.encoder.init={runs}/digits_encoder{suffix}"
    made = ("{runs}/digits{suffix}/summary.json", "{runs}/digits_encoder{suffix}")
    before = {"before": (DIGITS_PRETRAIN, DIGITS_EXPORT), "made": made}
    att = "configs/shapes_caption.yaml"
    return [
        Cell("noatt", "configs/shapes_caption_noattention.yaml", (), _caption_read),
        Cell("att", att, (), _caption_read),
        Cell("digits_finetune", att, (init,), _caption_read, **before),
        Cell("random_frozen", att, ("task.encoder.freeze=true",), _caption_read),
        Cell("digits_frozen", att, (init, "task.encoder.freeze=true"), _caption_read, **before),
    ]


def render_captioning(record: dict, commit: str) -> str:
    cells = record["cells"]
    lines = [
        "| model | encoder | beam | BLEU-1 | BLEU-4 | CIDEr | novel BLEU-4 | novel CIDEr |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, model, encoder in CAPTION_MODELS:
        entry = cells.get(key)
        for beam in CAPTION_BEAMS:
            if not entry or not entry.get("estimates"):
                lines.append(f"| {model} | {encoder} | {beam} | not run | | | | |")
                continue
            novel = beam == "3"  # the novel split is scored at the config's beam, 3
            row = [fmt(entry, f"b{beam}/bleu1", 3), fmt(entry, f"b{beam}/bleu4", 3), fmt(entry, f"b{beam}/cider", 2)]
            row += [fmt(entry, "novel/bleu4", 3) if novel else "", fmt(entry, "novel/cider", 2) if novel else ""]
            mark = seeds_note(entry, commit) if beam == "1" else ""
            lines.append(f"| {model} | {encoder}{mark} | {beam} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"Test split (500 scenes), best-validation-CIDEr weights, 8 epochs unless a budget is marked. {legend(record)}",
    ]
    return "\n".join(lines + provenance(record, commit)) + "\n"


# ------------------------------------------------------------------------------------------------ variance study

VARIANCE_CONFIG = "configs/cartpole_reinforce.yaml"
VARIANCE_STEPS = 100_000  # `rl-lab variance-study`'s default --steps: the README's command


def variance(ctx: Context) -> None:
    from rl_lab.commands.variance_study import OPTIONS

    steps = max(1, round(VARIANCE_STEPS * ctx.budget))
    runs, commands, studies, stamps = ctx.runs / ctx.name, [], {}, {}
    for seed in ctx.seeds:
        out = runs / f"seed-{seed}{ctx.suffix}"
        argv = ["variance-study", VARIANCE_CONFIG, f"seed={seed}", *COMMON, "--out", _rel(out), "--steps", str(steps)]
        commands.append(_shell(["rl-lab", *argv]))
        if not (out / "variance.json").is_file():
            if out.is_dir() and not ctx.dry_run:
                shutil.rmtree(out)  # an interrupted study of ours: the command needs an empty directory
            started = stamp()
            if rl_lab(argv, ctx.dry_run) != 0:
                raise Problem(f"{commands[-1]} failed; its output is above")
            if not ctx.dry_run:  # written after the study, which starts only in an empty directory
                write_atomic(out / STAMP_FILE, dumps_json(started, indent=2) + "\n")
        if not ctx.dry_run:
            studies[seed] = json.loads((out / "variance.json").read_text())
            stamps[str(seed)] = _read_json(out / STAMP_FILE)
    if ctx.dry_run:
        return
    ctx.out.mkdir(parents=True, exist_ok=True)
    figures = []
    for i, seed in enumerate(ctx.seeds):
        name = "variance_study.png" if i == 0 else f"variance_study_seed{seed}.png"
        shutil.copyfile(runs / f"seed-{seed}{ctx.suffix}" / "variance_study.png", ctx.out / name)
        figures.append(name)
    snapshots = min(len(s["snapshots"]) for s in studies.values())
    table: dict = {"snapshot_steps": [], "variance": {}, "relative_variance": {}, "final_return": {}}
    for i in range(snapshots):
        table["snapshot_steps"].append([studies[s]["snapshots"][i]["step"] for s in ctx.seeds])
    for key, _, _ in OPTIONS:
        for name in ("variance", "relative_variance"):
            per = [[studies[s]["snapshots"][i][key][name] for s in ctx.seeds] for i in range(snapshots)]
            table[name][key] = [{"seeds": v, **estimate(v)} for v in per]
        finals = [studies[s]["final_eval"][key]["return_mean"] for s in ctx.seeds]
        table["final_return"][key] = {"seeds": finals, **estimate(finals)}
    record = {
        "table": ctx.name,
        "last_invocation": {"command": _shell(ctx.argv), **ctx.stamp},
        "steps": steps,
        "seeds": ctx.seeds,
        "commands": commands,
        "stamps": stamps,
        "figures": figures,
        **table,
    }
    write_outputs(ctx, record, render_variance(record, OPTIONS))


def render_variance(record: dict, options: list) -> str:
    def cell(e: dict) -> str:
        if len(e["seeds"]) == 1:
            return f"{e['point']:.3g}"
        return f"{e['point']:.3g} [{e['low']:.3g}, {e['high']:.3g}]"

    steps = [int(np.mean(s)) for s in record["snapshot_steps"]]
    lines = [
        "| option | " + " | ".join(f"tr Cov[g], step ≈{s:,}" for s in steps) + " | final return |",
        "|---|" + "---:|" * (len(steps) + 1),
    ]
    for key, label, _ in options:
        cells = [cell(e) for e in record["variance"][key]]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {cell(record['final_return'][key])} |")
    stamps = [s for s in record["stamps"].values() if s]
    lines += [
        "",
        f"REINFORCE on CartPole-v1, {record['steps']:,} env steps per option, "
        f"seed{'s' if len(record['seeds']) > 1 else ''} {format_seeds(record['seeds'])}: "
        "the policy-gradient variance across 20 batches at fixed snapshots of the learned-baseline run (mean over "
        "seeds [95 % stratified bootstrap CI]), and each option's final greedy return. Figure: "
        f"`{record['figures'][0]}` (seed {record['seeds'][0]}).",
        "",
        f"Made at {stamp_line(stamps[0]) if stamps else 'an unrecorded commit'}. Commands:",
        "",
        *(f"    {c}" for c in record["commands"]),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ benchmarks

BENCHMARKS = {  # name -> the script's arguments; each takes --seeds and --out and has a --quick smoke test
    "dqn_cartpole": ("benchmarks/dqn_cartpole_vs_sb3.py",),
    "a2c_cartpole": ("benchmarks/onpolicy_cartpole_vs_sb3.py", "--algo", "a2c"),
    "ppo_cartpole": ("benchmarks/onpolicy_cartpole_vs_sb3.py", "--algo", "ppo"),
}


def benchmarks(ctx: Context, which: list[str]) -> None:
    """Each script trains every variant over the seeds and judges them (benchmarks/seed_stats.py); its JSON goes to
    OUT/NAME.json and its statistics table into OUT/benchmarks.md. A budget below 1 runs the scripts' --quick."""
    from seed_stats import table as stats_table

    python = _python()
    sections, record = [], {"table": ctx.name, "last_invocation": {"command": _shell(ctx.argv), **ctx.stamp}}
    for name in which:
        script, *options = BENCHMARKS[name]
        if not (ROOT / script).is_file():
            raise Problem(f"{script} does not exist; --which another benchmark")
        out = ctx.out / f"{Path(script).stem}{'_' + options[-1] if options else ''}.json"
        argv = [python, script, *options, "--seeds", *map(str, ctx.seeds), "--out", _rel(out)]
        argv += ["--quick"] if ctx.budget < 1 else []
        print(f"$ {_shell(argv)}", flush=True)
        if ctx.dry_run:
            continue
        ctx.out.mkdir(parents=True, exist_ok=True)
        run_stamp = stamp()
        code = subprocess.run(argv, cwd=ROOT).returncode
        result = _read_json(out)
        if result is None:
            raise Problem(f"{_shell(argv)} exited {code} without writing {_rel(out)}")
        record[name] = {"command": _shell(argv), "json": _rel(out), "exit": code, **run_stamp}
        quick = " (`--quick`: a smoke test of the pipeline; its numbers mean nothing)" if ctx.budget < 1 else ""
        sections += [f"### {name}{quick}", "", stats_table(result["statistics"], "(a)"), ""]
        sections += [f"{stamp_line(run_stamp)}. `{_shell(argv)}` (exit {code}; every trial in `{out.name}`)", ""]
    if not ctx.dry_run:
        write_outputs(ctx, record, "\n".join(sections))


# ------------------------------------------------------------------------------------------------ Atari


def atari(ctx: Context, run_dirs: list[Path]) -> None:
    """The curve of each run (benchmarks/atari_curve.py, with RUN_DIR-clock.csv when it exists) and a table of where
    each run stands; over several runs of one game, the mean of their last evaluations with its CI."""
    python = _python()
    rows, record = [], {"table": ctx.name, "last_invocation": {"command": _shell(ctx.argv), **ctx.stamp}, "runs": {}}
    last_evals: dict[str, list[float]] = {}
    for run in run_dirs:
        figure = ctx.out / f"{run.name}_curve.png"
        argv = [python, "benchmarks/atari_curve.py", str(run), "--out", _rel(figure)]
        clock = run.parent / f"{run.name}-clock.csv"
        argv += ["--clock", str(clock)] if clock.is_file() else []
        print(f"$ {_shell(argv)}", flush=True)
        if ctx.dry_run:
            continue
        ctx.out.mkdir(parents=True, exist_ok=True)
        if subprocess.run(argv, cwd=ROOT).returncode != 0:
            raise Problem(f"{_shell(argv)} failed; its output is above")
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        evals = [r for r in metrics if "eval/return_mean" in r]
        train = [r for r in metrics if "train/episode_return" in r]
        config = (run / "config.yaml").read_text().splitlines()
        env = next((line.split(":", 1)[1].strip() for line in config if line.strip().startswith("id:")), "?")
        entry = {
            "env": env,
            "env_steps": metrics[-1]["step"] if metrics else 0,
            "last_train_return": train[-1]["train/episode_return"] if train else None,
            "evaluations": [[r["step"], r["eval/return_mean"], r.get("eval/return_std")] for r in evals],
            "finished": (run / "summary.json").is_file(),
            "figure": figure.name,
            "command": _shell(argv),
        }
        record["runs"][str(run)] = entry
        if evals:
            last_evals.setdefault(env, []).append(evals[-1]["eval/return_mean"])
        last = "—"
        if evals:
            e = evals[-1]
            last = f"{e['eval/return_mean']:.1f} ± {e.get('eval/return_std', 0):.1f} (at {e['step']:,} steps)"
        train_text = "—" if entry["last_train_return"] is None else f"{entry['last_train_return']:.1f}"
        state = "finished" if entry["finished"] else "in progress"
        rows.append(f"| `{run.name}` | {env} | {entry['env_steps']:,} ({state}) | {train_text} | {last} |")
    if ctx.dry_run:
        return
    record["last_eval_over_runs"] = {env: {"runs": v, **estimate(v)} for env, v in last_evals.items()}
    lines = ["| run | env | env steps | train return (recent) | last evaluation |", "|---|---|---|---|---|", *rows]
    for env, e in record["last_eval_over_runs"].items():
        if len(e["runs"]) > 1:
            over = f"{e['point']:.1f} [{e['low']:.1f}, {e['high']:.1f}]"
            lines += ["", f"{env}: last evaluation over {len(e['runs'])} runs {over} (mean [95 % bootstrap CI])."]
    figures = ", ".join(f"`{r['figure']}`" for r in record["runs"].values())
    lines += ["", f"Read at {stamp_line(ctx.stamp)}. Figures: {figures}."]
    write_outputs(ctx, record, "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------ classic control

CLASSIC = ROOT / "benchmarks" / "classic_control.py"


def classic(ctx: Context, only: list[str] | None) -> None:
    """benchmarks/classic_control.py's `run(seeds, out_dir) -> dict` (with `budget=` and `only=` when it takes them);
    its dict goes to OUT/classic.json, its `markdown` (else the dict) to OUT/classic.md."""
    spec = importlib.util.spec_from_file_location("classic_control", CLASSIC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise Problem(f"{_rel(CLASSIC)} has no run(seeds, out_dir) function")
    out_dir = ctx.runs / ctx.name / f"run{ctx.suffix}"
    takes = inspect.signature(module.run).parameters
    kwargs = {"budget": ctx.budget} if "budget" in takes else {}
    if only:
        if "only" not in takes:
            raise Problem(f"{_rel(CLASSIC)}'s run() takes no `only`; leave out --only")
        kwargs["only"] = only
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    call = f"classic_control.run({ctx.seeds}, {_rel(out_dir)!r}{extra})"
    print(f"$ {call}", flush=True)
    if ctx.dry_run:
        return
    result = module.run(ctx.seeds, out_dir, **kwargs)
    record = {"table": ctx.name, "last_invocation": {"command": _shell(ctx.argv), **ctx.stamp}, "call": call}
    record["result"] = result
    if ctx.budget != 1 and "budget" not in kwargs:
        record["note"] = "run() takes no budget: it ran at its own budget"
    body = result.get("markdown") if isinstance(result, dict) else None
    body = body or "```json\n" + dumps_json(result, indent=2) + "\n```"
    write_outputs(ctx, record, f"{body.rstrip()}\n\n{stamp_line(ctx.stamp)}. `{call}`\n")


# ------------------------------------------------------------------------------------------------ command line

DOCS_PAGES = {"ram": "RAM.md", "captioning": "CAPTIONING.md", "variance": None, "benchmarks": None, "atari": None}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as the lab's commands do
        raise Problem(message)


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="reproduce.py", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="table", required=True, parser_class=_Parser)
    common = _Parser(add_help=False)
    common.add_argument("--seeds", nargs="+", default=["0-2"], help="seeds: 0 1 2, 0-2 or 0-4,9 (default 0-2)")
    common.add_argument("--budget", type=float, default=1.0, help="scale the configs' budgets (a quick check: 0.1)")
    common.add_argument("--out", type=Path, help="where the table, JSON and figures go (default docs/results)")
    common.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="run directories (default runs/reproduce)")
    common.add_argument("--dry-run", action="store_true", help="print the commands; run and write nothing")
    cells = {"ram": ram_cells(), "captioning": caption_cells()}
    for name, found in cells.items():
        p = sub.add_parser(name, parents=[common], help=f"docs/{DOCS_PAGES[name]}'s table")
        p.add_argument("--cells", nargs="+", help="cells to (re)run, shell patterns: " + " ".join(c.key for c in found))
        p.add_argument("--table-only", action="store_true", help="rewrite the table from OUT/NAME.json; run nothing")
    sub.add_parser("variance", parents=[common], help="the REINFORCE variance study, its table and full-size figure")
    p = sub.add_parser("benchmarks", parents=[common], help="the *_vs_sb3.py scripts over seeds, their table")
    p.add_argument("--which", nargs="+", default=list(BENCHMARKS), help="of: " + " ".join(BENCHMARKS))
    p = sub.add_parser("atari", parents=[common], help="benchmarks/atari_curve.py on run directories, their table")
    p.add_argument("run_dirs", nargs="+", type=Path, help="Atari run directories")
    p = sub.add_parser("classic", parents=[common], help="benchmarks/classic_control.py's run(seeds, out_dir)")
    p.add_argument("--only", nargs="+", help="these configs of the suite only (when run() takes `only`)")
    return top


def check(args) -> None:
    """The inputs each subcommand needs, checked before anything runs."""
    if args.table in ("ram", "captioning"):
        select(ram_cells() if args.table == "ram" else caption_cells(), args.cells)
    elif args.table == "benchmarks":
        unknown = [w for w in args.which if w not in BENCHMARKS]
        if unknown:
            raise Problem(f"--which {' '.join(unknown)}: no such benchmark; choose from {' '.join(BENCHMARKS)}")
    elif args.table == "atari":
        for run in args.run_dirs:
            if not (run / "metrics.jsonl").is_file():
                raise Problem(f"{run}: not a run directory (no metrics.jsonl)")
    elif args.table == "classic" and not CLASSIC.is_file():
        raise Problem(f"{_rel(CLASSIC)} does not exist yet: nothing to reproduce for classic control")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser().parse_args(argv)
        if not math.isfinite(args.budget) or args.budget <= 0:
            raise Problem(f"--budget {args.budget}: must be > 0 (1 = the configs' budgets)")
        try:
            seeds = parse_seeds(",".join(args.seeds))
        except Exception as err:
            raise Problem(str(err)) from None
        out = args.out or (DEFAULT_OUT if args.budget == 1 else args.runs / f"budget-{args.budget:g}")
        invocation = [_python(), "benchmarks/reproduce.py", *argv]
        ctx = Context(args.table, seeds, args.budget, out.resolve(), args.runs.resolve(), args.dry_run, invocation)
        check(args)
        print(f"reproduce.py {args.table}: {stamp_line(ctx.stamp)}", flush=True)
        if args.table in ("ram", "captioning"):
            found = ram_cells() if args.table == "ram" else caption_cells()
            render = render_ram if args.table == "ram" else render_captioning
            return run_table(ctx, found, [] if args.table_only else select(found, args.cells), render)
        elif args.table == "variance":
            variance(ctx)
        elif args.table == "benchmarks":
            benchmarks(ctx, args.which)
        elif args.table == "atari":
            atari(ctx, [d.resolve() for d in args.run_dirs])
        else:
            classic(ctx, args.only)
    except Problem as err:
        print(f"reproduce.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one logging path of every run: a console progress bar, metrics.jsonl and Weights & Biases.

metrics.jsonl is the run's own deterministic record (same seed on CPU -> byte-identical file); W&B is a
best-effort mirror that may fail or be unreachable without ever stopping training.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rl_lab.config import WandbConfig
from rl_lab.errors import UserError
from rl_lab.fileio import dumps_json, write_atomic

WANDB_MODES = ("online", "offline", "disabled")


def resolve_wandb_mode(mode: str | None) -> str:
    """Turn the configured mode into a wandb.init mode; "auto" (or None) goes online only with credentials."""
    if mode in WANDB_MODES:
        return mode
    if mode not in (None, "auto"):
        raise UserError(f"logger.wandb.mode must be one of auto, online, offline, disabled; got {mode!r}")
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    # wandb's own lookup: WANDB_API_KEY / identity token file, then netrc, then its settings files.
    host = wandb_setup.singleton().settings.base_url
    try:
        auth = wbauth.authenticate_session(host=host, source="rl-lab", prompt=False, update_session=False)
    except AuthenticationError:
        return "online"  # a key is configured but malformed: wandb.init reports it and the run goes on
    return "online" if auth else "offline"


def _scalar(value: Any) -> Any:
    """numpy scalars and 0-d tensors -> python numbers, so JSON and W&B see plain floats/ints."""
    return value.item() if hasattr(value, "item") else value


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"eval": {"return": 1}} -> {"eval.return": 1}: one W&B summary column per leaf."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _scalar(value)
    return flat


def _one_line(error: Exception) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())  # one line, even for multi-line errors


def _loggable(row: dict, step_metric: str) -> dict:
    """A history row read back from a .wandb file, as it can be logged again: without wandb's own keys (`_step`,
    `_runtime`, ...) and media (their files belong to the old record)."""
    out = {k: v for k, v in row.items() if not k.startswith("_") and not (isinstance(v, dict) and "_type" in v)}
    out.setdefault(step_metric, row["_step"])
    return out


def _truncate(path: Path, lines: int) -> None:
    """Keep the first `lines` lines, those a checkpoint had seen written, so a resumed run re-logs the rest once."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        keep = [line for line in f if line.endswith("\n")][:lines]
    write_atomic(path, "".join(keep))


def run_id(run_dir: Path) -> str:
    """The run's W&B id, made once and kept in run_dir/wandb_id.txt, so a resume or an eval continues the run."""
    id_file = run_dir / "wandb_id.txt"
    if not id_file.exists():
        id_file.write_text(secrets.token_hex(4) + "\n")
    return id_file.read_text().strip()


def init_wandb(
    run_dir: Path,
    config: dict,
    mode: str,
    project: str,
    entity: str | None,
    run_name: str | None,
    options: WandbConfig | None = None,
    rewind_to: int | None = None,
) -> Any:
    """Start the run's W&B run, silently, within `options.init_timeout` seconds, beside any run the caller has open.

    With `rewind_to`, an online run continues its history from that step (wandb's `resume_from`: the steps from
    there on are logged again); offline, a new record of the same run is started, which RunLogger fills with the
    history up to that step. Without it an existing run is continued (`resume="allow"`)."""
    import wandb

    options = options or WandbConfig()
    wandb_id = run_id(run_dir)
    timeout = options.init_timeout
    settings = wandb.Settings(silent=True, console="off", init_timeout=timeout, login_timeout=timeout)
    if rewind_to is None:
        where = {"id": wandb_id, "resume": "allow"}
    elif mode == "online":
        where = {"resume_from": f"{wandb_id}?_step={rewind_to}"}
    else:
        where = {"id": wandb_id}
    return wandb.init(
        project=project,
        entity=entity,
        name=run_name,
        group=options.group,
        tags=list(options.tags) or None,
        job_type=options.job_type,
        notes=options.notes,
        dir=str(run_dir),
        config=config,
        mode=mode,
        reinit="create_new",  # never finish, or log into, a run the caller has open
        settings=settings,
        **where,
    )


def read_wandb_records(path: Path) -> list:
    """The protobuf `Record`s of a .wandb transaction log, up to the first damaged chunk (a process killed mid-write
    leaves a torn tail; what came before it is whole).

    wandb-core writes the file and wandb has no Python reader, so this follows the format its old
    `wandb/sdk/internal/datastore.py` documented: a 7-byte header (b":W&B", magic 0xBEE1, version 0), then 32 KiB
    blocks of chunks, each `<crc32 (seeded with the type byte), uint16 length, uint8 type>` + data; types FULL=1,
    FIRST=2, MIDDLE=3, LAST=4; a block tail shorter than a chunk header is zero padding.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    if data[:7] != struct.pack("<4sHB", b":W&B", 0xBEE1, 0):
        return []
    records, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7 : pos + 7 + length]
        if len(chunk) < length or crc != zlib.crc32(chunk, zlib.crc32(bytes([kind]))):
            break
        pos += 7 + length
        buf += chunk
        if kind in (1, 4):
            try:
                records.append(wandb_internal_pb2.Record.FromString(buf))
            except DecodeError:
                break
            buf = b""
    return records


def record_items(items) -> dict[str, Any]:
    """A record's HistoryItem / SummaryItem / ConfigItem list as {key: value}, nested keys rebuilt as dicts."""
    out: dict[str, Any] = {}
    for item in items:
        *parents, last = [item.key] if item.key else list(item.nested_key)
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = json.loads(item.value_json)
    return out


def wandb_history(path: Path) -> list[dict[str, Any]]:
    """The history rows of a .wandb file (each with its `_step`), in the order they were logged."""
    return [record_items(r.history.item) for r in read_wandb_records(path) if r.HasField("history")]


def _local_records(wandb_dir: Path, wandb_id: str) -> list[Path]:
    """This run's .wandb files under run_dir/wandb (offline and online ones), the newest first."""
    paths = wandb_dir.glob(f"*run-*-{wandb_id}/run-{wandb_id}.wandb")
    return sorted(paths, key=lambda p: p.parent.name.rsplit("-", 2)[-2], reverse=True)  # by their start time


class RunLogger:
    """Writes metrics to metrics.jsonl and W&B and draws the progress bar; W&B failures only warn.

    W&B charts use `step_metric` (env steps for agents, optimiser steps for tasks) as their x-axis. A resumed run
    (`resume_lines` given) continues the same W&B run rewound to `initial_step`, the checkpoint's step, so its
    history ends up equal to metrics.jsonl: online through wandb's `resume_from`; offline as one new record that
    holds the history before that step (the record it replaces is removed at close). Unreachable online, the run
    goes offline into run_dir/wandb after `options.init_timeout` seconds, to be synced later.
    `console=False` (the Python API) draws no progress and sends notices to the `rl_lab` logging logger.
    """

    def __init__(
        self,
        run_dir: Path,
        config: dict,
        *,
        wandb_mode: str | None,
        project: str = "rl-lab",
        entity: str | None = None,
        run_name: str | None = None,
        total_steps: int | None = None,
        progress: bool = True,
        print_every: float = 30.0,
        resume_lines: int | None = None,
        initial_step: int = 0,
        options: WandbConfig | None = None,
        step_metric: str = "step",
        console: bool = True,
    ) -> None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        if resume_lines is not None:
            _truncate(path, resume_lines)
        self.lines = resume_lines or 0  # lines in metrics.jsonl; a checkpoint stores it to truncate on resume
        self._file = path.open("a", encoding="utf-8")
        self._run = None
        self._console, self.step_metric = console, step_metric
        self.options = options or WandbConfig()
        self._replaced: list[Path] = []  # offline records of this run that the one written now replaces
        mode = resolve_wandb_mode(wandb_mode)
        if mode != "disabled":  # a disabled run never imports wandb
            rewind_to = initial_step if resume_lines is not None else None
            self._start_wandb(run_dir, config, mode, (project, entity, run_name), rewind_to)
        progress = progress and console
        show = progress and sys.stderr.isatty()  # no bar redraws in CI logs ...
        self._bar = tqdm(total=total_steps, unit="step", initial=initial_step, dynamic_ncols=True) if show else None
        # ... but plain lines there, so a run under nohup or in CI is not silent until its final table
        self._plain_every = print_every if progress and not show else None
        self._total, self._last_plain = total_steps, time.monotonic()

    @classmethod
    def for_run(cls, run_dir: Path, config, total_steps: int, state, resume: bool, console: bool = True) -> RunLogger:
        """The logger of a training run (agent or task): W&B and progress settings from `config.logger`; on resume,
        metrics.jsonl is cut back to the lines the checkpoint's loop `state` had written and W&B rewound to its
        step."""
        return cls(
            run_dir,
            config.to_dict(),
            wandb_mode=config.logger.wandb.mode,
            project=config.logger.wandb.project,
            entity=config.logger.wandb.entity,
            run_name=Path(run_dir).name,
            total_steps=total_steps,
            progress=config.logger.progress,
            print_every=config.logger.print_every,
            resume_lines=state.metrics_lines if resume else None,
            initial_step=state.step,
            options=config.logger.wandb,
            step_metric="env_step" if hasattr(config, "env") else "optimizer_step",
            console=console,
        )

    @property
    def wandb_active(self) -> bool:
        """Whether W&B is logging (it may be off, or have failed)."""
        return self._run is not None

    def _notify(self, message: str, level: int = logging.WARNING) -> None:
        """A notice for the user: stderr on the command line, the `rl_lab` logger in the Python API."""
        if self._console:
            print(message, file=sys.stderr)
        else:
            logging.getLogger("rl_lab").log(level, message)

    def _start_wandb(self, run_dir: Path, config: dict, mode: str, names: tuple, rewind_to: int | None) -> None:
        """Start W&B online or offline; an online run that cannot start within the timeout goes offline."""
        import wandb

        try:
            self._run = init_wandb(run_dir, config, mode, *names, self.options, rewind_to)
        except Exception as e:
            if mode != "online":
                return self._wandb_failed(e)
            wandb.teardown()  # the failed attempt holds the run id; offline needs it
            where = run_dir / "wandb"
            self._notify(f"wandb online unavailable ({_one_line(e)}); logging offline to {where} instead "
                         f"(upload later: wandb sync {where}/offline-run-*)")  # fmt: skip
            mode = "offline"
            try:
                self._run = init_wandb(run_dir, config, mode, *names, self.options, rewind_to)
            except Exception as e2:
                return self._wandb_failed(e2)
        if mode == "online":
            self._notify(f"wandb run: {self._run.url}", logging.INFO)
        try:
            self._run.define_metric(self.step_metric)
            self._run.define_metric("*", step_metric=self.step_metric)  # every chart against env (or optimiser) steps
            if rewind_to is not None:
                self._replay(run_dir, mode, rewind_to)
        except Exception as e:
            self._wandb_failed(e)

    def _replay(self, run_dir: Path, mode: str, step: int) -> None:
        """Log again what the rewound run must hold up to the checkpoint's `step`: offline, every row up to it (the
        new record replaces the earlier ones); online, the rows at `step` (wandb keeps those before it). The rows
        come from the newest earlier local record of the run, extras included, when its steps agree with
        metrics.jsonl's, else from metrics.jsonl."""
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rows = [{self.step_metric: m["step"], **{k: v for k, v in m.items() if k != "step"}} for m in lines]
        current = Path(self._run.settings.sync_dir)
        earlier = [p for p in _local_records(run_dir / "wandb", self._run.id) if p.parent != current]
        for record in earlier:
            old = [r for r in wandb_history(record) if r.get("_step", step + 1) <= step]
            if [r["_step"] for r in old] == sorted({r[self.step_metric] for r in rows}):
                rows = [_loggable(r, self.step_metric) for r in old]
                break
        if mode == "offline":
            self._replaced = [p.parent for p in earlier if p.parent.name.startswith("offline-run-")]
        else:
            rows = [r for r in rows if r[self.step_metric] >= step]
        for row in rows:
            self._run.log(row, step=int(row[self.step_metric]))

    def _wandb_failed(self, error: Exception) -> None:
        """W&B is optional: warn once and drop it for the rest of the run."""
        self._notify(f"wandb unavailable ({_one_line(error)}); continuing without it")
        self._run = None

    def log(self, step: int, metrics: dict[str, float], extra: dict[str, float] | None = None) -> None:
        """Append one line to metrics.jsonl (deterministic values only) and send metrics + extra to W&B."""
        metrics = {k: _scalar(v) for k, v in metrics.items()}
        self._file.write(dumps_json({"step": int(step), **metrics}) + "\n")  # strict: NaN/inf written as null
        self._file.flush()
        self.lines += 1
        if self._run is not None:
            row = {self.step_metric: int(step), **metrics, **{k: _scalar(v) for k, v in (extra or {}).items()}}
            try:
                self._run.log(row, step=int(step))
            except Exception as e:
                self._wandb_failed(e)

    def log_media(self, step: int, files: dict[str, Path]) -> None:
        """Send image files (PNG, JPEG) as W&B images and animations (GIF, MP4) as W&B videos, at `step`."""
        if self._run is None or not files:
            return
        import wandb

        def media(path: Path):
            suffix = Path(path).suffix.lower().lstrip(".")
            return wandb.Video(str(path), format=suffix) if suffix in ("gif", "mp4") else wandb.Image(str(path))

        try:
            self._run.log({self.step_metric: int(step), **{k: media(p) for k, p in files.items()}}, step=int(step))
        except Exception as e:
            self._wandb_failed(e)

    def log_model(self, files: dict[str, Path], metadata: dict, aliases: list[str]) -> None:
        """The trained model as a W&B Artifact `model-<run id>` (type "model"), when `options.log_model`."""
        if self._run is None or not self.options.log_model:
            return
        import wandb

        try:
            artifact = wandb.Artifact(f"model-{self._run.id}", type="model", metadata=_flatten(metadata))
            for name, path in files.items():
                artifact.add_file(str(path), name=name)
            self._run.log_artifact(artifact, aliases=aliases)
        except Exception as e:
            self._wandb_failed(e)

    def progress(self, step: int, **fields: float | str) -> None:
        """Move the bar to `step` and show `fields` after it; without a terminal, print them as a plain line at
        most every `print_every` seconds."""
        if self._plain_every is not None and time.monotonic() - self._last_plain >= self._plain_every:
            self._last_plain = time.monotonic()
            done = f"/{self._total:,} ({step / self._total:.0%})" if self._total else ""
            print(f"step {step:,}{done}  " + "  ".join(f"{k} {v}" for k, v in fields.items()), flush=True)
        if self._bar is None:
            return
        self._bar.set_postfix(fields, refresh=False)
        self._bar.update(step - self._bar.n)

    def summary(self, values: dict) -> None:
        """Set the W&B run summary, nested dicts flattened to dotted keys."""
        if self._run is not None:
            try:
                self._run.summary.update(_flatten(values))
            except Exception as e:
                self._wandb_failed(e)

    def close(self) -> None:
        """Close the bar, finish W&B and close metrics.jsonl; safe to call twice."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._run is not None:
            try:
                self._run.finish()
            except Exception as e:
                self._wandb_failed(e)
            else:  # the record just finished holds their history: one offline record per run to sync
                for old in self._replaced:
                    shutil.rmtree(old, ignore_errors=True)
            self._run = None
        self._file.close()

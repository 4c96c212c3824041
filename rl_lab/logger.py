"""The one logging path of every run: a console progress bar, metrics.jsonl and Weights & Biases.

metrics.jsonl is the run's own deterministic record (same seed on CPU -> byte-identical file); W&B is a
best-effort mirror that may fail or be unreachable without ever stopping training.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rl_lab.errors import UserError
from rl_lab.fileio import write_atomic

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


def _truncate(path: Path, lines: int) -> None:
    """Keep the first `lines` lines, those a checkpoint had seen written, so a resumed run re-logs the rest once."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        keep = [line for line in f if line.endswith("\n")][:lines]
    write_atomic(path, "".join(keep))


def init_wandb(run_dir: Path, config: dict, mode: str, project: str, entity: str | None, run_name: str | None) -> Any:
    """Start (or, with the id saved in run_dir, continue) the W&B run, silently and with a bounded wait."""
    import wandb

    # Our top-level `agents` package looks to wandb like an LLM-agents SDK; skip its Weave suggestion.
    os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")

    id_file = run_dir / "wandb_id.txt"
    if not id_file.exists():
        id_file.write_text(secrets.token_hex(4) + "\n")
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", 30))  # an unreachable server must not hang the run
    settings = wandb.Settings(silent=True, console="off", init_timeout=timeout, login_timeout=timeout)
    return wandb.init(
        project=project,
        entity=entity,
        name=run_name,
        dir=str(run_dir),
        config=config,
        mode=mode,
        id=id_file.read_text().strip(),
        resume="allow",
        settings=settings,
    )


class RunLogger:
    """Writes metrics to metrics.jsonl and W&B and draws the progress bar; W&B failures only warn."""

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
        resume_lines: int | None = None,
        initial_step: int = 0,
    ) -> None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        if resume_lines is not None:
            _truncate(path, resume_lines)
        self.lines = resume_lines or 0  # lines in metrics.jsonl; a checkpoint stores it to truncate on resume
        self._file = path.open("a", encoding="utf-8")
        self._run = None
        mode = resolve_wandb_mode(wandb_mode)
        if mode != "disabled":  # a disabled run never imports wandb
            try:
                self._run = init_wandb(run_dir, config, mode, project, entity, run_name)
            except Exception as e:
                self._wandb_failed(e)
        if mode == "online" and self._run is not None:
            print(f"wandb run: {self._run.url}", file=sys.stderr)
        show = progress and sys.stderr.isatty()  # no bar redraws in CI logs
        self._bar = tqdm(total=total_steps, unit="step", initial=initial_step, dynamic_ncols=True) if show else None

    @classmethod
    def for_run(cls, run_dir: Path, config, total_steps: int, state, resume: bool) -> RunLogger:
        """The logger of a training run (agent or task): W&B and progress settings from `config.logger`; on resume,
        metrics.jsonl is cut back to the lines the checkpoint's loop `state` had written."""
        return cls(
            run_dir,
            config.to_dict(),
            wandb_mode=config.logger.wandb.mode,
            project=config.logger.wandb.project,
            entity=config.logger.wandb.entity,
            run_name=Path(run_dir).name,
            total_steps=total_steps,
            progress=config.logger.progress,
            resume_lines=state.metrics_lines if resume else None,
            initial_step=state.step,
        )

    def _wandb_failed(self, error: Exception) -> None:
        """W&B is optional: warn once and drop it for the rest of the run."""
        reason = " ".join(f"{type(error).__name__}: {error}".split())  # one line, even for multi-line errors
        print(f"wandb unavailable ({reason}); continuing without it", file=sys.stderr)
        self._run = None

    def log(self, step: int, metrics: dict[str, float], extra: dict[str, float] | None = None) -> None:
        """Append one line to metrics.jsonl (deterministic values only) and send metrics + extra to W&B."""
        metrics = {k: _scalar(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **metrics}) + "\n")
        self._file.flush()
        self.lines += 1
        if self._run is not None:
            try:
                self._run.log({**metrics, **{k: _scalar(v) for k, v in (extra or {}).items()}}, step=int(step))
            except Exception as e:
                self._wandb_failed(e)

    def progress(self, step: int, **fields: float | str) -> None:
        """Move the bar to `step` and show `fields` after it; a no-op without a bar."""
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
            self._run = None
        self._file.close()

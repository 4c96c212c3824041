"""Runs from start to finish: make a run directory, train into it or resume it, open a finished one.

Run directory: config.yaml (fully resolved), metrics.jsonl, summary.json, checkpoints/, plots/, and `.lock`. Everything
that user input can break (config, env id, encoder, device, data) is built before the directory exists, so a bad
command leaves nothing behind. One writer per run: while a process trains a run it holds an exclusive flock on its
`.lock` (which names its pid), released by the OS however the process ends, a kill included; a second `train` into
the same run.dir or a `--resume` of a run in progress stops with the holder's pid. Env runs and supervised tasks go
through the same steps: their trainers keep one contract (rl_lab.trainer.Trainer). Nothing here prints;
rl_lab.commands tells the user.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, runs are not locked
    fcntl = None

import rl_lab.distributed as distributed
from rl_lab.backbone import save_encoder
from rl_lab.backbone.io import SPEC_FILE, WEIGHTS_FILE
from rl_lab.backbone.transfer import find_encoder
from rl_lab.checkpoint import latest_checkpoint, resume_checkpoint
from rl_lab.config import to_yaml
from rl_lab.errors import Diverged, UserError, environment_error, os_error_line
from rl_lab.fileio import dumps_json, write_atomic
from rl_lab.loader import build_trainer, load_config
from rl_lab.logger import RunLogger

LOCK_FILE = ".lock"


class RunLock:
    """This process's exclusive hold on a run directory while it writes it (flock on RUN_DIR/.lock, which holds the
    pid; emptied on release). UserError naming the holder's pid when another process has it."""

    def __init__(self, run_dir: Path):
        self.fd: int | None = None
        if fcntl is None:
            return
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if not _try_lock(fd, fcntl.LOCK_EX):
            holder = _holder(fd)
            os.close(fd)
            raise _in_use(run_dir, holder)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # e.g. a full disk: the lock holds all the same, only its pid is not written
            pass

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    @staticmethod
    def check(run_dir: Path) -> None:
        """UserError if another process holds the lock of `run_dir`; creates and changes nothing."""
        if fcntl is None:
            return
        try:
            fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # no lock file: no process has ever trained here
            return
        try:
            if not _try_lock(fd, fcntl.LOCK_SH):  # a shared probe fails only while a writer holds it
                raise _in_use(run_dir, _holder(fd))
        finally:
            os.close(fd)


def _try_lock(fd: int, kind: int, tries: int = 10) -> bool:
    """flock without waiting on a writer; a few short retries let another process's momentary probe pass."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.02)
    return False


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "another process"


def _in_use(run_dir: Path, holder: str) -> UserError:
    return UserError(
        f"run dir {run_dir} is in use: {holder} is training it (one writer per run); "
        "wait for it to end, or choose another run.dir=..."
    )


@dataclass
class Run:
    """A run directory opened for reading: its resolved config, its latest checkpoint, its rebuilt trainer; `lock`
    is held while this process trains it."""

    dir: Path
    config: Any  # Config (an agent in envs) or TaskConfig (a supervised task)
    lock: RunLock | None = None
    report: str | None = None  # how training went (trainer.report), once train() has drawn the figures
    auto_threads: bool = False  # torch_threads was 0 and the loader chose the count

    def header(self) -> str:
        """One line that says what trains where: the run directory, the device and the CPU threads."""
        c, trainer = self.config, self.trainer
        if hasattr(c, "agent"):
            what = f"{c.agent.name} on {c.env.id}"
        else:  # a task: the model it trains (lenet, ram (6 glimpses), ...)
            what = f"{getattr(trainer, 'model_name', c.task.name)} on {c.data.name}"
        device = trainer.agent.device if hasattr(trainer, "agent") else trainer.device
        threads = f"{c.torch_threads}{' (auto)' if self.auto_threads else ''}"
        return f"{what}: run dir {self.dir}, device {device}, torch threads {threads}"

    @property
    def checkpoint(self) -> Path:
        """The latest complete checkpoint (UserError when there is none)."""
        return latest_checkpoint(self.dir / "checkpoints")

    @functools.cached_property
    def trainer(self):
        """The run's trainer rebuilt from its config.yaml (envs or data, networks), no weights loaded."""
        return build_trainer(self.config)

    def load_weights(self):
        """The trained agent (env runs) or the tested model (task runs) of the latest checkpoint."""
        checkpoint = self.checkpoint  # a run without one fails here, before envs or data are built
        return self.trainer.load_weights(checkpoint)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def open_run(run_dir: str | Path) -> Run:
    """Open an existing run directory: one clear error when it is missing or is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} does not exist")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    return Run(run_dir, load_config(run_dir / "config.yaml"))


def default_run_dir(config_path: Path, seed: int) -> Path:
    return Path("runs") / f"{config_path.stem}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_run(config_path: str | Path, overrides: list[str], config: Any = None) -> Run:
    """A new run: config validated, trainer built, then the directory made, locked, with its config.yaml.
    `config`: one already validated (the Python API's dicts); `config_path` then only names the run directory."""
    config_path = Path(config_path)
    config = config or load_config(config_path, overrides)
    run_dir = Path(config.run.dir) if config.run.dir else default_run_dir(config_path, config.seed)
    main = distributed.is_main_process()  # torchrun: rank 0 makes and writes the directory
    if main:
        _check_new_run_dir(run_dir)
    run = Run(run_dir, config, auto_threads=config.torch_threads == 0)
    run.trainer  # built before the directory exists  # noqa: B018
    config.run.dir = str(run_dir)
    if not main:
        return run
    created = _first_missing(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        run.lock = RunLock(run_dir)
        _check_new_run_dir(run_dir, locked=True)  # another `train` into run.dir may have finished meanwhile
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "plots").mkdir(exist_ok=True)
        write_atomic(run_dir / "config.yaml", to_yaml(config))
    except BaseException as err:
        if run.lock is not None and created is not None:  # ours alone: remove what this command made
            shutil.rmtree(created, ignore_errors=True)
        run.release()
        if isinstance(err, OSError) and environment_error(err):
            raise UserError(
                f"cannot create run dir {run_dir}: {os_error_line(err)}; choose another run.dir=..."
            ) from None
        raise
    return run


def _check_new_run_dir(run_dir: Path, locked: bool = False) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} is a file, not a directory; choose another run.dir=...")
    if run_dir.is_dir():
        if not locked:
            RunLock.check(run_dir)
        if any(p.name != LOCK_FILE for p in run_dir.iterdir()):
            raise UserError(
                f"run dir {run_dir} exists and is not empty; choose another run.dir=... "
                f"or continue it with: rl-lab train --resume {run_dir}"
            )


def _first_missing(path: Path) -> Path | None:
    """The outermost directory that making `path` would create (None when `path` exists)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            break
        missing = p
    return missing


def reopen_run(run_dir: str | Path, total_steps: int | None = None) -> tuple[Run, Path | None, str | None]:
    """An interrupted run, locked, its trainer restored from a checkpoint. Returns the run, the checkpoint (None
    when the run was killed before its first one: it starts from the beginning) and a note when `latest` was
    missing or damaged and an older complete checkpoint was taken instead, or when the envs' episodes in progress
    were restarted rather than restored (ale-py's AtariVectorEnv).

    `total_steps` (`--total-steps N`) gives an RL run, finished or not, a longer budget: it trains on to N env
    steps, its schedules (learning rate, exploration, clipping) stretched to N from where they are, as a run
    configured with N would have them from that step on. config.yaml takes N and a finished run's summary.json is
    kept as summary-OLD.json, both once the checkpoint has been restored (a failed command changes nothing)."""
    run = open_run(run_dir)
    previous = _longer_budget(run, total_steps) if total_steps is not None else None
    try:
        if distributed.is_main_process():  # torchrun: rank 0 holds the lock for all, as in start_run
            run.lock = RunLock(run.dir)
    except OSError as err:
        if not environment_error(err):
            raise
        raise UserError(f"cannot resume {run.dir}: {os_error_line(err)}") from None
    try:
        summary = run.dir / "summary.json"
        if summary.is_file() and previous is None:
            raise UserError(
                f"run {run.dir} already finished (summary.json exists); evaluate it: rl-lab eval {run.dir}, "
                f"or train it on: rl-lab train --resume {run.dir} --total-steps N"
            )
        checkpoint, note = resume_checkpoint(run.dir / "checkpoints")
        if checkpoint is not None:
            restarted = run.trainer.resume(checkpoint)  # a note when the envs' episodes could only be restarted
            note = "; ".join(n for n in (note, restarted) if n) or None
        if previous is not None:
            run.trainer.state.final_eval = None  # evaluated again at the new end (an RL loop's state)
            if summary.is_file():
                summary.replace(run.dir / f"summary-{previous}.json")
            write_atomic(run.dir / "config.yaml", to_yaml(run.config))
            longer = f"budget raised from {previous:,} to {total_steps:,} env steps"
            note = "; ".join(n for n in (note, longer) if n)
    except BaseException:
        run.release()
        raise
    return run, checkpoint, note


def _longer_budget(run: Run, total_steps: int) -> int:
    """Set the run's train.total_steps (in memory) to a larger `total_steps`; returns the old one."""
    train = getattr(run.config, "train", None)
    if not hasattr(train, "total_steps"):
        raise UserError(f"--total-steps: {run.dir} trains for epochs, not env steps")
    previous = train.total_steps
    if total_steps <= previous:
        raise UserError(f"--total-steps {total_steps}: must be more than the run's {previous:,} env steps")
    train.total_steps = total_steps
    return previous


def train(run: Run, resume: bool = False, console: bool = True) -> dict:
    """Train a started or reopened run to its end; write summary.json (rank 0 under torchrun); return it.

    A full disk or another file-system failure becomes one UserError (the last complete checkpoint kept, no
    temporary copies left); a non-finite loss or weights a Diverged naming the step and the checkpoint kept."""
    trainer, main = run.trainer, distributed.is_main_process()
    try:
        if main:
            logger = RunLogger.for_run(run.dir, run.config, trainer.total_steps, trainer.state, resume, console)
        else:
            logger = distributed.NullLogger()
        try:
            summary = trainer.run(run.dir, logger)
            if main:
                write_atomic(run.dir / "summary.json", dumps_json(summary, indent=2) + "\n")
                run.report = trainer.report(summary, run.dir)  # the figures in plots/, then to W&B with the rest
                _mirror(run, summary, logger)
        finally:
            logger.close()
            distributed.cleanup()
    except OSError as err:
        if not environment_error(err):
            raise
        raise UserError(
            f"cannot write run dir {run.dir}: {os_error_line(err)}; its last complete checkpoint is kept: "
            f"fix that, then continue with: rl-lab train --resume {run.dir}"
        ) from None
    except Diverged as err:
        raise Diverged(err.step, f"{err.what}; {_kept(run)}") from None
    finally:
        run.release()
    return summary


def _mirror(run: Run, summary: dict, logger: RunLogger) -> None:
    """What W&B gets at the end of a run: the figures of plots/ as images, the summary, and the model as an
    Artifact (the final weights, and the best ones for tasks, with config.yaml and summary.json)."""
    step = run.trainer.state.step
    logger.log_media(step, {f"plots/{p.stem}": p for p in sorted((run.dir / "plots").glob("*.png"))})
    logger.summary(summary)
    if logger.options.log_model and logger.wandb_active:
        with tempfile.TemporaryDirectory() as tmp:
            files = save_weights(run.trainer, Path(tmp))
            files.update({"config.yaml": run.dir / "config.yaml", "summary.json": run.dir / "summary.json"})
            logger.log_model(files, {"step": step, **summary}, aliases=["latest", f"step_{step}"])


def save_weights(trainer, out_dir: Path) -> dict[str, Path]:
    """The trained weights alone (no optimiser, replay or RNG state) as safetensors files in out_dir: an agent's
    networks in model.safetensors (`<attribute>.<parameter>` keys); a task's final model in model.safetensors and
    its best-validation model, the one it was tested with, in best.safetensors."""
    import safetensors.torch
    import torch

    def tensors(state: dict) -> dict:
        return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}

    if hasattr(trainer, "agent"):
        nets = {name: m for name, m in vars(trainer.agent).items() if isinstance(m, torch.nn.Module)}
        states = {"model.safetensors": {f"{n}.{k}": v for n, m in nets.items() for k, v in m.state_dict().items()}}
    else:
        states = {
            "model.safetensors": trainer.eval_model.state_dict(),
            "best.safetensors": trainer.best_model().state_dict(),
        }
    files = {}
    for name, state in states.items():
        safetensors.torch.save_file(tensors(state), str(out_dir / name))
        files[name] = out_dir / name
    return files


def _kept(run: Run) -> str:
    """What a diverged run keeps, and what to change."""
    section = "agent" if hasattr(run.config, "agent") else "task"
    try:
        kept = f"the last finite checkpoint, {latest_checkpoint(run.dir / 'checkpoints').name}, is kept"
    except UserError:
        kept = "no checkpoint was saved before it"
    return f"{kept}; lower {section}.optim.lr or set {section}.optim.grad_clip, then start a new run"


def train_new(config_path: str | Path, overrides: list[str]) -> Path:
    """Start a run and train it to the end, quietly (sweeps, studies, tests); returns its directory."""
    run = start_run(config_path, overrides)
    train(run)
    return run.dir


def export_encoder(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Save the encoder of a run's latest checkpoint (agent or task) with save_encoder; returns out_dir. An encoder
    already in out_dir is replaced only with `force`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"cannot export to {out_dir}: it is a file; pass a directory")
    existing = [name for name in (SPEC_FILE, WEIGHTS_FILE) if (out_dir / name).exists()]
    if existing and not force:
        raise UserError(
            f"{out_dir} already holds an encoder ({', '.join(existing)}); pass --force to replace it, "
            "or choose another directory"
        )
    save_encoder(find_encoder(open_run(run_dir).load_weights()), out_dir)
    return out_dir

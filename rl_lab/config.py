"""Experiments as data: YAML files loaded into typed dataclasses, with dotted overrides from the command line.

Every user mistake (unknown key, wrong type, invalid value) becomes a UserError naming the key, the value and
where it came from, so the CLI can print one line and exit 2 before anything is written to disk.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rl_lab.errors import UserError


class InvalidValue(ValueError):
    """Raised by a config dataclass's __post_init__; the loader adds the key path and the source."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def check(condition: bool, key: str, message: str) -> None:
    """Validation helper for __post_init__: `check(self.lr > 0, "lr", "must be > 0")`."""
    if not condition:
        raise InvalidValue(key, message)


@dataclass
class WandbConfig:
    mode: Literal["online", "offline", "disabled", "auto"] = "auto"  # auto: online if logged in, else offline
    project: str = "rl-lab"
    entity: str | None = None


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    log_every: int = 1000  # environment steps between lines of metrics.jsonl
    progress: bool = True  # live progress bar on a terminal

    def __post_init__(self):
        check(self.log_every > 0, "log_every", "must be > 0")


@dataclass
class RunConfig:
    dir: str | None = None  # default: runs/<config name>-s<seed>-<time>
    checkpoint_every: int = 10_000  # environment steps; 0 = only the final checkpoint
    keep_checkpoints: int = 2

    def __post_init__(self):
        check(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")


@dataclass
class EnvConfig:
    id: str = "CartPole-v1"
    num_envs: int = 1
    vector: Literal["sync", "async"] = "sync"  # async: one subprocess per env
    kwargs: dict = field(default_factory=dict)  # passed to gymnasium.make

    def __post_init__(self):
        check(self.num_envs >= 1, "num_envs", "must be >= 1")


@dataclass
class TrainConfig:
    total_steps: int = 100_000  # environment steps, summed over parallel envs

    def __post_init__(self):
        check(self.total_steps > 0, "total_steps", "must be > 0")


@dataclass
class EvalConfig:
    episodes: int = 20
    every: int = 10_000  # environment steps between evaluations during training; 0 = only at the end
    epsilon: float = 0.0  # epsilon-greedy evaluation (0 = greedy)
    seed_offset: int = 10_000  # evaluation envs are seeded apart from training envs

    def __post_init__(self):
        check(self.episodes >= 1, "episodes", "must be >= 1")
        check(self.every >= 0, "every", "must be >= 0")
        check(0.0 <= self.epsilon <= 1.0, "epsilon", "must be in [0, 1]")


@dataclass
class EncoderConfig:
    """Which backbone encoder to build; its input shape comes from the environment."""

    name: str = "mlp"
    kwargs: dict = field(default_factory=dict)
    init: str | None = None  # start from an encoder saved by `rl-lab export-encoder` (a directory)
    freeze: bool = False  # keep the encoder's weights fixed (a linear probe when the head is linear)
    lr_mult: float = 1.0  # encoder learning rate = lr * lr_mult (fine-tune the encoder slower than the head)

    def __post_init__(self):
        from rl_lab.backbone import encoder_names

        names = encoder_names()
        check(self.name in names, "name", f"unknown encoder; choose one of {', '.join(names)}")
        check(self.lr_mult >= 0, "lr_mult", "must be >= 0")


@dataclass
class Config:
    agent: Any  # the agent's own dataclass, chosen by `agent.name`
    seed: int = 0
    device: str = "auto"  # auto = cuda, then mps, then cpu
    torch_threads: int = 0  # 0 = torch's default (one per core)
    run: RunConfig = field(default_factory=RunConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        check(
            self.device in ("auto", "cpu", "mps") or self.device.startswith("cuda"),
            "device",
            "must be auto, cpu, mps, cuda or cuda:N",
        )
        check(self.torch_threads >= 0, "torch_threads", "must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class DataConfig:
    """A dataset of rl_lab.data, loaded by name; kwargs go to its loader (e.g. canvas size, clutter)."""

    name: str = "mnist"
    cache_dir: str | None = None  # downloads live here (default: $RL_LAB_DATA or ~/.cache/rl_lab/data)
    val_fraction: float = 0.1  # share of the training data held out for validation
    kwargs: dict = field(default_factory=dict)  # the dataset's own options (rl_lab.data.dataset_options)

    def __post_init__(self):
        from rl_lab.data import DATASETS
        from rl_lab.data.captions import CAPTION_DATASETS  # images with sentences (task captioning)

        names = (*DATASETS, *CAPTION_DATASETS)
        check(self.name in names, "name", f"unknown dataset; choose one of {', '.join(names)}")
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")


@dataclass
class EpochTrainConfig:
    """`train:` of a supervised task: passes over the data instead of environment steps."""

    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 1000
    num_workers: int = 0  # DataLoader worker processes (0 = load batches in the training process)
    early_stopping: int = 0  # stop after this many epochs without a lower validation loss; 0 = never

    def __post_init__(self):
        for key in ("epochs", "batch_size", "eval_batch_size"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(self.num_workers >= 0, "num_workers", "must be >= 0")
        check(self.early_stopping >= 0, "early_stopping", "must be >= 0")


@dataclass
class TaskRunConfig:
    dir: str | None = None  # default: runs/<config name>-s<seed>-<time>
    keep_checkpoints: int = 2  # a checkpoint is written after every epoch

    def __post_init__(self):
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")


@dataclass
class TaskConfig:
    """A supervised experiment: `task.name` picks the task's dataclass as `agent.name` does for agents."""

    task: Any
    seed: int = 0
    device: str = "auto"
    torch_threads: int = 0
    run: TaskRunConfig = field(default_factory=TaskRunConfig)
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(log_every=100))  # optimiser steps
    data: DataConfig = field(default_factory=DataConfig)
    train: EpochTrainConfig = field(default_factory=EpochTrainConfig)

    __post_init__ = Config.__post_init__
    to_dict = Config.to_dict


def task_config_from_dict(data: dict, source: str) -> TaskConfig:
    from rl_lab.tasks import TASK_CONFIGS

    task = data.get("task")
    names = ", ".join(sorted(TASK_CONFIGS))
    if "agent" in data:
        raise UserError(f"{source}: has both agent: and task:; an experiment is either an agent or a task")
    if not isinstance(task, dict) or "name" not in task:
        raise UserError(f"{source}: missing task.name (one of {names})")
    if task["name"] not in TASK_CONFIGS:
        raise UserError(f"{source}: task.name={task['name']!r} is not a task; choose one of {names}")
    try:
        return _build(TaskConfig, data, "", {"task": TASK_CONFIGS[task["name"]]})
    except InvalidValue as err:
        raise UserError(f"{source}: {err.key}: {err}") from None
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply `dotted.key=value` overrides, and validate everything."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values")
    for item in overrides:
        try:
            apply_override(data, item)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
    return config_from_dict(data, source=str(path))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line: what PyYAML found and where (`expected ',' or '}', but got ':' at line 3, column 5`)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem is None:
        return str(err).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def apply_override(data: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`3`, `1e-3`, `true`, `[64, 64]`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"override {item!r} is not of the form dotted.key=value (e.g. agent.lr=1e-3)")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(data: dict, source: str = "config") -> Config:
    if "task" in data:
        return task_config_from_dict(data, source)
    agent_data = data.get("agent")
    if not isinstance(agent_data, dict) or "name" not in agent_data:
        raise UserError(f"{source}: missing agent.name (one of {', '.join(agent_names())})")
    agent_cls = agent_config_class(agent_data["name"], source)
    try:
        config = _build(Config, data, "", {"agent": agent_cls})
        from envs import check_env_id

        check_env_id(config.env.id)
    except InvalidValue as err:
        raise UserError(f"{source}: {err.key}: {err}") from None
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    return config


def agent_names() -> list[str]:
    from agents import AGENT_CONFIGS

    return sorted(AGENT_CONFIGS)


def agent_config_class(name: Any, source: str) -> type:
    from agents import AGENT_CONFIGS

    if name not in AGENT_CONFIGS:
        raise UserError(f"{source}: agent.name={name!r} is not an agent; choose one of {', '.join(agent_names())}")
    return AGENT_CONFIGS[name]


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _build(cls: type, data: Any, prefix: str, field_types: dict[str, type] | None = None) -> Any:
    """Instantiate dataclass `cls` from `data`, checking keys and types; errors carry the dotted key."""
    if not isinstance(data, dict):
        raise InvalidValue(prefix.rstrip(".") or "config", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    hints.update(field_types or {})
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise InvalidValue(f"{prefix}{key}", f"unknown key{hint}")
    kwargs = {name: _coerce(hints[name], data[name], f"{prefix}{name}") for name in names if name in data}
    try:
        return cls(**kwargs)
    except InvalidValue as err:
        key = f"{prefix}{err.key}"
        value = kwargs.get(err.key, getattr(cls, err.key, None))
        raise InvalidValue(f"{key}={value!r}", str(err)) from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is Literal:
        if value not in args:
            raise InvalidValue(f"{key}={value!r}", f"must be one of {', '.join(map(str, args))}")
        return value
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    elif origin is list or tp is list:
        if isinstance(value, list):
            return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
    else:
        raise TypeError(f"config type {tp} of {key} is not supported")
    expected = getattr(tp, "__name__", str(tp))
    raise InvalidValue(f"{key}={value!r}", f"wrong type, expected {expected}")

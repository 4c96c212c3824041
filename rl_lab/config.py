"""The config schema: experiments as typed dataclasses, the sections every experiment shares, and the rules that
turn a nested dict (from YAML plus dotted overrides) into them.

This module knows no registries: which agent, task or env a name means is resolved by rl_lab.loader. Every user
mistake (unknown key, wrong type, invalid value) becomes an InvalidValue / UserError naming the key and the value,
so the CLI can print one line and exit 2 before anything is written to disk. No torch here: `rl-lab config` is fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from rl_lab.errors import UserError

MAX_SEED = 2**32 - 1  # numpy's legacy seeding (np.random.seed) takes 32-bit seeds


class _StrictBoolLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true/false (any case as YAML allows) are booleans; yes, no,
    on, off stay strings, so `agent.double_dqn=yes` is refused rather than silently true."""


_StrictBoolLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictBoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """A config's YAML (a file or an override's value): yaml.safe_load, but only true/false are booleans."""
    return yaml.load(text, Loader=_StrictBoolLoader)  # a SafeLoader: no Python objects


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
    group: str | None = None  # runs to view together (e.g. the seeds of one experiment)
    tags: list[str] = field(default_factory=list)
    job_type: str | None = None  # e.g. train, sweep, eval
    notes: str | None = None
    log_model: bool = True  # upload the final model (and the best, for tasks) with config.yaml as an Artifact
    init_timeout: float = 10.0  # seconds to reach the server; then the run logs offline into its directory

    def __post_init__(self):
        check(self.init_timeout > 0, "init_timeout", "must be > 0 (seconds)")


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    log_every: int = 1000  # environment steps between lines of metrics.jsonl
    progress: bool = True  # a live bar on a terminal; plain lines when stderr is not one (files, nohup, CI)
    print_every: float = 30.0  # seconds between plain progress lines (not on a terminal); 0 = at every log line

    def __post_init__(self):
        check(self.log_every > 0, "log_every", "must be > 0")
        check(self.print_every >= 0, "print_every", "must be >= 0")


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
    # sync: in this process; async: one subprocess per env; ale: ale-py's threaded AtariVectorEnv (Atari only;
    # its emulators cannot be snapshotted, so a resumed run restarts the episodes in progress);
    # auto: ale for an Atari id with more than one env, else sync
    vector: Literal["auto", "sync", "async", "ale"] = "auto"
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
    deterministic: bool = True  # false: sample actions from the policy's distribution (policy-gradient agents)
    seed_offset: int = 10_000  # evaluation envs are seeded apart from training envs

    def __post_init__(self):
        check(self.seed_offset >= 0, "seed_offset", "must be >= 0")
        check(self.episodes >= 1, "episodes", "must be >= 1")
        check(self.every >= 0, "every", "must be >= 0")
        check(0.0 <= self.epsilon <= 1.0, "epsilon", "must be in [0, 1]")


# The names rl_lab.backbone builds (tests/test_layers.py checks that they match its registry).
EncoderName = Literal["mlp", "nature_cnn", "lenet", "resnet", "vgg", "lstm", "gru"]
# The names rl_lab.data and rl_lab.data.captions load (checked against their registries the same way).
DatasetName = Literal[
    "digits",
    "mnist",
    "mnist_full",
    "cifar10",
    "translated_mnist",
    "cluttered_mnist",
    "shapes_captions",
    "coco_captions",
]


@dataclass
class EncoderConfig:
    """Which backbone encoder to build; its input shape comes from the environment or the data."""

    name: EncoderName = "mlp"
    kwargs: dict = field(default_factory=dict)
    init: str | None = None  # start from an encoder saved by `rl-lab export-encoder` (a directory)
    freeze: bool = False  # keep the encoder's weights fixed (a linear probe when the head is linear)
    lr_mult: float = 1.0  # encoder learning rate = lr * lr_mult (fine-tune the encoder slower than the head)

    def __post_init__(self):
        check(
            self.name in typing.get_args(EncoderName),
            "name",
            f"must be one of {', '.join(typing.get_args(EncoderName))}",
        )
        check(self.lr_mult >= 0, "lr_mult", "must be >= 0")


@dataclass
class OptimConfig:
    """The optimiser of any agent or task (`agent.optim`, `task.optim`): one name for each setting.

    The learning rate follows `schedule` over the run: agents anneal by environment steps (constant, linear,
    cosine), tasks step once per epoch (all six; plateau with the validation loss). The keys a config gives
    change its owner's defaults (`agent.optim.lr=1e-3` keeps DQN's gradient clipping), unlike other sections.
    """

    keeps_owner_defaults: typing.ClassVar[bool] = True

    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = 1e-3
    eps: float = 1e-8  # adam, adamw, rmsprop
    momentum: float = 0.0  # sgd and rmsprop
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # coupled for sgd/adam/rmsprop, decoupled for adamw; never on biases or norms
    grad_clip: float | None = None  # max global gradient norm; null = no clipping
    amp: bool = False  # bfloat16 autocast for forward passes on CUDA (CPU runs stay in full precision)
    schedule: Literal["constant", "linear", "cosine", "step", "exponential", "plateau"] = "constant"
    lr_end: float = 0.0  # linear and cosine: the learning rate at the end of the run
    step_size: int = 10  # step: epochs between decays
    decay: float = 0.1  # step, exponential (per epoch) and plateau: the factor
    patience: int = 2  # plateau: epochs without a lower validation loss before decaying

    def __post_init__(self):
        check(self.lr > 0, "lr", "must be > 0")
        check(self.eps > 0, "eps", "must be > 0")
        check(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        check(not self.nesterov or (self.name == "sgd" and self.momentum > 0), "nesterov", "needs sgd with momentum")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "must be > 0 or null")
        check(self.lr_end >= 0, "lr_end", "must be >= 0")
        check(self.step_size >= 1, "step_size", "must be >= 1")
        check(0.0 < self.decay <= 1.0, "decay", "must be in (0, 1]")
        check(self.patience >= 0, "patience", "must be >= 0")


@dataclass
class Config:
    agent: Any  # the agent's own dataclass, chosen by `agent.name` (rl_lab.loader)
    seed: int = 0
    device: str = "auto"  # auto = cuda, then mps, then cpu
    torch_threads: int = 0  # 0 = auto: 1 for small MLPs, else the cores free at the start (rl_lab.device)
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
        check(0 <= self.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}] (numpy and gymnasium seeds are 32-bit)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class DataConfig:
    """A dataset of rl_lab.data, loaded by name; kwargs go to its loader (e.g. canvas size, clutter)."""

    name: DatasetName = "mnist"
    cache_dir: str | None = None  # downloads live here (default: $RL_LAB_DATA or ~/.cache/rl_lab/data)
    val_fraction: float = 0.1  # share of the training data held out for validation
    kwargs: dict = field(default_factory=dict)  # the dataset's own options (rl_lab.data.dataset_options)

    def __post_init__(self):
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

    task: Any  # the task's own dataclass, chosen by `task.name` (rl_lab.loader)
    seed: int = 0
    device: str = "auto"
    torch_threads: int = 0
    run: TaskRunConfig = field(default_factory=TaskRunConfig)
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(log_every=100))  # optimiser steps
    data: DataConfig = field(default_factory=DataConfig)
    train: EpochTrainConfig = field(default_factory=EpochTrainConfig)

    __post_init__ = Config.__post_init__
    to_dict = Config.to_dict


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line: what PyYAML found and where (`expected ',' or '}', but got ':' at line 3, column 5`)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem is None:
        return str(err).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def apply_override(data: dict, item: str | tuple[str, Any]) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`3`, `1e-3`, `true`, `[64, 64]`). A
    (key, value) pair, as the Python API passes a dict's items, sets the value as it is."""
    if isinstance(item, tuple):
        key, value = item
        if not isinstance(key, str) or not key:
            raise UserError(f"override key {key!r} is not a dotted key (e.g. agent.optim.lr)")
        item = f"{key}={value!r}"
    else:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form dotted.key=value (e.g. agent.optim.lr=1e-3)")
        try:
            value = load_yaml(raw) if raw else ""
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


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def build_dataclass(cls: type, data: Any, field_types: dict[str, type] | None = None) -> Any:
    """Dataclass `cls` from a nested dict, every key and type checked; `field_types` fills fields typed Any
    (`agent`, `task`) with the dataclass a name resolved to. Errors are InvalidValue carrying the dotted key."""
    return _build(cls, data, "", field_types)


# Settings that moved into the one optimiser section (`agent.optim` / `task.optim`): their new names.
MOVED_TO_OPTIM = {
    "lr": "optim.lr",
    "lr_end": "optim.lr_end (with optim.schedule=linear)",
    "adam_eps": "optim.eps",
    "optimizer_eps": "optim.eps",
    "optimizer": "optim.name",
    "max_grad_norm": "optim.grad_clip",
    "bf16": "optim.amp",
    "amp": "optim.amp",
    "schedule": "optim.schedule (with optim.lr_end, step_size, decay, patience)",
}


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
            if "optim" in names and key in MOVED_TO_OPTIM:
                hint = f"; it is now {prefix}{MOVED_TO_OPTIM[key]}"
            raise InvalidValue(f"{prefix}{key}", f"unknown key{hint}")
    kwargs = {
        f.name: _coerce(hints[f.name], _with_owner_defaults(f, hints[f.name], data[f.name]), f"{prefix}{f.name}")
        for f in dataclasses.fields(cls)
        if f.name in data
    }
    try:
        return cls(**kwargs)
    except InvalidValue as err:
        first, *rest = err.key.split(".")  # a key of a nested section (optim.schedule) names its own value
        value = kwargs.get(first, getattr(cls, first, None))
        for part in rest:
            value = getattr(value, part, None)
        raise InvalidValue(f"{prefix}{err.key}={value!r}", str(err)) from None


def _with_owner_defaults(f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """For a section that keeps its owner's defaults (OptimConfig), the given keys over the field's default."""
    keeps = getattr(tp, "keeps_owner_defaults", False) and f.default_factory is not dataclasses.MISSING
    if keeps and isinstance(value, dict):
        return {**dataclasses.asdict(f.default_factory()), **value}
    return value


def _finite(value: Any, key: str) -> Any:
    """`value`, checked to hold no NaN or infinity (`.inf`, `.nan`, also inside kwargs): a run would only diverge."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidValue(f"{key}={value!r}", "must be a finite number")
    for name, item in value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ():
        _finite(item, f"{key}.{name}" if isinstance(value, dict) else f"{key}[{name}]")
    return value


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
        return _finite(value, key)
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(float(value), key)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
        raise InvalidValue(f"{key}={value!r}", "wrong type, expected bool: true or false")
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list or tp is list:
        if isinstance(value, list):
            return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else _finite(value, key)
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return _finite(value, key)
    else:
        raise TypeError(f"config type {tp} of {key} is not supported")
    expected = getattr(tp, "__name__", str(tp))
    raise InvalidValue(f"{key}={value!r}", f"wrong type, expected {expected}")

"""Names to code: `agent.name` and `task.name` to their settings and their class, `env.id` to a registered env.

The only module that knows every agent and task. It reads a YAML config into the schema's dataclasses
(rl_lab.config) and builds a run's trainer; agents, tasks and loops are imported only when a run needs them, so
`rl-lab config` loads no torch and a CartPole run loads no supervised task.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from rl_lab.config import Config, InvalidValue, TaskConfig, apply_override, build_dataclass, load_yaml, yaml_problem
from rl_lab.errors import UserError
from rl_lab.fileio import read_user_text

# name: ("module:Class" of its settings under `agent:` / `task:`, "module:Class" of the agent / the task's trainer)
AGENTS: dict[str, tuple[str, str]] = {
    "dqn": ("rl_lab.agents.configs:DQNConfig", "rl_lab.agents.dqn:DQN"),
    "tabular_q": ("rl_lab.agents.configs:TabularQConfig", "rl_lab.agents.tabular_q:TabularQ"),
    "reinforce": ("rl_lab.agents.configs:REINFORCEConfig", "rl_lab.agents.reinforce:REINFORCE"),
    "a2c": ("rl_lab.agents.configs:A2CConfig", "rl_lab.agents.actor_critic:A2C"),
    "ppo": ("rl_lab.agents.configs:PPOConfig", "rl_lab.agents.ppo:PPO"),
}
TASKS: dict[str, tuple[str, str]] = {
    "classification": (
        "rl_lab.tasks.configs:ClassificationConfig",
        "rl_lab.tasks.classification:ClassificationTrainer",
    ),
    "captioning": ("rl_lab.tasks.configs:CaptioningConfig", "rl_lab.tasks.captioning:CaptioningTrainer"),
    "ram": ("rl_lab.tasks.configs:RAMTaskConfig", "rl_lab.ram.task:RAMTrainer"),  # the recurrent attention model
}
# the settings of every agent with a policy distribution (eval.deterministic=false samples from it)
SAMPLED_POLICIES = "rl_lab.agents.configs:PolicyGradientConfig"
# the training loop an agent class names in its `loop` attribute
LOOPS = {"offpolicy": "rl_lab.rl.offpolicy:OffPolicyTrainer", "onpolicy": "rl_lab.rl.onpolicy:OnPolicyTrainer"}


def has_policy_distribution(config: Config) -> bool:
    """Whether an RL run's agent acts from a policy distribution that evaluation can sample."""
    return isinstance(config.agent, resolve(SAMPLED_POLICIES))


def eval_deterministic(config: Config, actions: str) -> bool:
    """`rl-lab eval --actions greedy|sampled` as eval.deterministic; only a policy distribution can be sampled."""
    if not hasattr(config, "env"):
        raise UserError(f"--actions {actions}: only RL runs act; this run trains a supervised task")
    if actions == "sampled" and not has_policy_distribution(config):
        raise UserError(
            f"--actions sampled: {config.agent.name} acts on values, it has no policy to sample; use --epsilon instead"
        )
    return actions == "greedy"


def load_config(path: str | Path, overrides: list[str] = ()) -> Config | TaskConfig:
    """Read a YAML config, apply `dotted.key=value` overrides, and validate everything."""
    path = Path(path)
    text = read_user_text(path, "config file")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values")
    for item in overrides:
        try:
            apply_override(data, item)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict, source: str = "config") -> Config | TaskConfig:
    """An agent experiment (`agent:` + `env:`) or a supervised task (`task:` + `data:`), validated."""
    if "task" in data and "agent" in data:
        raise UserError(f"{source}: has both agent: and task:; an experiment is either an agent or a task")
    kind, registry, schema = ("task", TASKS, TaskConfig) if "task" in data else ("agent", AGENTS, Config)
    section, names = data.get(kind), ", ".join(sorted(registry))
    if not isinstance(section, dict) or "name" not in section:
        raise UserError(f"{source}: missing {kind}.name (one of {names})")
    if section["name"] not in registry:
        raise UserError(f"{source}: {kind}.name={section['name']!r} is not a {kind}; choose one of {names}")
    try:
        config = build_dataclass(schema, data, {kind: resolve(registry[section["name"]][0])})
        if kind == "agent":
            from rl_lab.envs import check_env_id  # gymnasium, not torch

            check_env_id(config.env.id)
            if not config.eval.deterministic and not has_policy_distribution(config):
                raise InvalidValue(
                    "eval.deterministic=False",
                    f"{config.agent.name} acts on values, it has no policy to sample; use eval.epsilon instead",
                )
    except InvalidValue as err:
        raise UserError(f"{source}: {err.key}: {err}") from None
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    return config


def resolve(target: str) -> Any:
    """The object a "module:name" string names, imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_trainer(config: Config | TaskConfig):
    """Device, seeds, envs or data, the agent or model, and its trainer (rl_lab.trainer.Trainer); every UserError
    happens here, before any file is written."""
    import torch

    import rl_lab.distributed as distributed
    from rl_lab.device import choose_threads, select_device
    from rl_lab.seeding import seed_everything

    # auto (0) becomes the number chosen, so config.yaml records it and a resumed run uses it again
    config.torch_threads, _ = choose_threads(config.torch_threads, uses_small_network(config))
    torch.set_num_threads(config.torch_threads)
    if isinstance(config, TaskConfig):
        device = select_device(distributed.setup(config.device))
        rng = seed_everything(config.seed)
        return resolve(TASKS[config.task.name][1])(config, device, rng)
    from rl_lab.envs import make_vector_env

    agent_cls = resolve(AGENTS[config.agent.name][1])
    if distributed.launched() and not getattr(agent_cls, "data_parallel", False):
        raise UserError(f"agent {config.agent.name} trains in one process; run it without torchrun (ppo runs under it)")
    device = select_device(distributed.setup(config.device))  # under torchrun: joins the process group
    rng = seed_everything(config.seed)  # the same seed in every process (their envs' seeds differ)
    envs = make_vector_env(config.env.id, config.env.num_envs, config.env.vector, **config.env.kwargs)
    try:
        agent = agent_cls(
            config.agent, envs.single_observation_space, envs.single_action_space, device, config.train.total_steps
        )
    except UserError as err:
        raise UserError(f"agent: {err}") from None
    return resolve(LOOPS[agent_cls.loop])(config, agent, envs, rng)


def uses_small_network(config: Config | TaskConfig) -> bool:
    """An MLP (or recurrent core over one) acting in envs, or a table: more CPU threads only add overhead."""
    if isinstance(config, TaskConfig):
        return False
    if not hasattr(config.agent, "encoder"):  # a table
        return True
    encoder = config.agent.encoder
    torso = encoder.kwargs.get("torso", "mlp") if encoder.name in ("lstm", "gru") else encoder.name
    return torso == "mlp"

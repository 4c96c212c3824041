"""One file per algorithm. `AGENTS` maps a config's `agent.name` to its config dataclass and agent class."""

from agents.dqn import DQN, DQNConfig

AGENTS = {"dqn": DQN}
AGENT_CONFIGS = {"dqn": DQNConfig}

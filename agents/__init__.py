"""One file per algorithm. `AGENTS` maps a config's `agent.name` to its config dataclass and agent class."""

from agents.actor_critic import A2C, A2CConfig
from agents.dqn import DQN, DQNConfig
from agents.reinforce import REINFORCE, REINFORCEConfig
from agents.tabular_q import TabularQ, TabularQConfig

AGENTS = {"dqn": DQN, "tabular_q": TabularQ, "reinforce": REINFORCE, "a2c": A2C}
AGENT_CONFIGS = {"dqn": DQNConfig, "tabular_q": TabularQConfig, "reinforce": REINFORCEConfig, "a2c": A2CConfig}

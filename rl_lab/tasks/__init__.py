"""Supervised tasks on the shared backbone. `TASKS` maps a config's `task.name` to its trainer class and
`TASK_CONFIGS` to its config dataclass, as agents/__init__.py does for agents."""

from rl_lab.tasks.captioning import CaptioningConfig, CaptioningTrainer
from rl_lab.tasks.classification import ClassificationConfig, ClassificationTrainer
from rl_lab.tasks.ram import RAMTaskConfig, RAMTrainer

TASKS = {"classification": ClassificationTrainer}
TASK_CONFIGS = {"classification": ClassificationConfig}
TASKS["ram"], TASK_CONFIGS["ram"] = RAMTrainer, RAMTaskConfig  # the recurrent attention model (agents/ram.py)
TASKS["captioning"], TASK_CONFIGS["captioning"] = CaptioningTrainer, CaptioningConfig  # image -> sentence

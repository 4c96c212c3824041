"""The `rl-lab` console script (also `python -m rl_lab.cli`, as torchrun needs); the verbs live in rl_lab.commands."""

import sys

from rl_lab.commands import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m rl_lab`: the same as the `rl-lab` command."""

import sys

from rl_lab.commands import main

sys.exit(main())

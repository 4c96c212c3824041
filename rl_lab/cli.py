"""`rl-lab` command line: train, resume, evaluate, print a resolved config.

Exit status: 0 success; 2 user error (one line on stderr, no traceback); 1 a bug; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from rl_lab.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other user error
        raise UserError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rl-lab", description="Train and evaluate rl-lab agents.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train from a config, or resume a run directory")
    train.add_argument("config", nargs="?", help="experiment YAML, e.g. configs/cartpole_dqn.yaml")
    train.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. agent.lr=1e-3 seed=3 run.dir=/tmp/r")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")

    ev = sub.add_parser("eval", help="re-evaluate the saved agent of a run")
    ev.add_argument("run_dir")
    ev.add_argument("--episodes", type=int, help="number of episodes (default: the config's eval.episodes)")
    ev.add_argument("--epsilon", type=float, help="epsilon-greedy evaluation (default: the config's eval.epsilon)")
    ev.add_argument("--seed", type=int, help="evaluation seed (default: seed + eval.seed_offset)")

    show = sub.add_parser("config", help="print the fully resolved config")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*")
    return parser


def _dispatch(args: argparse.Namespace) -> None:
    from rl_lab import run
    from rl_lab.config import load_config, to_yaml

    if args.command == "config":
        print(to_yaml(load_config(args.config, args.overrides)), end="")
    elif args.command == "eval":
        if args.episodes is not None and args.episodes < 1:
            raise UserError(f"--episodes {args.episodes}: must be >= 1")
        run.evaluate_run(args.run_dir, args.episodes, args.epsilon, args.seed)
    elif args.resume:
        if args.config or args.overrides:
            raise UserError("--resume takes only a run directory: the run's own config.yaml is used")
        run.train_resume(args.resume)
    elif args.config:
        run.train_new(args.config, args.overrides)
    else:
        raise UserError("train needs a config file or --resume RUN_DIR (see rl-lab train --help)")


def main(argv: list[str] | None = None) -> int:
    try:
        _dispatch(_parser().parse_args(argv))
    except UserError as err:
        print(f"rl-lab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "rl-lab: interrupted; continue from the last checkpoint with rl-lab train --resume RUN_DIR",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

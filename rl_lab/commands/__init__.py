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
    ev.add_argument(
        "--video", type=int, nargs="?", const=1, default=0, metavar="N", help="record N episodes (default 1) as mp4"
    )

    solve = sub.add_parser("solve", help="solve a grid world by value iteration: print V* and the policy, plot them")
    solve.add_argument(
        "target",
        help="a map (4x4, rooms, maze or a map file), a grid-world env id, a config, or a run directory "
        "(then its learned Q is compared with Q*)",
    )
    solve.add_argument("--gamma", type=float, help="discount (default: the config's agent.gamma, else 1)")
    solve.add_argument("--slip", type=float, help="probability of moving sideways (maps and env ids)")
    solve.add_argument("--step-reward", type=float, help="reward per move (maps and env ids; default -1)")
    solve.add_argument(
        "--out", help="directory for the figures and solution.json (default: RUN_DIR/plots, else runs/solve-MAP)"
    )

    search = sub.add_parser("search", help="random hyperparameter search over a W&B sweep file, run locally")
    search.add_argument("sweep", help="sweep YAML, e.g. configs/sweeps/cartpole_dqn.yaml")
    search.add_argument("overrides", nargs="*", help="dotted.key=value applied to every trial")
    search.add_argument("--trials", type=int, default=8, help="configurations to sample and train (default 8)")
    search.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    search.add_argument("--out", help="directory for the trials and results (default: runs/search-SWEEP-TIME)")

    for name, what in (("ensemble", "an ensemble (mean probabilities)"), ("soup", "uniform and greedy soups")):
        group = sub.add_parser(name, help=f"test accuracy of classification runs and {what}, as a table")
        group.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
        group.add_argument("--out", help="also write the table as JSON to this file")

    export = sub.add_parser("export-encoder", help="save the encoder of a run (agent or task) for encoder.init")
    export.add_argument("run_dir")
    export.add_argument("out_dir")

    diagnose = sub.add_parser("diagnose", help="the lectures' checks and pictures for a run's network")
    diagnose.add_argument("run_dir")
    diagnose.add_argument("--only", nargs="+", metavar="NAME", help="run only these diagnostics")
    diagnose.add_argument("--n", type=int, default=500, help="examples (val images, or agent observations)")
    diagnose.add_argument("--out", help="output directory (default: RUN_DIR/diagnostics)")

    variance = sub.add_parser("variance-study", help="REINFORCE gradient variance under each variance reduction")
    variance.add_argument("config", nargs="?", default="configs/cartpole_reinforce.yaml", help="a REINFORCE config")
    variance.add_argument("overrides", nargs="*", help="dotted.key=value for every run of the study")
    variance.add_argument("--out", default="runs/variance-study", help="output directory (new or empty)")
    variance.add_argument("--steps", type=int, default=100_000, help="training env steps per option")
    variance.add_argument("--snapshots", type=int, default=3, help="policy snapshots, the initial one included")
    variance.add_argument("--batches", type=int, default=20, help="batches of episodes per snapshot")

    caption = sub.add_parser("caption", help="caption an image with a captioning run's model")
    caption.add_argument("run_dir")
    caption.add_argument("image", help="an image file (PNG, JPEG); resized to the model's input size")
    caption.add_argument("--attention", action="store_true", help="also write a PNG of each word's attention map")
    caption.add_argument("--beam", type=int, help="beam size (default: the run's task.beam; 1 = greedy)")
    caption.add_argument("--out", help="attention PNG path (default: RUN_DIR/plots/attention-IMAGE.png)")

    show = sub.add_parser("config", help="print the fully resolved config")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*")
    return parser


def _dispatch(args: argparse.Namespace) -> None:
    """Run the verb; each verb's module is imported only here, so `rl-lab config` loads no torch."""
    if args.command == "config":
        from rl_lab.commands.config import show_config

        show_config(args.config, args.overrides)
    elif args.command == "eval":
        from rl_lab.commands.train import evaluate

        evaluate(args.run_dir, args.episodes, args.epsilon, args.seed, args.video)
    elif args.command == "solve":
        from rl_lab.commands.solve import solve

        solve(args.target, args.gamma, args.slip, args.step_reward, args.out)
    elif args.command in ("ensemble", "soup"):
        from rl_lab.commands.ensemble import compare

        compare(args.run_dirs, soups=args.command == "soup", out=args.out)
    elif args.command == "export-encoder":
        from rl_lab.runs import export_encoder

        print(f"encoder of {args.run_dir} saved to {export_encoder(args.run_dir, args.out_dir)}")
    elif args.command == "diagnose":
        from rl_lab.commands.diagnose import diagnose

        diagnose(args.run_dir, args.only, args.n, args.out)
    elif args.command == "variance-study":
        from rl_lab.commands.variance_study import study

        study(args.config, args.out, args.overrides, args.steps, args.snapshots, args.batches)
    elif args.command == "search":
        from rl_lab.commands.search import search

        search(args.sweep, args.trials, args.out, args.seed, args.overrides)
    elif args.command == "caption":
        from rl_lab.commands.caption import caption

        caption(args.run_dir, args.image, args.attention, args.beam, args.out)
    elif args.resume:
        from rl_lab.commands.train import resume

        if args.config or args.overrides:
            raise UserError("--resume takes only a run directory: the run's own config.yaml is used")
        resume(args.resume)
    elif args.config:
        from rl_lab.commands.train import train

        train(args.config, args.overrides)
    else:
        raise UserError("train needs a config file or --resume RUN_DIR (see rl-lab train --help)")


def _parse(argv: list[str]) -> argparse.Namespace:
    """argparse plus two forms it cannot take alone: `train` reads the `--key=value` that a W&B sweep agent's
    `${args}` passes as the override `key=value`, and `search` takes key=value overrides after its options."""
    if argv[:1] == ["train"]:
        argv = [a[2:] if a.startswith("--") and "=" in a and not a.startswith("--resume=") else a for a in argv]
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not (args.command == "search" and all("=" in a and not a.startswith("-") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        _dispatch(_parse(sys.argv[1:] if argv is None else argv))
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

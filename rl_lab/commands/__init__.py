"""`rl-lab` command line: train, resume, evaluate, print a resolved config.

Exit status: 0 success; 2 user error (one line on stderr, no traceback), a full disk or read-only file system
included; 3 training diverged (a NaN or infinite loss or weights; one line naming the step; the last finite
checkpoint kept); 1 a bug; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from rl_lab.errors import EXIT_DIVERGED, EXIT_USER_ERROR, Diverged, UserError, environment_error, os_error_line

VARIANCE_STUDY_CONFIG = "configs/cartpole_reinforce.yaml"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other user error
        raise UserError(f"{message} (see {self.prog} --help)")


def _seed(text: str) -> int:
    """A --seed: an integer in [0, 2**32 - 1], as numpy and gymnasium take it."""
    from rl_lab.config import MAX_SEED

    if not text.isdigit() or int(text) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed in [0, {MAX_SEED}]")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    from rl_lab import __version__

    parser = _Parser(
        prog="rl-lab",
        description="Train and evaluate rl-lab agents and supervised tasks.",
        epilog="Run rl-lab COMMAND --help for a command's arguments. Exit status: 0 success, 2 user error, "
        "3 training diverged, 1 a bug, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=_Parser)

    train = sub.add_parser("train", help="train from a config, or resume a run directory")
    train.add_argument("config", nargs="?", help="experiment YAML, e.g. configs/cartpole_dqn.yaml")
    train.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. agent.optim.lr=1e-3 seed=3 run.dir=/tmp/r")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run (or every unfinished run of an experiment)"
    )
    train.add_argument(
        "--seeds", metavar="SEEDS", help="an experiment: one run per seed under one directory (0-9, 0,3,7 or 0-4,9)"
    )
    train.add_argument("--parallel", type=int, metavar="N", help="experiment runs at once, sharing the cores (1)")
    train.add_argument(
        "--total-steps", type=int, metavar="N", help="with --resume RUN_DIR: train on to N env steps (a longer budget)"
    )
    _backend_options(train)

    ev = sub.add_parser("eval", help="re-evaluate the saved agent of a run")
    ev.add_argument("run_dir", help="a run directory, made by rl-lab train (or an experiment: every seed)")
    ev.add_argument("--episodes", type=int, help="number of episodes (default: the config's eval.episodes)")
    ev.add_argument("--epsilon", type=float, help="epsilon-greedy evaluation (default: the config's eval.epsilon)")
    ev.add_argument("--seed", type=_seed, help="evaluation seed (default: seed + eval.seed_offset)")
    ev.add_argument(
        "--actions",
        choices=("greedy", "sampled"),
        help="greedy actions, or samples of the policy's distribution (policy-gradient agents); "
        "default: the config's eval.deterministic",
    )
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
    search.add_argument("--seed", type=_seed, default=0, help="seed of the sampler (default 0)")
    search.add_argument("--out", help="directory for the trials and results (default: runs/search-SWEEP-TIME)")
    _backend_options(search)

    compare = sub.add_parser("compare", help="learning curves and IQM / probability-of-improvement tables over seeds")
    compare.add_argument(
        "paths",
        nargs="+",
        metavar="EXP_OR_RUN",
        help="experiment or run directories (runs of one config are pooled); LABEL=DIR[,DIR...] pools under a name",
    )
    compare.add_argument("--metric", default="eval/return_mean", help="metrics.jsonl key (default eval/return_mean)")
    compare.add_argument(
        "--target", type=float, help="optimality-gap target (default: 1 = human on Atari, else the env's threshold)"
    )
    compare.add_argument("--out", help="directory for compare.md/.json and the figures (default: runs/compare-TIME)")

    for name, what in (("ensemble", "an ensemble (mean probabilities)"), ("soup", "uniform and greedy soups")):
        group = sub.add_parser(name, help=f"test accuracy of classification runs and {what}, as a table")
        group.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of classification runs")
        group.add_argument("--out", help="also write the table as JSON to this file")

    export = sub.add_parser("export-encoder", help="save the encoder of a run (agent or task) for encoder.init")
    export.add_argument("run_dir", help="a run directory, made by rl-lab train")
    export.add_argument("out_dir", help="directory to save the encoder in (its spec and weights)")
    export.add_argument("--force", action="store_true", help="replace an encoder already saved in OUT_DIR")

    diagnose = sub.add_parser("diagnose", help="the lectures' checks and pictures for a run's network")
    diagnose.add_argument("run_dir", help="a run directory, made by rl-lab train")
    diagnose.add_argument("--only", nargs="+", metavar="NAME", help="run only these diagnostics")
    diagnose.add_argument("--n", type=int, default=500, help="examples (val images, or agent observations)")
    diagnose.add_argument("--out", help="output directory (default: RUN_DIR/diagnostics)")

    variance = sub.add_parser("variance-study", help="REINFORCE gradient variance under each variance reduction")
    variance.add_argument("config", nargs="?", default=VARIANCE_STUDY_CONFIG, help="a REINFORCE config")
    variance.add_argument("overrides", nargs="*", help="dotted.key=value for every run of the study")
    variance.add_argument("--out", default="runs/variance-study", help="output directory (new or empty)")
    variance.add_argument("--steps", type=int, default=100_000, help="training env steps per option")
    variance.add_argument("--snapshots", type=int, default=3, help="policy snapshots, the initial one included")
    variance.add_argument("--batches", type=int, default=20, help="batches of episodes per snapshot")

    caption = sub.add_parser("caption", help="caption an image with a captioning run's model")
    caption.add_argument("run_dir", help="a captioning run's directory")
    caption.add_argument("image", nargs="?", help="an image file (PNG, JPEG); resized to the model's input size")
    caption.add_argument(
        "--samples",
        metavar="DIR",
        help="instead: write held-out images of the run's dataset to DIR as PNG files, with their reference captions",
    )
    caption.add_argument("--split", default="test", help="--samples: the split to take them from (default test)")
    caption.add_argument("--count", type=int, default=8, help="--samples: how many images (default 8)")
    caption.add_argument("--attention", action="store_true", help="also write a PNG of each word's attention map")
    caption.add_argument("--beam", type=int, help="beam size (default: the run's task.beam; 1 = greedy)")
    caption.add_argument("--out", help="attention PNG path (default: RUN_DIR/plots/attention-IMAGE.png)")

    show = sub.add_parser("config", help="print the fully resolved config")
    show.add_argument("config", help="experiment YAML, e.g. configs/cartpole_dqn.yaml")
    show.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. agent.optim.lr=1e-3 seed=3")
    return parser


def _backend_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--backend", choices=["local", "ray"], default="local", help="where trials run: here, or as Ray tasks"
    )
    command.add_argument(
        "--address", help="the Ray cluster (HOST:PORT or auto; default: RAY_ADDRESS, else a local Ray)"
    )


def _dispatch(args: argparse.Namespace) -> None:
    """Run the verb; each verb's module is imported only here, so `rl-lab config` loads no torch."""
    if args.command == "config":
        from rl_lab.commands.config import show_config

        show_config(args.config, args.overrides)
    elif args.command == "eval":
        from rl_lab.experiments import is_experiment

        if is_experiment(args.run_dir):
            from rl_lab.commands.experiment import evaluate
        else:
            from rl_lab.commands.train import evaluate

        evaluate(args.run_dir, args.episodes, args.epsilon, args.seed, args.video, args.actions)
    elif args.command == "solve":
        from rl_lab.commands.solve import solve

        solve(args.target, args.gamma, args.slip, args.step_reward, args.out)
    elif args.command in ("ensemble", "soup"):
        from rl_lab.commands.ensemble import compare

        compare(args.run_dirs, soups=args.command == "soup", out=args.out)
    elif args.command == "export-encoder":
        from rl_lab.runs import export_encoder

        print(f"encoder of {args.run_dir} saved to {export_encoder(args.run_dir, args.out_dir, args.force)}")
    elif args.command == "diagnose":
        from rl_lab.commands.diagnose import diagnose

        diagnose(args.run_dir, args.only, args.n, args.out)
    elif args.command == "variance-study":
        from rl_lab.commands.variance_study import study

        study(args.config, args.out, args.overrides, args.steps, args.snapshots, args.batches)
    elif args.command == "search":
        from rl_lab.commands.search import search

        search(args.sweep, args.trials, args.out, args.seed, args.overrides, args.backend, args.address)
    elif args.command == "caption":
        from rl_lab.commands.caption import caption, write_samples

        if args.samples:
            if args.image or args.attention or args.beam or args.out:
                raise UserError("--samples writes images; caption one afterwards: rl-lab caption RUN_DIR IMAGE")
            write_samples(args.run_dir, args.samples, args.split, args.count)
        elif args.image:
            caption(args.run_dir, args.image, args.attention, args.beam, args.out)
        else:
            raise UserError(
                f"caption needs an image, or --samples DIR to write some: rl-lab caption {args.run_dir} --samples DIR"
            )
    elif args.command == "compare":
        from rl_lab.commands.compare import compare

        compare(args.paths, args.metric, args.out, args.target)
    elif args.command == "train" and args.total_steps is not None and (not args.resume or _experiment(args)):
        raise UserError("--total-steps goes with --resume RUN_DIR of one run (not an experiment, not a config)")
    elif _experiment(args):
        from rl_lab.commands.experiment import train

        train(args.config, args.overrides, args.resume, args.seeds, args.parallel, args.backend, args.address)
    elif args.resume:
        from rl_lab.commands.train import resume

        if args.config or args.overrides:
            raise UserError("--resume takes only a run directory: the run's own config.yaml is used")
        resume(args.resume, args.total_steps)
    elif args.config:
        from rl_lab.commands.train import train

        train(args.config, args.overrides)
    else:
        raise UserError("train needs a config file or --resume RUN_DIR (see rl-lab train --help)")


def _experiment(args: argparse.Namespace) -> bool:
    from rl_lab.commands.experiment import wants_experiment

    return wants_experiment(args)


def _parse(argv: list[str]) -> argparse.Namespace:
    """argparse plus two forms it cannot take alone: `train` reads the `--key=value` that a W&B sweep agent's
    `${args}` passes as the override `key=value`, and `train` and `search` take key=value overrides after their
    options (`rl-lab train CONFIG --seeds 0-9 agent.optim.lr=1e-3`); so does `variance-study`, whose config may
    then be left out (`rl-lab variance-study --out runs/vs seed=3`)."""
    if argv[:1] == ["train"]:
        options = tuple(f"--{name}=" for name in ("resume", "seeds", "parallel", "backend", "address", "total-steps"))
        argv = [a[2:] if a.startswith("--") and "=" in a and not a.startswith(options) else a for a in argv]
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    overriding = ("search", "train", "variance-study")
    if extra and not (args.command in overriding and all("=" in a and not a.startswith("-") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    if args.command == "variance-study" and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)  # an override where the optional config would be
        args.config = VARIANCE_STUDY_CONFIG
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
        if args.command is None:  # a bare `rl-lab`: what it can do
            _parser().print_help()
            return 0
        _dispatch(args)
    except UserError as err:
        print(f"rl-lab: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Diverged as err:
        print(f"rl-lab: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except OSError as err:
        if not environment_error(err):  # a full disk, a read-only file system, no permission: not a bug
            raise
        print(f"rl-lab: error: {os_error_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as err:
        run_dir = getattr(err, "run_dir", None)  # set by the commands that train
        again = f"; continue from the last checkpoint with: rl-lab train --resume {run_dir}" if run_dir else ""
        print(f"rl-lab: interrupted{again}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

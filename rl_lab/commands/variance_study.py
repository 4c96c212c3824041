"""`rl-lab variance-study`: the lecture's argument as a measurement and a plot.

REINFORCE's gradient estimate is unbiased under each option below, but its variance drops step by step:
  total return -> reward-to-go -> + discount -> + moving-average baseline -> + learned value baseline.
The study (1) trains REINFORCE once per option (learning curves), (2) takes fixed policy snapshots from the run with
the learned value baseline (its initial policy and its checkpoints), and at each snapshot draws the same batches of
episodes for every option, computes each option's policy gradient on every batch, and reports the variance across
batches: tr Cov[g] (the expected squared distance of one batch's gradient from the mean gradient) and the same
divided by |E g|^2. At a snapshot the moving-average baseline is the mean discounted reward-to-go over the study's
batches (where the moving average settles) and the learned baseline is the snapshot's own critic.
Writes OUT/variance.json, OUT/variance_study.png, OUT/metrics.jsonl and one run directory per option under OUT/runs;
logs the numbers and the figure to W&B (one run for the study, one per training run).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rl_lab.agents.reinforce import REINFORCEConfig, reinforce_weights
from rl_lab.errors import UserError
from rl_lab.fileio import write_atomic
from rl_lab.loader import load_config
from rl_lab.logger import RunLogger

# key, label, agent overrides (the discount is the config's gamma)
OPTIONS = [
    ("total_return", "total return", {"reward_to_go": False, "gamma": 1.0, "baseline": "none"}),
    ("reward_to_go", "reward-to-go", {"reward_to_go": True, "gamma": 1.0, "baseline": "none"}),
    ("discount", "+ discount", {"reward_to_go": True, "baseline": "none"}),
    ("moving_average", "+ moving-average baseline", {"reward_to_go": True, "baseline": "moving_average"}),
    ("learned_value", "+ learned value baseline", {"reward_to_go": True, "baseline": "learned_value"}),
]
REFERENCE = "learned_value"  # the run whose snapshots every option is measured at


def study(
    config_path: str | Path,
    out: str | Path,
    overrides: list[str],
    steps: int,
    snapshots: int,
    batches: int,
) -> dict:
    from rl_lab.checkpoint import checkpoint_step
    from rl_lab.runs import open_run, train_new

    out = Path(out)
    if snapshots < 2 or batches < 2 or steps < 1:
        raise UserError("variance-study needs --snapshots >= 2, --batches >= 2 and --steps >= 1")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output {out} exists and is not an empty directory; choose another --out")
    base = load_config(config_path, overrides)
    if not isinstance(base.agent, REINFORCEConfig):
        raise UserError(f"{config_path}: variance-study needs a REINFORCE config (agent.name: reinforce)")
    if not 0 < base.agent.gamma < 1:
        raise UserError(f"{config_path}: agent.gamma={base.agent.gamma} must be in (0, 1) to study the discount")
    common = [*overrides, f"train.total_steps={steps}", "agent.normalize_advantages=false"]
    every = max(steps // (snapshots - 1), 1)
    runs = {}
    for key, _, agent in OPTIONS:
        option = [*common, f"run.dir={out / 'runs' / key}", *(f"agent.{k}={v}" for k, v in agent.items())]
        if key == REFERENCE:
            option += [f"run.checkpoint_every={every}", f"run.keep_checkpoints={snapshots + 1}"]
        load_config(config_path, option)  # every option's config is checked before the first run starts
        runs[key] = option
    for key, option in runs.items():
        print(f"variance-study: training {key}")
        train_new(config_path, option)

    reference = open_run(out / "runs" / REFERENCE)
    trainer = reference.trainer  # a fresh agent with the run's seed: the run's initial policy
    steps = {p: checkpoint_step(p) for p in (reference.dir / "checkpoints").glob("step_*")}
    points = [(0, None)] + sorted((step, p) for p, step in steps.items() if step is not None)
    results = []
    for step, path in points:
        if path is not None:
            trainer.load_weights(path)
        print(f"variance-study: {batches} batches at the snapshot of step {step}")
        results.append({"step": step, **gradient_variance(trainer, base.agent, batches)})
    return write_results(out, base, runs, results)


def gradient_variance(trainer, agent_cfg: REINFORCEConfig, batches: int) -> dict:
    """Each option's policy gradient on the same `batches` rollouts of the trainer's current policy."""
    net = trainer.agent.net
    params = [p for m in (net.actor_encoder, net.action_head) for p in m.parameters()]
    rollouts = [trainer.collect() for _ in range(batches)]
    cfgs = {key: replace(agent_cfg, normalize_advantages=False, **agent) for key, _, agent in OPTIONS}
    with torch.no_grad():  # the moving-average baseline's resting point: mean discounted reward-to-go
        to_go = [reinforce_weights(cfgs["discount"], r, None, 0.0)[0][r.valid] for r in rollouts]
        moving_average = float(torch.cat(to_go).mean())
    grads: dict[str, list[np.ndarray]] = {key: [] for key in cfgs}
    for rollout in rollouts:
        dist, values, _ = net(rollout.obs, rollout.state, rollout.starts)
        log_probs = dist.log_prob(rollout.actions)[rollout.valid]
        for key, cfg in cfgs.items():
            weights = reinforce_weights(cfg, rollout, values, moving_average)[1][rollout.valid]
            grad = torch.autograd.grad(-(weights * log_probs).mean(), params, retain_graph=True)
            grads[key].append(torch.cat([g.flatten() for g in grad]).double().cpu().numpy())
    out = {
        "episodes_per_batch": int(np.mean([r.episodes for r in rollouts])),
        "moving_average_baseline": moving_average,
    }
    out["episode_return"] = float(np.mean(trainer.state.recent_returns))
    for key, g in grads.items():
        g = np.stack(g)
        variance = float(g.var(axis=0, ddof=1).sum())
        out[key] = {"variance": variance, "relative_variance": variance / max(float(np.sum(g.mean(0) ** 2)), 1e-30)}
    return out


def _curve(run_dir: Path) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    points = [(r["step"], r["train/episode_return"]) for r in rows if "train/episode_return" in r]
    return [s for s, _ in points], [v for _, v in points]


def write_results(out: Path, base, runs: dict, results: list[dict]) -> dict:
    from rl_lab.figures import pyplot, save_figure

    curves = {key: _curve(out / "runs" / key) for key in runs}
    summary = {"options": [{"key": k, "label": label} for k, label, _ in OPTIONS], "snapshots": results}
    summary["curves"] = {key: {"steps": s, "episode_return": v} for key, (s, v) in curves.items()}
    summary["final_eval"] = {k: json.loads((out / "runs" / k / "summary.json").read_text())["final_eval"] for k in runs}
    write_atomic(out / "variance.json", json.dumps(summary, indent=2) + "\n")

    fig, (left, right) = pyplot().subplots(1, 2, figsize=(13, 4.5), dpi=120)
    for key, label, _ in OPTIONS:
        left.plot(*curves[key], ".-", label=label)
    left.set(xlabel="environment steps", ylabel="episode return (recent mean)", title="REINFORCE learning curves")
    width = 0.8 / len(OPTIONS)
    for i, (key, label, _) in enumerate(OPTIONS):
        x = np.arange(len(results)) + (i - (len(OPTIONS) - 1) / 2) * width
        right.bar(x, [r[key]["variance"] for r in results], width, label=label)
    right.set_yscale("log")
    right.set_xticks(
        np.arange(len(results)), [f"step {r['step']}\n(return {r['episode_return']:.0f})" for r in results]
    )
    right.set(ylabel="tr Cov[gradient] (log scale)", title="Policy-gradient variance at fixed snapshots")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{base.env.id}: {base.agent.episodes_per_update} episodes per batch")
    figure = save_figure(fig, out / "variance_study.png")

    logger = RunLogger(
        out,
        {"config": base.to_dict(), "options": [k for k, _, _ in OPTIONS]},
        wandb_mode=base.logger.wandb.mode,
        project=base.logger.wandb.project,
        entity=base.logger.wandb.entity,
        run_name=f"variance-study-{out.name}",
        progress=False,
    )
    try:
        for r in results:
            row = {f"variance/{k}": r[k]["variance"] for k, _, _ in OPTIONS}
            row.update({f"relative_variance/{k}": r[k]["relative_variance"] for k, _, _ in OPTIONS})
            logger.log(r["step"], row)
        _log_figure(figure)
    finally:
        logger.close()
    print(format_table(results))
    print(f"figure: {figure}")
    return summary


def _log_figure(figure: Path) -> None:
    """Attach the figure to the study's W&B run (the one RunLogger started); a failure only warns."""
    wandb = sys.modules.get("wandb")  # imported by RunLogger unless W&B is disabled
    if wandb is None or wandb.run is None:
        return
    try:
        wandb.run.log({"variance_study": wandb.Image(str(figure))})
    except Exception as err:
        print(f"wandb: could not log the figure ({type(err).__name__}: {err}); it is in {figure}", file=sys.stderr)


def format_table(results: list[dict]) -> str:
    head = f"{'option':<28}" + "".join(f"{'step ' + str(r['step']):>24}" for r in results)
    lines = ["Policy-gradient variance tr Cov[g] (relative to |E g|^2) across batches", head, "-" * len(head)]
    for key, label, _ in OPTIONS:
        cells = "".join(f"{r[key]['variance']:>13.3g} ({r[key]['relative_variance']:>7.3g})" for r in results)
        lines.append(f"{label:<28}{cells}")
    return "\n".join(lines)

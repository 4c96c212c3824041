"""Data-parallel PPO: `torchrun --nproc_per_node 2` with gloo on the CPU.

Two processes with 2 CartPole envs each are one process with 4 envs: process r seeds its envs as envs 2r, 2r + 1
of that process, draws its actions from the noise that process would draw for them, and the rollouts are pooled
by gradient all-reduce, gathered advantage statistics and pooled episode counters. With full-batch minibatches
the updates are that process's updates, so the run equals it up to float rounding (the order of sums differs), the
replicas stay bit-identical, and `--resume` under torchrun continues to the uninterrupted result byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from test_actor_critic import killed_after_first_checkpoint
from test_ppo import SMALL_LSTM, ppo_trainer

import rl_lab.distributed as distributed
from rl_lab.checkpoint import load_checkpoint
from rl_lab.errors import UserError
from rl_lab.loader import build_trainer, load_config
from rl_lab.runs import train_new

CARTPOLE_PPO = REPO / "configs" / "cartpole_ppo.yaml"
ENVS = 2  # per process; the single process has 2 * ENVS
SETTINGS = [
    "device=cpu",
    "torch_threads=1",
    "logger.wandb.mode=disabled",
    "logger.progress=false",
    "agent.encoder.kwargs.hidden_sizes=[16]",
    "agent.n_steps=16",
    "agent.batch_size=64",  # 2 processes x 2 envs x 16 steps: one full-batch minibatch, 32 samples per process
    "agent.epochs=3",
    "agent.optim.schedule=constant",  # the second update moves the weights as much as the first
    "agent.clip_range_end=null",
    "agent.target_kl=1.0",  # never reached, but every minibatch all-reduces its KL to decide
    "train.total_steps=128",  # two rollouts of 64 global env steps, two updates
    "run.checkpoint_every=64",
    "run.keep_checkpoints=5",
    "eval.every=0",
    "eval.episodes=2",
    "logger.log_every=64",
]
# rows of metrics.jsonl that come from the rollouts alone: equal exactly when the rollouts are the same
FROM_ROLLOUTS = ("train/episodes", "train/episode_return", "train/episode_length", "train/updates", "train/kl_stop")


def _torchrun(*args, cwd) -> subprocess.Popen:
    """`torchrun --nproc_per_node 2 -m rl_lab.cli ARGS`, started."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "rl_lab.cli", *map(str, args)]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(process: subprocess.Popen) -> str:
    """The stdout of a started command that exited 0."""
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun stops its workers on SIGTERM
        out, err = process.communicate()
    assert process.returncode == 0, out + err
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process run, the 1-process run with twice the envs (trained here meanwhile), and the 2-process run cut
    back to its first checkpoint and resumed under torchrun."""
    root = tmp_path_factory.mktemp("ddp_ppo")
    ddp, single, cut = root / "ddp", root / "single", root / "cut"
    started = _torchrun("train", CARTPOLE_PPO, *SETTINGS, f"env.num_envs={ENVS}", f"run.dir={ddp}", cwd=root)
    train_new(CARTPOLE_PPO, [*SETTINGS, f"env.num_envs={2 * ENVS}", f"run.dir={single}"])
    trained = _finished(started)
    assert killed_after_first_checkpoint(ddp, cut) == 2
    resumed = _finished(_torchrun("train", "--resume", cut, cwd=root))
    return {"ddp": ddp, "single": single, "cut": cut, "trained": trained, "resumed": resumed}


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _net(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / f"step_{step:010d}")[0]["agent"]["net"]


def test_only_rank_0_reports_and_the_replicas_end_identical(runs):
    assert runs["trained"].count("Final evaluation") == 1
    summary = json.loads((runs["ddp"] / "summary.json").read_text())
    assert summary["processes"] == 2
    # max over parameters of |rank 1's - rank 0's|, all-reduced: exactly 0.0 when the replicas are bit-identical
    assert summary["replica_max_abs_diff"] == 0.0
    assert summary["env_steps"] == 128  # counted over both processes: total_steps is global


def test_two_processes_equal_one_process_with_twice_the_envs(runs):
    ddp, single = runs["ddp"], runs["single"]
    rows, reference = _rows(ddp), _rows(single)
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == [64, 128, 128]
    for row, ref in zip(rows, reference, strict=True):
        assert row.keys() == ref.keys()
        for key, value in ref.items():
            if key in FROM_ROLLOUTS or key.startswith("eval/"):
                assert row[key] == value, (row["step"], key)  # the same episodes, the same greedy evaluation
            else:  # means over the same 64 samples summed in another order (float32): rounding only
                assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (row["step"], key)
    assert rows[-1]["train/episodes"] > 0
    ddp_summary, single_summary = (json.loads((d / "summary.json").read_text()) for d in (ddp, single))
    assert ddp_summary["final_eval"] == single_summary["final_eval"]
    assert ddp_summary["episodes"] == single_summary["episodes"]
    # Weights after two updates of 3 Adam steps (lr 1e-3, so each step moves a weight by up to ~1e-3): they differ
    # only by the rounding of the gradients' sums, which Adam passes on as at most ~1e-7 relative per step; 1e-6 is
    # a thousandth of one step, while the second update alone moves them by far more than that.
    after, before = _net(single, 128), _net(single, 64)
    for key, tensor in _net(ddp, 128).items():
        assert (tensor - after[key]).abs().max() <= 1e-6, key
    assert max((after[k] - before[k]).abs().max().item() for k in after) > 1e-3


def test_resume_under_torchrun_continues_to_the_uninterrupted_run(runs):
    ddp, cut = runs["ddp"], runs["cut"]
    assert runs["resumed"].count("resuming") == 1  # rank 0 alone
    assert (cut / "metrics.jsonl").read_bytes() == (ddp / "metrics.jsonl").read_bytes()
    final = cut / "checkpoints" / "step_0000000128"
    for name in ("model.safetensors", "arrays.safetensors"):  # weights, optimiser, RNG; both processes' episodes
        assert (final / name).read_bytes() == (ddp / "checkpoints" / final.name / name).read_bytes(), name
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["replica_max_abs_diff"] == 0.0
    assert summary["steps_this_process"] == 64
    assert summary["final_eval"] == json.loads((ddp / "summary.json").read_text())["final_eval"]


def test_checkpoint_holds_every_process_envs_and_is_refused_by_another_process_count(runs):
    _, arrays, meta = load_checkpoint(runs["ddp"] / "checkpoints" / "step_0000000064")
    assert meta["processes"] == 2
    assert len(meta["envs"]) == 2 * ENVS and arrays["episode_return"].shape == (2 * ENVS,)
    with pytest.raises(UserError, match="written by 2 data-parallel process.*torchrun --nproc_per_node 2"):
        build_trainer(load_config(runs["cut"] / "config.yaml")).resume(runs["cut"] / "checkpoints" / "step_0000000064")


# ------------------------------------------------------------------------------------------- in one process


@pytest.mark.parametrize("draw", [lambda p: torch.multinomial(p, 1), torch.randn_like])
def test_each_process_draws_its_rows_of_the_global_batch(draw):
    """own_rows: process r of 2, drawing from the same RNG state, gets rows of what one process drawing for both
    processes' rows would get (categorical sampling, Gaussian noise)."""
    rows = torch.rand(6, 3) + 0.1
    torch.manual_seed(1)
    whole = draw(rows)
    for rank in range(2):
        torch.manual_seed(1)
        mine = distributed.own_rows(draw, rows[rank * 3 : (rank + 1) * 3], fill=1.0, shard=(rank, 2))
        assert torch.equal(mine, whole[rank * 3 : (rank + 1) * 3])


def _sequences(grids, first_env: int = 0) -> list[list[tuple[int, int]]]:
    """Each minibatch's sequences (single samples for a feed-forward policy) as (first step, env) pairs."""
    return [[(int(t), first_env + int(e)) for t, e in zip(time[0], env[0], strict=True)] for time, env in grids]


@pytest.mark.parametrize("recurrent", [False, True])
def test_each_process_takes_its_share_of_the_single_process_order(recurrent):
    """With the RNG of one process with 2 x 3 envs, process r of 2 (3 envs) visits its own sequences in that
    process's order, batch_size / 2 of them per minibatch, and leaves the RNG as that process would."""
    encoder = {"name": "lstm", "kwargs": SMALL_LSTM} if recurrent else {"name": "mlp"}
    agent = ppo_trainer("CartPole-v1", 1, n_steps=8, batch_size=8, seq_len=4 if recurrent else None, encoder=encoder)
    agent = agent.agent
    steps, envs, per_batch = 8, 3, 1 if recurrent else 4  # half of 8 // seq_len sequences, or of 8 samples
    torch.manual_seed(0)
    single = [s for batch in _sequences(agent.minibatches(steps, 2 * envs)) for s in batch]
    after = torch.rand(1)
    for rank in range(2):
        agent.rank, agent.world = rank, 2
        torch.manual_seed(0)
        batches = _sequences(agent.minibatches(steps, envs), first_env=rank * envs)
        assert torch.equal(torch.rand(1), after)  # the RNG drawn as in the single process
        assert [s for batch in batches for s in batch] == [s for s in single if s[1] // envs == rank]
        assert [len(batch) for batch in batches] == [per_batch] * (len(single) // 2 // per_batch)


def test_agents_without_data_parallel_training_refuse_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any process group is joined
    with pytest.raises(UserError, match="agent dqn trains in one process; run it without torchrun"):
        build_trainer(load_config(REPO / "configs" / "cartpole_dqn.yaml", ["device=cpu"]))

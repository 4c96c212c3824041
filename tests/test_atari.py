"""The Atari pipeline: shapes and reset semantics, learning signals vs raw scores, CLI errors, exact resume, video."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, rl_lab_command, run_rl_lab, user_error_line

from rl_lab.envs import make_vector_env
from rl_lab.envs.atari import LearningSignals, human_normalized, learning_signals

PONG = REPO / "configs" / "pong_dqn.yaml"
# A few hundred steps of Breakout (sticky actions, lives, FIRE) with a tiny CNN: every piece of the Atari path.
TINY_ATARI = [
    "env.id=ALE/Breakout-v5",
    "env.kwargs.max_num_frames_per_episode=1200",
    "env.vector=sync",  # gymnasium's envs, whose episodes a checkpoint holds: the resume is exact
    "device=cpu",
    "train.total_steps=400",
    "agent.learning_starts=100",
    "agent.buffer_size=300",
    "agent.batch_size=8",
    "agent.target_update_interval=50",
    "agent.exploration_fraction=0.5",
    "agent.encoder.kwargs={features: 16, convs: [[4, 8, 4], [4, 4, 2]]}",
    "agent.double_dqn=true",
    "agent.dueling=true",
    "agent.prioritized=true",
    "agent.n_step=3",
    "eval.episodes=1",
    "eval.every=0",
    "logger.log_every=100",
    "logger.wandb.mode=disabled",
    "logger.progress=false",
    "run.checkpoint_every=200",
]


def test_pipeline_shapes_dtypes_and_a_reset_stack_of_one_frame():
    envs = make_vector_env("ALE/Breakout-v5", 2, "sync")  # gymnasium's wrappers (2 envs would default to ale-py's)
    obs, info = envs.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert envs.single_action_space.n == 4
    assert all((obs[:, i] == obs[:, 3]).all() for i in range(3))  # the stack starts as copies of the first frame
    assert info["lives"].tolist() == [5, 5]
    obs, *_ = envs.step(np.array([2, 3]))
    assert not (obs[:, 3] == obs[:, 2]).all()  # the newest frame moved on
    np.testing.assert_array_equal(obs[:, :3], np.repeat(obs[:, :1], 3, axis=1))  # older frames shift in


def test_life_loss_is_terminal_for_learning_only_and_the_score_stays_raw():
    envs = make_vector_env("ALE/Breakout-v5", 1, max_num_frames_per_episode=20_000)
    signals = learning_signals("ALE/Breakout-v5", {})
    _, info = envs.reset(seed=3)
    signals.start(info)
    rng = np.random.default_rng(0)
    lives, life_ends, score, clipped = 5, 0, 0.0, 0.0
    while True:
        _, rewards, terminated, truncated, info = envs.step(rng.integers(4, size=1))
        learn_rewards, learn_terminated = signals(rewards, terminated, truncated, info)
        score += rewards[0]
        clipped += learn_rewards[0]
        assert not truncated[0]
        if terminated[0]:  # game over: the env ends the episode and starts a new game with 5 lives
            assert learn_terminated[0] and info["lives"][0] == 5
            break
        if info["lives"][0] < lives:  # a life lost: terminal for the learner, but the same game goes on
            assert learn_terminated[0]
            life_ends += 1
        else:
            assert not learn_terminated[0]
        lives = info["lives"][0]
    assert life_ends == 4  # lives 5 -> 1 inside the episode, the fifth ends the game
    assert score == clipped  # Breakout's bottom rows are worth 1
    assert score > 0
    big = LearningSignals(clip=True)(np.array([7.0, -3.0, 0.0]), np.zeros(3, bool), np.zeros(3, bool), {})
    assert big[0].tolist() == [1.0, -1.0, 0.0]


def test_human_normalized_score():
    assert human_normalized("PongNoFrameskip-v4", 9.3) == pytest.approx(1.0)
    assert human_normalized("ALE/Breakout-v5", 1.7) == pytest.approx(0.0)
    assert human_normalized("ALE/Tetris-v5", 10.0) is None and human_normalized("CartPole-v1", 500.0) is None


def test_bad_game_name_is_exit_2_with_close_matches(tmp_path):
    result = run_rl_lab("train", PONG, "env.id=ALE/Pongg-v5", f"run.dir={tmp_path / 'r'}", cwd=tmp_path)
    line = user_error_line(result)
    assert "ALE/Pongg-v5" in line and "ALE/Pong-v5" in line
    assert not (tmp_path / "r").exists()


def test_replay_that_cannot_fit_is_exit_2_before_anything_is_written(tmp_path):
    result = run_rl_lab(
        "train",
        PONG,
        "agent.buffer_size=1000000000",
        "train.total_steps=2000000000",
        "device=cpu",
        f"run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    line = user_error_line(result)
    assert "agent.buffer_size=1000000000" in line and "GiB" in line
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def atari_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("atari")
    result = run_rl_lab("train", PONG, *TINY_ATARI, f"run.dir={root / 'full'}", cwd=root, timeout=600)
    assert result.returncode == 0, result.stderr
    return root / "full"


def test_atari_run_logs_raw_scores_and_resumes_to_the_same_result(atari_run, tmp_path):
    rows = [json.loads(line) for line in (atari_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [100, 200, 300, 400, 400]
    assert "eval/return_mean" in rows[-1] and "eval/human_normalized" in rows[-1]
    # as if killed after the checkpoint at step 200: mid-episode, with replay, priorities and sticky actions
    killed = tmp_path / "killed"
    shutil.copytree(atari_run, killed)
    (killed / "summary.json").unlink()
    (killed / "checkpoints" / "latest").write_text("step_0000000200\n")
    result = run_rl_lab("train", "--resume", killed, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (killed / "metrics.jsonl").read_text() == (atari_run / "metrics.jsonl").read_text()
    final = "checkpoints/step_0000000400/model.safetensors"
    assert (killed / final).read_bytes() == (atari_run / final).read_bytes()


def test_eval_video_writes_an_mp4_and_logs_it_to_the_offline_wandb_run(atari_run, tmp_path):
    import imageio.v2 as imageio
    import wandb
    from test_logger import read_wandb_records

    run_dir = tmp_path / "run"
    shutil.copytree(atari_run, run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["logger"]["wandb"]["mode"] = "offline"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_DISABLE_WEAVE="true")
    result = subprocess.run(
        rl_lab_command("eval", run_dir, "--episodes", "1", "--video"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (video,) = (run_dir / "videos").glob("*.mp4")
    frames = imageio.mimread(video, memtest=False)
    assert len(frames) > 10 and frames[0].shape == (210, 160, 3)
    assert f"video: {video}" in result.stdout
    wandb.teardown()
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    history = [
        {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in read_wandb_records(log)
        if r.HasField("history")
    ]
    (logged,) = [h for h in history if "eval/video._type" in h]
    assert logged["eval/video._type"] == "videos"
    (entry,) = logged["eval/video.videos"]
    assert entry["_type"] == "video-file" and entry["path"].endswith(".mp4")
    assert (log.parent / "files" / entry["path"]).stat().st_size == entry["size"] > 0


def test_ale_vector_env_run_resumes_with_model_optimiser_counters_and_replay_and_restarts_its_episodes(tmp_path):
    """Two Breakout envs run on ale-py's AtariVectorEnv (env.vector auto), whose emulators cannot be saved. A run
    killed after a checkpoint resumes with its model, optimiser, counters and replay (priorities too) as saved, its
    episodes in progress restarted (each env's newest stored transition cut as truncated), says so in one line,
    and trains on to the end. The exact-resume test above asks for env.vector=sync."""
    from rl_lab import runs
    from rl_lab.checkpoint import load_checkpoint
    from rl_lab.envs import vector_kind

    assert vector_kind("ALE/Breakout-v5", 2) == "ale" and vector_kind("ALE/Breakout-v5", 1) == "sync"
    full, cut = tmp_path / "full", tmp_path / "cut"
    ale = ["env.num_envs=2", "env.vector=auto"]
    result = run_rl_lab("train", PONG, *TINY_ATARI, *ale, f"run.dir={full}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    shutil.copytree(full, cut)
    (cut / "summary.json").unlink()
    (cut / "checkpoints" / "latest").write_text("step_0000000200\n")

    run, checkpoint, note = runs.reopen_run(cut)
    try:
        assert "episodes in progress were restarted" in note and "\n" not in note
        trainer, agent = run.trainer, run.trainer.agent
        assert type(trainer.envs).__name__ == "AtariVectorEnv"
        torch_state, arrays, meta = load_checkpoint(checkpoint)
        for name, saved in torch_state["agent"]["q_net"].items():
            assert torch.equal(agent.q_net.state_dict()[name], saved), name
        saved_optim = torch_state["agent"]["optimizer"]["state"]
        for key, value in agent.optimizer.state_dict()["state"].items():
            assert torch.equal(value["exp_avg"], saved_optim[key]["exp_avg"])
        assert trainer.state.step == 200 and trainer.state.episodes == meta["episodes"]
        replay = trainer.buffer.state_dict()
        saved = {k.removeprefix("replay."): v for k, v in arrays.items() if k.startswith("replay.")}
        assert set(replay) == set(saved)
        for name in set(replay) - {"truncated", "rings"}:
            np.testing.assert_array_equal(replay[name], saved[name], err_msg=name)
        cut_now = replay["truncated"] & ~saved["truncated"]
        assert cut_now.sum(axis=1).tolist() == [1, 1]  # one transition per env: the newest one
        assert trainer.buffer.buffer.episode_start.all()
        assert (trainer.episode_length == 0).all() and (trainer.obs[:, :3] == 0).all()  # fresh, zero-padded stacks
    finally:
        run.release()
        run.trainer.envs.close()
    result = run_rl_lab("train", "--resume", cut, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if "restarted" in line]) == 1, result.stdout
    rows = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [100, 200, 300, 400, 400]

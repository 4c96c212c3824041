"""Checkpoints (safetensors + JSON, atomic, damage -> exit 2), determinism, and resume-after-kill == uninterrupted."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import CARTPOLE_CONFIG, TINY, run_many, run_rl_lab, start_rl_lab, tree_bytes, user_error_line

from rl_lab.checkpoint import (
    flatten_state,
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
    unflatten_state,
)
from rl_lab.errors import UserError

# ------------------------------------------------------------------------------------------------ in process


def adam_after_steps(seed: int = 0, steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Adam]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)  # as DQN builds it
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        optimizer.step()
    return model, optimizer


def test_flatten_unflatten_adam_state_keeps_int_keys_and_continues_identically():
    model, optimizer = adam_after_steps()
    state = optimizer.state_dict()
    tensors, skeleton = flatten_state(state)
    # as in a checkpoint: tensors travel through safetensors, the skeleton through JSON
    tensors = safetensors.torch.load(safetensors.torch.save(tensors))
    restored = unflatten_state(tensors, json.loads(json.dumps(skeleton)))

    assert list(restored["state"]) == [0, 1, 2, 3]  # int keys, not "0", "1", ...
    for key, entry in state["state"].items():
        assert set(restored["state"][key]) == set(entry)
        for name, value in entry.items():
            assert torch.equal(restored["state"][key][name], value), (key, name)
    assert restored["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert restored["param_groups"][0]["lr"] == 1e-2

    # a fresh optimizer loaded from the round trip takes exactly the step the original takes
    copy = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    copy.load_state_dict(model.state_dict())
    copy_optimizer = torch.optim.Adam(copy.parameters(), lr=1e-2, fused=True)
    copy_optimizer.load_state_dict(restored)
    x = torch.randn(16, 4)
    for m, opt in ((model, optimizer), (copy, copy_optimizer)):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
    for p, q in zip(model.parameters(), copy.parameters(), strict=True):
        assert torch.equal(p, q)


def sample_checkpoint() -> tuple[dict, dict, dict]:
    model, optimizer = adam_after_steps()
    agent = {"q_net": model.state_dict(), "optimizer": optimizer.state_dict()}
    torch_state = {"agent": agent, "rng": {"torch": torch.get_rng_state()}}
    arrays = {
        "replay.obs": np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32),
        "replay.actions": np.arange(5, dtype=np.int64),
        "replay.terminated": np.array([True, False, False, True, False]),
        "frames": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    }
    meta = {"step": 7, "recent_returns": [1.5, 2.0], "nested": {"none": None, "text": "x", "flag": True}}
    return torch_state, arrays, meta


def assert_nested_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_nested_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_nested_equal(x, y)
    else:
        assert a == b and type(a) is type(b), (a, b)


def test_save_load_round_trip(tmp_path):
    torch_state, arrays, meta = sample_checkpoint()
    path = save_checkpoint(tmp_path / "checkpoints", 7, torch_state, arrays, meta)
    assert path == latest_checkpoint(tmp_path / "checkpoints")
    loaded_torch, loaded_arrays, loaded_meta = load_checkpoint(path)
    assert_nested_equal(torch_state, loaded_torch)
    assert set(loaded_arrays) == set(arrays)
    for name, array in arrays.items():
        assert loaded_arrays[name].dtype == array.dtype, name
        np.testing.assert_array_equal(loaded_arrays[name], array)
    assert loaded_meta == meta
    assert json.loads((path / "state.json").read_text())["step"] == 7  # plain JSON, nothing pickled


def test_keep_latest_and_no_temporary_files(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    torch_state, arrays, meta = sample_checkpoint()
    for step in range(1000, 6000, 1000):
        save_checkpoint(checkpoints, step, torch_state, arrays, {**meta, "step": step}, keep=2)
        assert latest_checkpoint(checkpoints).name == f"step_{step:010d}"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_0000004000", "step_0000005000"]
    # the same step saved again (the final checkpoint right after a periodic one) replaces it
    save_checkpoint(checkpoints, 5000, torch_state, arrays, {**meta, "step": 5000, "again": True}, keep=2)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_0000004000", "step_0000005000"]
    assert load_checkpoint(latest_checkpoint(checkpoints))[2]["again"] is True


def test_temporary_dir_of_a_killed_save_is_never_used_and_is_cleaned_up(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    torch_state, arrays, meta = sample_checkpoint()
    save_checkpoint(checkpoints, 1000, torch_state, arrays, {**meta, "step": 1000})
    stale = checkpoints / ".tmp-step_0000002000-999999"  # a process killed while writing step 2000
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(checkpoints).name == "step_0000001000"
    assert load_checkpoint(latest_checkpoint(checkpoints))[2] == {**meta, "step": 1000}
    save_checkpoint(checkpoints, 2000, torch_state, arrays, {**meta, "step": 2000})  # the resumed process saves
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_0000001000", "step_0000002000"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "model_truncated": lambda ckpt: _truncate(ckpt / "model.safetensors"),
    "model_empty": lambda ckpt: (ckpt / "model.safetensors").write_bytes(b""),
    "model_missing": lambda ckpt: (ckpt / "model.safetensors").unlink(),
    "arrays_truncated": lambda ckpt: _truncate(ckpt / "arrays.safetensors"),
    "state_binary_garbage": lambda ckpt: (ckpt / "state.json").write_bytes(b"\x00\xff\xfe garbage"),
    "state_truncated": lambda ckpt: _truncate(ckpt / "state.json"),
    "state_not_an_object": lambda ckpt: (ckpt / "state.json").write_text("[1, 2, 3]"),
    "state_old_format": lambda ckpt: (ckpt / "state.json").write_text('{"format_version": 0}'),
    "state_names_missing_tensor": lambda ckpt: (ckpt / "state.json").write_text(
        '{"format_version": 1, "step": 1, "meta": {}, "torch_state": {"tensor": "no.such.tensor"}}'
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_a_user_error(tmp_path, damage):
    torch_state, arrays, meta = sample_checkpoint()
    path = save_checkpoint(tmp_path / "checkpoints", 1, torch_state, arrays, {**meta, "step": 1})
    DAMAGE[damage](path)
    with pytest.raises(UserError, match=r"checkpoint .*step_0000000001"):
        load_checkpoint(path)


def test_module_state_mismatch_is_a_user_error_naming_the_shapes():
    small, big = torch.nn.Linear(4, 8), torch.nn.Linear(4, 16)
    with pytest.raises(UserError, match=r"weight has shape \(8, 4\), the model expects \(16, 4\)"):
        load_module_state(big, small.state_dict(), "q_net")
    with pytest.raises(UserError, match="missing"):
        load_module_state(torch.nn.Sequential(small, torch.nn.Linear(8, 2)), small.state_dict(), "q_net")


# ------------------------------------------------------------------------ damaged run directories, via the CLI


def _latest(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def _hidden_64(run_dir: Path) -> None:
    path = run_dir / "config.yaml"
    text = path.read_text()
    assert "- 32\n" in text
    path.write_text(text.replace("- 32\n", "- 64\n"))


RUN_DAMAGE = {
    "model_truncated": lambda d: _truncate(_latest(d) / "model.safetensors"),
    "state_garbage": lambda d: (_latest(d) / "state.json").write_bytes(b"\x00garbage{{"),
    "arrays_truncated": lambda d: _truncate(_latest(d) / "arrays.safetensors"),
    "latest_points_nowhere": lambda d: (d / "checkpoints" / "latest").write_text("step_0000099999\n"),
    "hidden_size_edited": _hidden_64,  # the checkpoint was made by a different network
    "finished": lambda d: None,  # resuming a finished run would log its end twice
}
# (damage, command, substrings of the error line); "{ckpt}" is the latest checkpoint's path
RUN_CASES = [
    ("model_truncated", "eval", ["{ckpt}", "corrupt"]),
    ("model_truncated", "resume", ["{ckpt}", "corrupt"]),
    ("state_garbage", "eval", ["{ckpt}", "corrupt"]),
    ("state_garbage", "resume", ["{ckpt}", "corrupt"]),
    ("arrays_truncated", "resume", ["{ckpt}", "corrupt"]),
    ("latest_points_nowhere", "eval", ["step_0000099999", "missing"]),
    ("hidden_size_edited", "eval", ["q_net", "does not match", "(64, 4)", "(32, 4)"]),
    ("hidden_size_edited", "resume", ["q_net", "does not match", "(64, 4)", "(32, 4)"]),
    ("finished", "resume", ["already finished", "rl-lab eval"]),
]


@pytest.fixture(scope="module")
def damaged_run_results(tiny_runs, tmp_path_factory):
    """Copies of the tiny run, damaged; returns {case: (result, run_dir, bytes of the run before the command)}."""
    root = tmp_path_factory.mktemp("damaged")
    commands, cases = [], {}
    for damage, command, needles in RUN_CASES:
        run_dir = root / f"{damage}-{command}"
        shutil.copytree(tiny_runs["base"], run_dir)
        if damage != "finished":
            (run_dir / "summary.json").unlink()  # as if killed before the end, so resume gets to the checkpoint
        ckpt = _latest(run_dir)
        if command == "resume":  # its only checkpoint: nothing to fall back to (see test_robustness for that)
            for other in (run_dir / "checkpoints").glob("step_*"):
                if other != ckpt:
                    shutil.rmtree(other)
        RUN_DAMAGE[damage](run_dir)
        commands.append(("eval", run_dir, "--episodes", "2") if command == "eval" else ("train", "--resume", run_dir))
        cases[(damage, command)] = (run_dir, tree_bytes(run_dir), [n.format(ckpt=ckpt) for n in needles])
    results = run_many(commands, cwd=root)
    return {case: (result, *cases[case]) for case, result in zip(cases, results, strict=True)}


@pytest.mark.parametrize(
    ("damage", "command"), [case[:2] for case in RUN_CASES], ids=[f"{d}-{c}" for d, c, _ in RUN_CASES]
)
def test_damaged_run_is_exit_2_one_line_and_left_untouched(damaged_run_results, damage, command):
    result, run_dir, before, needles = damaged_run_results[(damage, command)]
    line = user_error_line(result)
    for needle in needles:
        assert needle in line, f"{needle!r} missing from: {line}"
    assert tree_bytes(run_dir) == before, "a failed command modified the run directory"


# ------------------------------------------------------------------------------------------------ determinism


def _summary_without_timing(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("wall_time_s", "sps", "steps_this_process"):
        assert key in summary
        del summary[key]
    return summary


def test_same_seed_same_metrics_and_weights_different_seed_differs(tiny_runs):
    base, twin, other = tiny_runs["base"], tiny_runs["twin"], tiny_runs["seed1"]
    metrics = (base / "metrics.jsonl").read_bytes()
    assert len(metrics.splitlines()) == 7
    assert (twin / "metrics.jsonl").read_bytes() == metrics
    assert _summary_without_timing(twin) == _summary_without_timing(base)
    assert (_latest(twin) / "model.safetensors").read_bytes() == (_latest(base) / "model.safetensors").read_bytes()
    assert (other / "metrics.jsonl").read_bytes() != metrics
    assert (_latest(other) / "model.safetensors").read_bytes() != (_latest(base) / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------- resume after a SIGKILL

RESUME_TOTAL = 10_000
# two envs: the vector env snapshot, replay of several envs and step counting in twos are all part of the resume
RESUME_ARGS = [*TINY, f"train.total_steps={RESUME_TOTAL}", "env.num_envs=2", "seed=3"]
KILL_AFTER = 3000  # a checkpoint after the 2000-slot replay buffer has wrapped around


def _checkpoint_step(run_dir: Path) -> int:
    return int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))


def _logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory) -> dict:
    """An uninterrupted run and the same run SIGKILLed after its checkpoint at >= KILL_AFTER, then resumed."""
    root = tmp_path_factory.mktemp("resume")
    full_dir, killed_dir = root / "full", root / "killed"
    full = start_rl_lab("train", CARTPOLE_CONFIG, *RESUME_ARGS, f"run.dir={full_dir}", cwd=root)
    killed = start_rl_lab("train", CARTPOLE_CONFIG, *RESUME_ARGS, f"run.dir={killed_dir}", cwd=root)
    try:
        deadline = time.monotonic() + 300
        while True:
            if killed.poll() is not None:
                out, err = killed.communicate()
                pytest.fail(f"the run to be killed exited first ({killed.returncode}); make it longer\n{out}\n{err}")
            if (killed_dir / "checkpoints" / "latest").is_file():
                step = _checkpoint_step(killed_dir)
                # kill between checkpoints, once rows past the checkpoint were logged: resume must drop them
                if step >= KILL_AFTER and max(_logged_steps(killed_dir), default=0) > step:
                    break
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        killed.communicate()
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.communicate()
    killed_state = {
        "returncode": killed.returncode,
        "checkpoint_step": _checkpoint_step(killed_dir),
        "logged_steps": _logged_steps(killed_dir),
        "finished": (killed_dir / "summary.json").exists(),
    }
    resumed = run_rl_lab("train", "--resume", killed_dir, cwd=root)
    full_out, full_err = full.communicate(timeout=600)
    assert full.returncode == 0, full_err
    return {"full": full_dir, "killed": killed_dir, "killed_state": killed_state, "resumed": resumed}


def test_killed_run_was_interrupted_mid_way(resumed_runs):
    state = resumed_runs["killed_state"]
    assert state["returncode"] == -signal.SIGKILL
    assert not state["finished"]
    assert KILL_AFTER <= state["checkpoint_step"] < RESUME_TOTAL


def test_resume_after_kill_gives_the_uninterrupted_metrics_and_summary(resumed_runs):
    resumed: subprocess.CompletedProcess = resumed_runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    full, killed = resumed_runs["full"], resumed_runs["killed"]
    assert (killed / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
    assert _summary_without_timing(killed) == _summary_without_timing(full)
    steps_this_process = json.loads((killed / "summary.json").read_text())["steps_this_process"]
    assert steps_this_process == RESUME_TOTAL - resumed_runs["killed_state"]["checkpoint_step"]


def test_resume_after_kill_ends_with_the_uninterrupted_weights_and_clean_checkpoints(resumed_runs):
    full, killed = resumed_runs["full"], resumed_runs["killed"]
    assert _latest(killed).name == _latest(full).name == f"step_{RESUME_TOTAL:010d}"
    for name in ("model.safetensors", "arrays.safetensors"):  # networks, optimizer, RNG; replay and episodes
        assert (_latest(killed) / name).read_bytes() == (_latest(full) / name).read_bytes(), name
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == sorted(
        p.name for p in (full / "checkpoints").iterdir()
    )  # `latest` and the newest run.keep_checkpoints=2, no temporary directories
    assert (killed / "plots" / "learning_curve.png").is_file()


def _copy_as_unfinished(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    (dest / "summary.json").unlink()
    return dest


def test_resume_after_kill_between_final_checkpoint_and_summary(resumed_runs, tmp_path):
    full = resumed_runs["full"]
    run_dir = _copy_as_unfinished(full, tmp_path / "run")
    result = run_rl_lab("train", "--resume", run_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()


def test_resume_with_fewer_envs_than_the_checkpoint_is_a_user_error(resumed_runs, tmp_path):
    run_dir = _copy_as_unfinished(resumed_runs["full"], tmp_path / "run")
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("num_envs: 2", "num_envs: 1"))
    before = tree_bytes(run_dir)
    result = run_rl_lab("train", "--resume", run_dir, cwd=tmp_path)
    assert "envs" in user_error_line(result)
    assert tree_bytes(run_dir) == before


def test_a_finished_run_trains_on_to_a_larger_total_steps(tiny_runs, tmp_path):
    """`--resume RUN --total-steps N`: the finished 3000-step run continues from its final checkpoint to N (its past
    metrics untouched, its old summary kept), with config.yaml saying N; a smaller N or a missing --resume is exit 2
    with the run left byte for byte as it was."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_runs["base"], run_dir)
    original = tree_bytes(run_dir)
    for args in (("--resume", run_dir, "--total-steps", "3000"), (CARTPOLE_CONFIG, "--total-steps", "4000")):
        assert "--total-steps" in user_error_line(run_rl_lab("train", *args, cwd=tmp_path))
        assert tree_bytes(run_dir) == original

    result = run_rl_lab("train", "--resume", run_dir, "--total-steps", "4000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "budget raised from 3,000 to 4,000 env steps" in result.stdout
    assert (run_dir / "summary-3000.json").read_bytes() == original["summary.json"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 4000
    assert "total_steps: 4000" in (run_dir / "config.yaml").read_text()
    before = [json.loads(line) for line in original["metrics.jsonl"].decode().splitlines()]
    after = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    kept = [r for r in before if r["step"] < 3000]  # up to the final checkpoint; the old final lines are redone
    assert after[: len(kept)] == kept
    final = [r for r in after if r["step"] == 4000 and "eval/return_mean" in r]  # evaluated again at the new end
    assert (
        max(r["step"] for r in after) == 4000 and final[0]["eval/return_mean"] == summary["final_eval"]["return_mean"]
    )
    assert (run_dir / "checkpoints" / "step_0000004000").is_dir()

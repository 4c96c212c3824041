"""Nothing lost, nobody fooled (issue 18): a crash at every step of a checkpoint save, two writers on one run,
divergence stopped before it reaches a checkpoint, a full disk, and malformed inputs, each through the real code
(the CLI in subprocesses where the user would meet it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CARTPOLE_CONFIG, REPO, TINY, run_many, run_rl_lab, start_rl_lab, tree_bytes, user_error_line

from rl_lab import checkpoint as ckpt
from rl_lab.checkpoint import latest_checkpoint, load_checkpoint, resume_checkpoint, save_checkpoint
from rl_lab.errors import Diverged, UserError
from rl_lab.runs import LOCK_FILE, RunLock

# ------------------------------------------------------------------------- a crash at every step of a save

KILLED = 77  # exit status of a child process that "died" at an injected crash point

# audit events (https://docs.python.org/3/library/audit_events.html) that change the file system, plus the one the
# checkpoint module raises for its renameat2 swap (a ctypes call raises none)
CHANGES = {
    "os.mkdir",
    "os.rename",
    "os.replace",
    "os.remove",
    "os.rmdir",
    "os.truncate",
    "shutil.rmtree",
    "tempfile.mkstemp",
    "rl_lab.checkpoint.exchange",
}


def _changes_files(event: str, args: tuple) -> bool:
    if event in CHANGES:
        return True
    if event == "open":  # builtin open(path, mode, flags) or os.open(path, None, flags)
        _, mode, flags = args
        if isinstance(mode, str):
            return any(c in mode for c in "wax+")
        return bool(flags and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    return False


def crash_at(n: int, action) -> bool:
    """Run `action()` in a forked child killed (os._exit: no cleanup, no finally) right before its n-th
    file-system change; True if it was killed there, False if it finished with fewer changes."""
    pid = os.fork()
    if pid == 0:  # the child
        count = 0

        def hook(event, args):
            nonlocal count
            if _changes_files(event, args):
                count += 1
                if count == n:
                    os._exit(KILLED)

        sys.addaudithook(hook)
        try:
            action()
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"the save failed in the child (exit {code})"
    return code == KILLED


def _state(marker: float) -> tuple[dict, dict, float]:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    torch_state = {"agent": {"net": net.state_dict(), "marker": torch.tensor([marker])}, "rng": torch.get_rng_state()}
    arrays = {"replay.obs": np.full((50, 4), marker, dtype=np.float32)}
    return torch_state, arrays, marker


def _save(checkpoints: Path, step: int, marker: float, keep: int = 2) -> Path:
    torch_state, arrays, _ = _state(marker)
    return save_checkpoint(checkpoints, step, torch_state, arrays, {"step": step, "marker": marker}, keep=keep)


def _marker(path: Path) -> tuple[int, float]:
    torch_state, arrays, meta = load_checkpoint(path)
    marker = float(torch_state["agent"]["marker"][0])
    assert meta["marker"] == marker and (arrays["replay.obs"] == marker).all()
    return meta["step"], marker


# (existing checkpoints as (step, marker), the save to crash: (step, marker)); keep=2
SAVES = {
    "first_checkpoint": ([], (1000, 1.0)),
    "new_step_rotating_the_oldest": ([(1000, 1.0), (2000, 2.0)], (3000, 3.0)),
    "same_step_again": ([(1000, 1.0), (2000, 2.0)], (2000, 2.5)),  # the end-of-run re-save
}


def _surviving_every_crash(tmp_path: Path, before: list, save: tuple) -> int:
    """Crash the save at each of its file-system changes in turn; after each crash `latest` names a complete
    checkpoint (the old one or the new one), resume takes it without a fallback, and saving again leaves a clean
    directory. Returns the number of crash points."""
    template = tmp_path / "template"
    for step, marker in before:
        _save(template / "checkpoints", step, marker)
    expected_old = _marker(latest_checkpoint(template / "checkpoints")) if before else None
    for n in range(1, 200):
        d = tmp_path / f"crash{n}"
        shutil.copytree(template, d) if template.exists() else d.mkdir()
        checkpoints = d / "checkpoints"
        if not crash_at(n, lambda checkpoints=checkpoints: _save(checkpoints, *save)):
            assert _marker(latest_checkpoint(checkpoints)) == save  # with no crash the save is complete
            return n - 1
        found, note = resume_checkpoint(checkpoints)
        if found is None:  # killed before the first checkpoint existed: a resume starts from the beginning
            assert not before
            assert not any(checkpoints.glob("step_*")) if checkpoints.exists() else True
        elif not before and not (checkpoints / "latest").exists():  # the first one renamed into place, no latest yet
            assert "latest is missing" in note and _marker(found) == save
        else:
            assert note is None, f"crash {n}: latest was not usable: {note}"
            assert found == latest_checkpoint(checkpoints)
            assert _marker(found) in (expected_old, save), f"crash {n}: latest holds neither the old nor the new"
        # the resumed process saves the same step again: complete, and no temporary or stale copy remains
        _save(checkpoints, *save)
        assert _marker(latest_checkpoint(checkpoints)) == save
        names = sorted(p.name for p in checkpoints.iterdir())
        steps = sorted({s for s, _ in before} | {save[0]})[-2:]
        assert names == ["latest", *(f"step_{s:010d}" for s in steps)], f"crash {n}: {names}"
    raise AssertionError("the save never completed")


@pytest.mark.parametrize("case", list(SAVES))
def test_a_crash_at_any_step_of_a_save_leaves_latest_loadable(tmp_path, case):
    crashes = _surviving_every_crash(tmp_path, *SAVES[case])
    assert crashes >= 5  # mkdir, state.json, rename or swap, latest (temp file and rename), removals


def test_a_crash_at_any_step_of_a_same_step_save_without_an_atomic_swap(tmp_path, monkeypatch):
    """A file system without renameat2(RENAME_EXCHANGE): the re-save goes beside the old copy (step_N.1)."""
    monkeypatch.setattr(ckpt, "_renameat2", lambda: None)
    checkpoints = tmp_path / "plain" / "checkpoints"
    _save(checkpoints, 1000, 1.0)
    assert _save(checkpoints, 1000, 1.5).name == "step_0000001000.1"
    assert _save(checkpoints, 1000, 1.7).name == "step_0000001000"  # and back: one copy of the step at rest
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_0000001000"]
    for n in range(1, 200):
        d = tmp_path / f"crash{n}" / "checkpoints"
        _save(d, 1000, 1.0)
        _save(d, 2000, 2.0)
        if not crash_at(n, lambda d=d: _save(d, 2000, 2.5)):
            break
        found, note = resume_checkpoint(d)
        assert note is None and _marker(found) in ((2000, 2.0), (2000, 2.5)), n
        again = _save(d, 2000, 2.5)
        assert _marker(latest_checkpoint(d)) == (2000, 2.5)
        assert sorted(p.name for p in d.iterdir()) == ["latest", "step_0000001000", again.name], n
    assert n - 1 >= 4  # crash points: mkdir, state.json, rename, latest, removal of the old copy


def test_a_failed_save_leaves_no_temporary_copy_and_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    _save(checkpoints, 1000, 1.0)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.safetensors.numpy, "save_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        _save(checkpoints, 2000, 2.0)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_0000001000"]
    assert _marker(latest_checkpoint(checkpoints)) == (1000, 1.0)


def test_nothing_non_finite_is_ever_saved(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    _save(checkpoints, 1000, 1.0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(Diverged, match=r"step 2000: non-finite values in agent\.marker"):
            _save(checkpoints, 2000, bad)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_0000001000"]


# ----------------------------------------------------------------------------- checkpoint content verified


def _reseal(path: Path, edit) -> None:
    """Edit state.json as a careful forger would: the change made, then its digest recomputed."""
    document = json.loads((path / "state.json").read_text())
    del document["digest"]
    edit(document)
    (path / "state.json").write_text(json.dumps({**document, "digest": ckpt._document_digest(document)}))


def test_edits_nan_bytes_and_bad_meta_are_refused_on_load(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    path = _save(checkpoints, 1000, 1.0)
    pristine = tmp_path / "pristine"
    shutil.copytree(path, pristine)

    def reset():
        shutil.rmtree(path)
        shutil.copytree(pristine, path)

    _nan_weight(path)  # safetensors header intact: the digest catches it
    with pytest.raises(UserError, match="model.safetensors does not match its SHA-256"):
        load_checkpoint(path)
    reset()
    text = (path / "state.json").read_text()
    (path / "state.json").write_text(text.replace('"step": 1000', '"step": 1'))  # an edited step
    with pytest.raises(UserError, match="state.json was modified"):
        load_checkpoint(path)
    reset()
    _reseal(path, lambda doc: doc.update(step=999))  # resealed, but not the step its name says
    with pytest.raises(UserError, match="step 999 does not match its name step_0000001000"):
        load_checkpoint(path)
    reset()
    _reseal(path, lambda doc: doc["meta"].update(step=5))
    with pytest.raises(UserError, match="meta is not an object with step 1000"):
        load_checkpoint(path)


def test_state_from_meta_checks_every_field(tmp_path):
    from rl_lab.rl.loop import LoopState

    good = {
        "step": 10,
        "episodes": 2,
        "recent_returns": [1.0, 2.5],
        "recent_lengths": [3, 4],
        "last_train": {"loss": 0.5},
        "wall_time_s": 1.5,
        "metrics_lines": 1,
        "final_eval": None,
    }
    assert ckpt.state_from_meta(LoopState, good, tmp_path) == LoopState(**good)
    for key, value, message in [
        ("episodes", "many", "episodes='many' is not a valid count"),
        ("step", -1, "step=-1 is not a valid count"),
        ("episodes", True, "episodes=True"),
        ("recent_returns", [1.0, None], "recent_returns"),
        ("wall_time_s", float("inf"), "wall_time_s=inf is not a valid finite number"),
        ("final_eval", [], "final_eval=\\[\\] is not a valid dict or null"),
    ]:
        with pytest.raises(UserError, match=message):
            ckpt.state_from_meta(LoopState, {**good, key: value}, tmp_path)
    with pytest.raises(UserError, match="has no metrics_lines"):
        ckpt.state_from_meta(LoopState, {k: v for k, v in good.items() if k != "metrics_lines"}, tmp_path)


def test_latest_is_confined_to_its_own_checkpoints(tmp_path):
    other = tmp_path / "other" / "checkpoints"
    _save(other, 1000, 1.0)
    mine = tmp_path / "run" / "checkpoints"
    _save(mine, 1000, 9.0)
    (mine / "evil").symlink_to(other / "step_0000001000")
    (mine / "step_0000002000").symlink_to(other / "step_0000001000")
    for name in ("../../other/checkpoints/step_0000001000", "/etc", "evil", "step_0000001000/../x"):
        (mine / "latest").write_text(name + "\n")
        with pytest.raises(UserError, match="not a checkpoint of this run"):
            latest_checkpoint(mine)
        # resume passes over it (and over the symlink) to this run's own newest complete checkpoint
        found, note = resume_checkpoint(mine)
        assert found == mine / "step_0000001000" and "not a checkpoint of this run" in note
    (mine / "latest").write_text("step_0000002000\n")
    with pytest.raises(UserError, match="missing checkpoint step_0000002000"):
        latest_checkpoint(mine)


def test_resume_takes_the_newest_complete_checkpoint_when_latest_is_damaged(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    _save(checkpoints, 1000, 1.0, keep=3)
    _save(checkpoints, 2000, 2.0, keep=3)
    path = _save(checkpoints, 3000, 3.0, keep=3)
    (path / "arrays.safetensors").write_bytes(b"")  # e.g. a disk error
    found, note = resume_checkpoint(checkpoints)
    assert found.name == "step_0000002000" and "arrays.safetensors" in note
    (checkpoints / "latest").unlink()
    assert resume_checkpoint(checkpoints)[0].name == "step_0000002000"
    for step in (1000, 2000):
        (checkpoints / f"step_{step:010d}" / "state.json").write_text("{")
    with pytest.raises(UserError, match="no other complete checkpoint among 3"):
        resume_checkpoint(checkpoints)
    assert resume_checkpoint(tmp_path / "never_saved" / "checkpoints") == (None, None)


# ------------------------------------------------------------------------------------------- the CLI, runs


def _unfinished_copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    (dest / "summary.json").unlink()
    return dest


def test_a_second_writer_is_refused_naming_the_holder(tiny_runs, tmp_path):
    """The test holds the run's lock as a training process would: `train` into the run dir and `--resume` of it
    both stop, one line naming this pid, the run untouched; once released, the resume goes ahead."""
    run_dir = _unfinished_copy(tiny_runs["base"], tmp_path / "run")
    lock = RunLock(run_dir)
    assert (run_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    before = tree_bytes(run_dir)
    try:
        results = run_many(
            [
                ("train", "--resume", run_dir),
                ("train", CARTPOLE_CONFIG, *TINY, f"run.dir={run_dir}"),
                ("train", CARTPOLE_CONFIG, *TINY, f"run.dir={run_dir}", "seed=1"),
            ],
            cwd=tmp_path,
        )
        for result in results:
            line = user_error_line(result)
            assert f"pid {os.getpid()}" in line and str(run_dir) in line, line
        assert tree_bytes(run_dir) == before
    finally:
        lock.release()
    assert (run_dir / LOCK_FILE).read_text() == ""
    resumed = run_rl_lab("train", "--resume", run_dir, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == (tiny_runs["base"] / "metrics.jsonl").read_bytes()


def test_two_trainings_started_together_into_one_run_dir(tiny_runs, tmp_path):
    run_dir = tmp_path / "run"
    args = ("train", CARTPOLE_CONFIG, *TINY, f"run.dir={run_dir}")
    first, second = start_rl_lab(*args, cwd=tmp_path), start_rl_lab(*args, cwd=tmp_path)
    outcomes = []
    for process in (first, second):
        out, err = process.communicate(timeout=600)
        outcomes.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    assert sorted(r.returncode for r in outcomes) == [0, 2], [r.stderr for r in outcomes]
    loser = next(r for r in outcomes if r.returncode == 2)
    line = user_error_line(loser)
    assert "is in use: pid " in line or "exists and is not empty" in line  # the other one had already finished
    # every step once: the same metrics as a run on its own
    assert (run_dir / "metrics.jsonl").read_bytes() == (tiny_runs["base"] / "metrics.jsonl").read_bytes()


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "train.total_steps=200000", "run.checkpoint_every=0", f"run.dir={run_dir}"]
    process = start_rl_lab("train", CARTPOLE_CONFIG, *args, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "metrics.jsonl").exists():  # written once the lock is held
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert (run_dir / LOCK_FILE).read_text() == f"{process.pid}\n"
        busy = run_rl_lab("train", "--resume", run_dir, cwd=tmp_path)
        assert f"in use: pid {process.pid}" in user_error_line(busy)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    # killed before its first checkpoint: the lock went with the process, and the resume starts from the beginning
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("total_steps: 200000", "total_steps: 3000"))
    resumed = run_rl_lab("train", "--resume", run_dir, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "from the beginning" in resumed.stdout


def test_resume_of_a_run_killed_before_its_first_checkpoint_equals_a_fresh_run(tiny_runs, tmp_path):
    """As left by a kill before the first checkpoint: config.yaml, some metrics lines, an unfinished temporary
    checkpoint; `--resume` runs it from the start to the uninterrupted result."""
    base = tiny_runs["base"]
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / ".tmp-step_0000001000-4242").mkdir(parents=True)
    (run_dir / "checkpoints" / ".tmp-step_0000001000-4242" / "model.safetensors").write_bytes(b"half")
    (run_dir / "plots").mkdir()
    shutil.copy(base / "config.yaml", run_dir / "config.yaml")
    (run_dir / "metrics.jsonl").write_text((base / "metrics.jsonl").read_text().splitlines(keepends=True)[0] + '{"st')
    result = run_rl_lab("train", "--resume", run_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "from the beginning" in result.stdout
    assert (run_dir / "metrics.jsonl").read_bytes() == (base / "metrics.jsonl").read_bytes()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        p.name for p in (base / "checkpoints").iterdir()
    )
    for name in ("model.safetensors", "arrays.safetensors"):
        latest = latest_checkpoint(run_dir / "checkpoints") / name
        assert latest.read_bytes() == (latest_checkpoint(base / "checkpoints") / name).read_bytes()


def test_resume_falls_back_past_a_damaged_latest_to_the_same_result(tiny_runs, tmp_path):
    base = tiny_runs["base"]
    run_dir = _unfinished_copy(base, tmp_path / "run")
    latest = latest_checkpoint(run_dir / "checkpoints")
    (latest / "model.safetensors").write_bytes((latest / "model.safetensors").read_bytes()[:100])
    result = run_rl_lab("train", "--resume", run_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the newest complete checkpoint" in result.stdout and "resuming" in result.stdout
    assert (run_dir / "metrics.jsonl").read_bytes() == (base / "metrics.jsonl").read_bytes()


# ------------------------------------------------------------------------------------------------ divergence


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


QUIET = [*TINY[:2], "logger.wandb.mode=disabled", "logger.progress=false"]  # cpu, one thread, no W&B, no bar
DIVERGING = {  # a finite config that blows up: an Adam step of 1e30 overflows float32 within two updates
    "dqn": [CARTPOLE_CONFIG, *TINY, "agent.optim.lr=1e30", "agent.learning_starts=1200"],
    "a2c": [
        REPO / "configs" / "cartpole_a2c.yaml",
        *QUIET,
        *["agent.optim.lr=1e30", "agent.optim.schedule=constant", "train.total_steps=3000", "run.checkpoint_every=128"],
        *["logger.log_every=128", "eval.every=0", "eval.episodes=2"],
    ],
    "classification": [
        REPO / "configs" / "digits_mlp.yaml",
        *QUIET,
        *["task.optim.lr=1e30", "task.optim.amp=false", "train.epochs=3", "logger.log_every=10"],
    ],
}


@pytest.fixture(scope="module")
def diverged_runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("diverged")
    names = list(DIVERGING)
    results = run_many([("train", *DIVERGING[n], f"run.dir={root / n}") for n in names], cwd=root)
    return {n: (r, root / n) for n, r in zip(names, results, strict=True)}


@pytest.mark.parametrize("name", list(DIVERGING))
def test_divergence_stops_with_exit_3_naming_the_step_and_keeps_the_last_finite_checkpoint(diverged_runs, name):
    result, run_dir = diverged_runs[name]
    assert result.returncode == 3, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    line = lines[0]
    assert line.startswith("rl-lab: error: training diverged at step "), line
    step = int(line.removeprefix("rl-lab: error: training diverged at step ").split(":")[0])
    assert "non-finite" in line and "start a new run" in line
    assert not (run_dir / "summary.json").exists()
    rows = [_strict_json(row) for row in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(row["step"] <= step for row in rows)
    checkpoints = run_dir / "checkpoints"
    assert not list(checkpoints.glob(".tmp-*"))
    if name == "classification":  # diverged in its first epoch: nothing was ever checkpointed
        assert "no checkpoint was saved before it" in line
        assert not list(checkpoints.iterdir())
        return
    latest = latest_checkpoint(checkpoints)
    assert f"the last finite checkpoint, {latest.name}, is kept" in line
    assert ckpt.checkpoint_step(latest) < step
    for path in checkpoints.glob("step_*"):  # every checkpoint on disk loads, all finite
        load_checkpoint(path)
        assert ckpt.checkpoint_step(path) < step


def test_metrics_and_summary_are_strict_json(tiny_runs):
    from rl_lab.fileio import dumps_json

    for path in (tiny_runs["base"] / "metrics.jsonl", tiny_runs["base"] / "summary.json"):
        text = path.read_text()
        for chunk in text.splitlines() if path.suffix == ".jsonl" else [text]:
            _strict_json(chunk)
    assert dumps_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}}) == (
        '{"a": null, "b": [null, 1.5], "c": {"d": null}}'
    )


# ------------------------------------------------------------------------------------------------ full disk


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode
        == 0
    )


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _disk_usage(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes_to_the_same_result(tiny_runs, tmp_path):
    base = tiny_runs["base"]
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=4m"):
        pytest.skip("needs root and tmpfs to make a small disk")
    try:
        size = _disk_usage(latest_checkpoint(base / "checkpoints"))  # the largest: its replay buffer is full
        # room for the config, the metrics and some checkpoints, not for all of them with the temporary copy
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - int(1.5 * size) - 64 * 1024))
        run_dir = disk / "run"
        result = run_rl_lab("train", CARTPOLE_CONFIG, *TINY, f"run.dir={run_dir}", cwd=tmp_path)
        line = user_error_line(result)
        assert "No space left on device" in line and f"rl-lab train --resume {run_dir}" in line, line
        assert "/checkpoints/.tmp-step_" in line  # it happened while writing a checkpoint

        def intact() -> str:
            checkpoints = run_dir / "checkpoints"
            assert not list(checkpoints.glob(".tmp-*")), "a temporary checkpoint was left behind"
            assert not list(run_dir.glob(".*.tmp")) and not list(checkpoints.glob(".*.tmp"))
            load_checkpoint(latest_checkpoint(checkpoints))  # complete: digests verified
            assert not (run_dir / "summary.json").exists()
            return latest_checkpoint(checkpoints).name

        kept = intact()
        assert f".tmp-step_{ckpt.checkpoint_step(Path(kept)) + 1000:010d}-" in line  # the one after it failed
        again = run_rl_lab("train", "--resume", run_dir, cwd=tmp_path)  # the disk is still full
        assert "No space left on device" in user_error_line(again)
        assert intact() == kept
        filler.unlink()
        resumed = run_rl_lab("train", "--resume", run_dir, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert (run_dir / "metrics.jsonl").read_bytes() == (base / "metrics.jsonl").read_bytes()
    finally:
        _umount(disk)


# ------------------------------------------------------------------------------------ malformed inputs, CLI


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory):
    """A directory on a read-only file system (root: a read-only tmpfs), else one without write permission."""
    where = tmp_path_factory.mktemp("ro") / "mnt"
    if _mount_tmpfs(where, "ro,size=64k"):
        yield where
        _umount(where)
    elif os.geteuid() != 0:
        where.chmod(0o555)
        yield where
        where.chmod(0o755)
    else:
        yield None


def _binary(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 4)
    return path


def _run_copy(tiny_runs, d: Path, damage=None) -> Path:
    run_dir = _unfinished_copy(tiny_runs["base"], d / "run")
    if damage:
        damage(latest_checkpoint(run_dir / "checkpoints"))
    return run_dir


def _only_latest(run_dir: Path) -> None:
    """Leave the run with its latest checkpoint only, so a resume has nothing to fall back to."""
    latest = latest_checkpoint(run_dir / "checkpoints")
    for path in (run_dir / "checkpoints").glob("step_*"):
        if path != latest:
            shutil.rmtree(path)


def _nan_weight(path: Path) -> None:
    """NaN written over the first number of a float32 tensor in model.safetensors, its header left intact."""
    file = path / "model.safetensors"
    raw = bytearray(file.read_bytes())
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    start = (
        8 + size + next(v["data_offsets"][0] for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    )
    raw[start : start + 4] = np.array([np.nan], dtype=np.float32).tobytes()
    file.write_bytes(bytes(raw))


def _edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def _resume_many_episodes(tiny_runs, d: Path) -> list:
    run_dir = _run_copy(tiny_runs, d)
    _only_latest(run_dir)
    _reseal(latest_checkpoint(run_dir / "checkpoints"), lambda doc: doc["meta"].update(episodes="many"))
    return ["train", "--resume", run_dir]


def _resume_nan_weight_only_checkpoint(tiny_runs, d: Path) -> list:
    run_dir = _run_copy(tiny_runs, d, _nan_weight)
    _only_latest(run_dir)
    return ["train", "--resume", run_dir]


def _below_a_file(tiny_runs, d: Path) -> list:
    (d / "file").write_text("a file\n")
    return ["train", CFG, *RUN, f"run.dir={d / 'file' / 'run'}"]


def _encoder_out(tiny_runs, d: Path) -> Path:
    from rl_lab.runs import export_encoder

    return export_encoder(tiny_runs["base"], d / "encoder")


CFG = CARTPOLE_CONFIG
RUN = ["logger.wandb.mode=disabled", "device=cpu", "torch_threads=1", "run.dir=run"]
# id: (setup(tiny_runs, case_dir) -> CLI args, substrings of the error line). Each must exit 2 with one line and
# leave its directory (the cwd, and any run or output it names) byte for byte as it was.
MALFORMED = {
    "config_binary": (lambda t, d: ["train", _binary(d / "bin.yaml"), *RUN], ["not a text file", "bin.yaml"]),
    "config_directory": (lambda t, d: ["train", d, *RUN], ["is not a file"]),
    "config_binary_via_config": (lambda t, d: ["config", _binary(d / "x.yml")], ["not a text file"]),
    "sweep_binary": (lambda t, d: ["search", _binary(d / "sweep.yaml"), "--out", d / "out"], ["not a text file"]),
    "solve_binary_map": (lambda t, d: ["solve", _binary(d / "map.txt"), "--out", d / "out"], ["not a text file"]),
    "seed_negative": (lambda t, d: ["train", CFG, "seed=-1", *RUN], ["seed=-1", "must be in [0, 4294967295]"]),
    "seed_2_32": (lambda t, d: ["train", CFG, "seed=4294967296", *RUN], ["seed=4294967296"]),
    "eval_seed_offset_negative": (lambda t, d: ["train", CFG, "eval.seed_offset=-1", *RUN], ["seed_offset=-1"]),
    "eval_seed_negative": (lambda t, d: ["eval", t["base"], "--seed", "-1"], ["'-1' is not a seed"]),
    "search_seed_2_32": (
        lambda t, d: ["search", REPO / "configs" / "sweeps" / "cartpole_dqn.yaml", "--seed", "4294967296"],
        ["'4294967296' is not a seed"],
    ),
    "lr_inf": (lambda t, d: ["train", CFG, "agent.optim.lr=.inf", *RUN], ["agent.optim.lr=inf", "finite"]),
    "lr_nan": (lambda t, d: ["train", CFG, "agent.optim.lr=.nan", *RUN], ["agent.optim.lr=nan", "finite"]),
    "lr_text_inf": (lambda t, d: ["train", CFG, "agent.optim.lr=inf", *RUN], ["agent.optim.lr=inf", "finite"]),
    "gamma_nan": (lambda t, d: ["train", CFG, "agent.gamma=.nan", *RUN], ["agent.gamma=nan", "finite"]),
    "task_lr_neg_inf": (
        lambda t, d: ["train", REPO / "configs" / "digits_mlp.yaml", "task.optim.lr=-.inf", *RUN],
        ["task.optim.lr=-inf", "finite"],
    ),
    "env_kwargs_inf": (lambda t, d: ["train", CFG, "env.kwargs.x=.inf", *RUN], ["env.kwargs.x=inf", "finite"]),
    "run_dir_below_a_file": (_below_a_file, ["cannot create run dir", "Not a directory"]),
    "export_encoder_over_an_encoder": (
        lambda t, d: ["export-encoder", t["base"], _encoder_out(t, d)],
        ["already holds an encoder", "--force"],
    ),
    "latest_outside_the_run": (
        lambda t, d: [
            "eval",
            _run_copy(t, d, lambda c: (c.parent / "latest").write_text("../../../other/checkpoints/step_0000003000")),
        ],
        ["not a checkpoint of this run"],
    ),
    "nan_bytes_in_a_weight": (
        lambda t, d: ["eval", _run_copy(t, d, _nan_weight)],
        ["model.safetensors does not match its SHA-256"],
    ),
    "edited_step": (
        lambda t, d: ["eval", _run_copy(t, d, lambda c: _edit_text(c / "state.json", '"step": 3000', '"step": 300'))],
        ["state.json was modified"],
    ),
    "episodes_many_resealed": (_resume_many_episodes, ["episodes='many' is not a valid count"]),
    "nan_bytes_resume_without_fallback": (
        _resume_nan_weight_only_checkpoint,
        ["does not match its SHA-256", "no other complete checkpoint"],
    ),
}


@pytest.fixture(scope="module")
def malformed_results(tiny_runs, tmp_path_factory, read_only_dir):
    root = tmp_path_factory.mktemp("malformed")
    cases = dict(MALFORMED)
    if read_only_dir is not None:
        cases["run_dir_read_only"] = (
            lambda t, d: ["train", CFG, *RUN, f"run.dir={read_only_dir / 'run'}"],
            ["cannot create run dir", "Read-only file system" if os.geteuid() == 0 else "Permission denied"],
        )
    commands, prepared = [], {}
    for case, (setup, needles) in cases.items():
        d = root / case
        d.mkdir()
        args = setup(tiny_runs, d)
        commands.append(tuple(args))
        prepared[case] = (d, needles, tree_bytes(d))
    results = run_many(commands, cwd=root)  # in `root`: the relative run.dir=run must not appear there
    return {case: (result, *prepared[case]) for case, result in zip(prepared, results, strict=True)}, root


MALFORMED_IDS = [*MALFORMED, "run_dir_read_only"]


@pytest.mark.parametrize("case", MALFORMED_IDS)
def test_malformed_input_is_one_line_exit_2_and_changes_nothing(malformed_results, case, read_only_dir):
    results, root = malformed_results
    if case not in results:
        pytest.skip("no read-only file system to try here (root without tmpfs)")
    result, case_dir, needles, before = results[case]
    line = user_error_line(result)
    for needle in needles:
        assert needle in line, f"{needle!r} missing from: {line}"
    assert tree_bytes(case_dir) == before, "the failed command changed its files"
    assert not (root / "run").exists() and not (root / "runs").exists(), "a failed command created a run directory"
    if read_only_dir is not None:
        assert not any(read_only_dir.iterdir())

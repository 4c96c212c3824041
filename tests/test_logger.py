"""RunLogger: metrics.jsonl, resume truncation, W&B mode resolution, and a real offline W&B run read back."""

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
from wandb.proto import wandb_internal_pb2

from rl_lab.config import WandbConfig
from rl_lab.errors import UserError
from rl_lab.logger import RunLogger, read_wandb_records, resolve_wandb_mode, wandb_history

FAKE_KEY = "a" * 40


@pytest.fixture(autouse=True)
def isolated_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No real home, netrc, W&B settings or credentials; a fresh wandb singleton per test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "wandb-data"))
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    wandb.teardown()  # forget settings and credentials cached by earlier tests
    yield
    wandb.teardown()


def _items(items) -> dict:
    """HistoryItem / SummaryItem / ConfigItem list -> {dotted key: decoded value}."""
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


def _offline_run(tmp_path: Path) -> tuple[str, list[wandb_internal_pb2.Record]]:
    """The only offline run under tmp_path: its run id and its records.

    run.finish() can return before wandb-core has flushed the .wandb file; teardown waits for it.
    """
    wandb.teardown()
    (path,) = tmp_path.glob("run/wandb/offline-run-*/run-*.wandb")
    records = read_wandb_records(path)
    return path.stem.removeprefix("run-"), records


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_offline_run_is_recorded_in_wandb(tmp_path: Path) -> None:
    config = {"algo": "dqn", "lr": 3e-4, "net": {"hidden": [64, 64]}}
    logger = RunLogger(tmp_path / "run", config, wandb_mode="offline", progress=False)
    logger.log(0, {"return": 1.5, "loss": np.float32(0.25)}, extra={"sps": 1000.0})
    logger.log(100, {"return": torch.tensor(2.5), "loss": 0.125}, extra={"sps": np.float64(1200.0)})
    logger.summary({"best_return": 2.5, "eval": {"return": 3.0}})
    logger.close()
    logger.close()  # idempotent

    run_id, records = _offline_run(tmp_path)
    assert run_id == (tmp_path / "run" / "wandb_id.txt").read_text().strip()
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.project == "rl-lab"
    logged_config = _items(run.config.update)
    assert {k: logged_config[k] for k in config} == config

    history = [_items(r.history.item) for r in records if r.HasField("history")]
    assert [{k: h[k] for k in ("_step", "return", "loss", "sps")} for h in history] == [
        {"_step": 0, "return": 1.5, "loss": 0.25, "sps": 1000.0},
        {"_step": 100, "return": 2.5, "loss": 0.125, "sps": 1200.0},
    ]
    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update(_items(r.summary.update))
    assert summary["best_return"] == 2.5
    assert summary["eval.return"] == 3.0


def _history(run_dir: Path) -> list[dict]:
    """The history of the run's only offline record, without wandb's own keys."""
    wandb.teardown()  # waits for wandb-core to flush the record
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return [{k: v for k, v in row.items() if not k.startswith("_") or k == "_step"} for row in wandb_history(path)]


def _crashed_run(run_dir: Path) -> None:
    """Four logged steps with extras, W&B offline, as a run killed after step 300 leaves them (its checkpoint was
    at step 100, two lines into metrics.jsonl)."""
    logger = RunLogger(run_dir, {"lr": 1.0}, wandb_mode="offline", progress=False, step_metric="env_step")
    for step in (0, 100, 200, 300):
        logger.log(step, {"return": step / 7}, extra={"sps": 1000.0 + step})
    logger.close()
    wandb.teardown()  # the record is complete up to the kill, as when the process is gone


def _resume_at_100(run_dir: Path) -> None:
    logger = RunLogger(
        run_dir, {"lr": 1.0}, wandb_mode="offline", progress=False, step_metric="env_step", resume_lines=2,
        initial_step=100,
    )  # fmt: skip
    for step in (200, 300, 400):
        logger.log(step, {"return": -step / 7}, extra={"sps": 9.0})  # not what the killed process had logged
    logger.close()


def test_resume_rewinds_the_offline_wandb_run_to_the_checkpoint(tmp_path: Path) -> None:
    """After a resume, one offline record of the run id is left, and its history is metrics.jsonl's (the extras of
    the steps before the checkpoint kept), not the killed process's rows after the checkpoint."""
    run_dir = tmp_path / "run"
    _crashed_run(run_dir)
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    _resume_at_100(run_dir)

    (record,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    assert record.name == f"run-{run_id}.wandb"
    history = _history(run_dir)
    lines = _lines(run_dir / "metrics.jsonl")
    assert [h["_step"] for h in history] == [m["step"] for m in lines] == [0, 100, 200, 300, 400]
    assert [{k: h[k] for k in ("env_step", "return")} for h in history] == [
        {"env_step": m["step"], "return": m["return"]} for m in lines
    ]
    assert [h["sps"] for h in history] == [1000.0, 1100.0, 9.0, 9.0, 9.0]  # the extras logged before it too
    (run,) = [r.run for r in read_wandb_records(record) if r.HasField("run")]
    assert run.run_id == run_id
    assert _items(run.config.update)["lr"] == 1.0


def test_resume_without_the_earlier_record_replays_metrics_jsonl(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _crashed_run(run_dir)
    for old in run_dir.glob("wandb/offline-run-*"):
        shutil.rmtree(old)  # e.g. W&B was disabled, or the record was synced and removed
    _resume_at_100(run_dir)
    history = _history(run_dir)
    assert [{k: h.get(k) for k in ("_step", "return", "sps")} for h in history] == [
        {"_step": 0, "return": 0.0, "sps": None},
        {"_step": 100, "return": 100 / 7, "sps": None},
        *({"_step": s, "return": -s / 7, "sps": 9.0} for s in (200, 300, 400)),
    ]


def test_metrics_jsonl_has_exact_values_and_no_extra(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {}, wandb_mode="disabled", progress=False)
    logger.log(10, {"return": 1.0, "eps": np.float32(0.5)}, extra={"sps": 123.4, "wall_time": 9.0})
    logger.log(np.int64(20), {"return": torch.tensor(-2.25), "eps": 0.1})
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2  # flushed before close
    logger.close()
    assert _lines(tmp_path / "metrics.jsonl") == [
        {"step": 10, "return": 1.0, "eps": 0.5},
        {"step": 20, "return": -2.25, "eps": 0.1},
    ]


def test_metrics_jsonl_is_byte_identical_across_runs(tmp_path: Path) -> None:
    for name in ("a", "b"):
        logger = RunLogger(tmp_path / name, {}, wandb_mode="disabled", progress=False)
        for step in range(5):
            logger.log(step, {"z": 1.0, "a": step / 3, "m": np.float32(step) / 7}, extra={"sps": float(name == "a")})
        logger.close()
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()


def test_resume_lines_truncates_then_appends(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {}, wandb_mode="disabled", progress=False)
    for step in (0, 100, 200, 300):
        logger.log(step, {"return": step / 7})
    logger.close()
    path = tmp_path / "metrics.jsonl"
    before = path.read_text().splitlines(keepends=True)
    with path.open("a") as f:
        f.write('{"step": 400, "ret')  # torn line from a crash mid-write

    logger = RunLogger(tmp_path, {}, wandb_mode="disabled", progress=False, resume_lines=3)
    assert path.read_text() == "".join(before[:3])
    logger.log(300, {"return": -1.0})
    logger.close()
    lines = path.read_text().splitlines(keepends=True)
    assert lines[:3] == before[:3]
    assert [json.loads(line) for line in lines[3:]] == [{"step": 300, "return": -1.0}]
    assert not list(tmp_path.glob("*.tmp"))


def test_resolve_wandb_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in ("online", "offline", "disabled"):
        assert resolve_wandb_mode(mode) == mode
    assert resolve_wandb_mode(None) == "offline"
    assert resolve_wandb_mode("auto") == "offline"
    with pytest.raises(UserError, match=r"logger\.wandb\.mode.*auto, online, offline, disabled"):
        resolve_wandb_mode("cloud")

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode(None) == "online"


def test_resolve_wandb_mode_reads_netrc(tmp_path: Path) -> None:
    netrc = tmp_path / "home" / ".netrc"
    netrc.write_text(f"machine {wandb.Settings().base_url.split('://')[1]}\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"


@pytest.mark.parametrize("api_key", [None, FAKE_KEY], ids=["no-credentials", "server-unreachable"])
def test_unreachable_wandb_goes_offline_into_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, api_key: str | None
) -> None:
    """Online W&B that cannot start within logger.wandb.init_timeout: one warning, then the run logs offline into
    its own directory (to be synced later) and training goes on."""
    if api_key:
        monkeypatch.setenv("WANDB_API_KEY", api_key)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: connection refused
    options = WandbConfig(mode="online", init_timeout=2)
    logger = RunLogger(tmp_path / "run", {"lr": 1e-3}, wandb_mode="online", progress=False, options=options)
    logger.log(1, {"return": 1.0}, extra={"sps": 5.0})
    logger.progress(1, sps=5.0)
    logger.summary({"best": 1.0})
    logger.close()
    err = capsys.readouterr().err
    (warning,) = [line for line in err.splitlines() if "wandb" in line and "unavailable" in line]
    assert warning.startswith("wandb online unavailable (")
    assert f"logging offline to {tmp_path / 'run' / 'wandb'} instead" in warning
    assert _lines(tmp_path / "run" / "metrics.jsonl") == [{"step": 1, "return": 1.0}]
    assert [{k: h[k] for k in ("_step", "return", "sps")} for h in _history(tmp_path / "run")] == [
        {"_step": 1, "return": 1.0, "sps": 5.0}
    ]


def test_wandb_run_metadata_step_metric_media_and_model(tmp_path: Path) -> None:
    """Group, tags, job type and notes reach the run record; every chart is against the step metric; image files
    become W&B images; the model files become a W&B Artifact of type model."""
    import matplotlib.pyplot as plt

    png = tmp_path / "curve.png"
    plt.figure(figsize=(2, 2))
    plt.savefig(png)
    plt.close("all")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    options = WandbConfig(group="sweep-1", tags=["dqn", "cartpole"], job_type="train", notes="a note")
    logger = RunLogger(
        tmp_path / "run", {}, wandb_mode="offline", progress=False, options=options, step_metric="env_step"
    )
    logger.log(500, {"return": 2.0})
    logger.log_media(500, {"plots/learning_curve": png})
    logger.log_model({"model.safetensors": weights}, {"step": 500, "eval": {"return": 2.0}}, ["latest", "step_500"])
    logger.close()

    _, records = _offline_run(tmp_path)
    (run,) = [r.run for r in records if r.HasField("run")]
    assert (run.run_group, list(run.tags), run.job_type, run.notes) == (
        "sweep-1",
        ["dqn", "cartpole"],
        "train",
        "a note",
    )
    metrics = [r.metric for r in records if r.HasField("metric")]
    assert any(m.name == "env_step" for m in metrics)
    assert any(m.glob_name == "*" and m.step_metric == "env_step" for m in metrics)
    (row,) = [_items(r.history.item) for r in records if r.HasField("history")]
    assert row["env_step"] == 500 and row["return"] == 2.0
    assert row["plots/learning_curve._type"] == "image-file"
    (artifact,) = [r.artifact for r in records if r.HasField("artifact")]
    assert (artifact.type, artifact.name) == ("model", f"model-{run.run_id}")
    assert sorted(artifact.aliases) == ["latest", "step_500"]
    assert [c.path for c in artifact.manifest.contents] == ["model.safetensors"]
    assert json.loads(artifact.metadata) == {"step": 500, "eval.return": 2.0}


def test_log_model_false_uploads_no_artifact(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    logger = RunLogger(tmp_path / "run", {}, wandb_mode="offline", progress=False, options=WandbConfig(log_model=False))
    logger.log_model({"model.safetensors": weights}, {}, ["latest"])
    logger.close()
    _, records = _offline_run(tmp_path)
    assert not [r for r in records if r.HasField("artifact")]


def test_disabled_mode_creates_no_wandb_files(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {"lr": 1e-3}, wandb_mode="disabled", progress=True, total_steps=10)
    logger.log(1, {"return": 1.0})
    logger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "metrics.jsonl"]


def test_progress_prints_nothing_without_a_tty(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    logger = RunLogger(tmp_path / "run", {}, wandb_mode="disabled", progress=True, total_steps=1000)
    for step in range(0, 1000, 100):
        logger.progress(step, sps=1234.5, loss=0.1, algo="dqn")
    logger.close()
    assert capsys.readouterr() == ("", "")


def test_progress_bar_on_a_tty_shows_step_and_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    logger = RunLogger(tmp_path, {}, wandb_mode="disabled", total_steps=1000, initial_step=200)
    logger.progress(500, loss=0.25, algo="dqn")
    logger.close()
    out = sys.stderr.getvalue()
    assert "500/1000" in out
    assert "loss=0.25" in out
    assert "algo=dqn" in out


def _merged_by_step(lines: list[dict]) -> dict[int, dict]:
    """metrics.jsonl as W&B keeps it: lines of one step in one row."""
    rows: dict[int, dict] = {}
    for line in lines:
        rows.setdefault(line["step"], {}).update({k: v for k, v in line.items() if k != "step"})
    return rows


def _assert_history_is_metrics_jsonl(run_dir: Path) -> list[dict]:
    history = _history(run_dir)
    metrics = _merged_by_step(_lines(run_dir / "metrics.jsonl"))
    assert [h["_step"] for h in history] == list(metrics)
    for row in history:
        assert row["env_step"] == row["_step"]
        assert {k: row[k] for k in metrics[row["_step"]]} == metrics[row["_step"]]
    return history


def test_a_cli_run_mirrors_to_wandb_and_its_resume_rewinds_it(tmp_path: Path) -> None:
    """A tiny CartPole run through `rl-lab train`, W&B offline: run metadata, env steps as every chart's x-axis,
    a history equal to metrics.jsonl, the learning curve as an image, the final model as an Artifact; then the run
    cut back to its first checkpoint (the W&B record still holding the later rows) and resumed: one record, rewound."""
    import safetensors.torch
    from conftest import CARTPOLE_CONFIG, TINY, run_rl_lab
    from test_actor_critic import killed_after_first_checkpoint

    import rl_lab

    wandb_args = [a for a in TINY if not a.startswith("logger.wandb")] + [
        *("logger.wandb.mode=offline", "logger.wandb.group=g1", "logger.wandb.tags=[tiny,dqn]"),
        *("logger.wandb.job_type=train", "logger.wandb.notes=a tiny run"),
    ]
    full = tmp_path / "full"
    result = run_rl_lab("train", CARTPOLE_CONFIG, *wandb_args, f"run.dir={full}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    (record,) = full.glob("wandb/offline-run-*/run-*.wandb")
    records = read_wandb_records(record)
    (run,) = [r.run for r in records if r.HasField("run")]
    assert (run.run_group, list(run.tags), run.job_type, run.notes) == ("g1", ["tiny", "dqn"], "train", "a tiny run")
    assert any(
        r.metric.glob_name == "*" and r.metric.step_metric == "env_step" for r in records if r.HasField("metric")
    )
    history = _assert_history_is_metrics_jsonl(full)
    assert history[-1]["plots/learning_curve"]["_type"] == "image-file"
    (artifact,) = [r.artifact for r in records if r.HasField("artifact")]
    assert (artifact.type, sorted(artifact.aliases)) == ("model", ["latest", "step_3000"])
    files = {c.path: c.local_path for c in artifact.manifest.contents}
    assert sorted(files) == ["config.yaml", "model.safetensors", "summary.json"]
    weights = safetensors.torch.load_file(files["model.safetensors"])
    q_net = rl_lab.load(full)._agent.q_net.state_dict()
    assert all(torch.equal(weights[f"q_net.{k}"], v) for k, v in q_net.items())

    cut = tmp_path / "cut"
    killed_after_first_checkpoint(full, cut)
    result = run_rl_lab("train", "--resume", cut, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (cut / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
    assert len(list(cut.glob("wandb/offline-run-*"))) == 1  # the earlier record is replaced by the rewound one
    resumed = _assert_history_is_metrics_jsonl(cut)
    assert [h["time/sps"] for h in resumed[:2]] == [h["time/sps"] for h in history[:2]]  # kept from before the cut


def test_a_task_run_uploads_its_final_and_best_weights(tmp_path: Path) -> None:
    """A supervised run's model Artifact holds the final and the best-validation weights; its charts use the
    optimiser step."""
    import safetensors.torch
    from conftest import REPO, run_rl_lab

    import rl_lab

    run = tmp_path / "digits"
    args = [
        *("device=cpu", "torch_threads=1", "logger.wandb.mode=offline", "logger.progress=false", "data.name=digits"),
        *("task.ema_decay=null", "train.batch_size=16", "train.epochs=2", "task.augment={}"),
        "task.encoder={name: mlp, kwargs: {hidden_sizes: [16]}}",
    ]
    result = run_rl_lab("train", REPO / "configs" / "mnist_cnn.yaml", *args, f"run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wandb.teardown()
    (record,) = run.glob("wandb/offline-run-*/run-*.wandb")
    records = read_wandb_records(record)
    assert any(r.metric.glob_name == "*" and r.metric.step_metric == "optimizer_step" for r in records)
    (artifact,) = [r.artifact for r in records if r.HasField("artifact")]
    files = {c.path: c.local_path for c in artifact.manifest.contents}
    assert sorted(files) == ["best.safetensors", "config.yaml", "model.safetensors", "summary.json"]
    best = safetensors.torch.load_file(files["best.safetensors"])
    tested = rl_lab.load(run).module.state_dict()
    assert best.keys() == tested.keys() and all(torch.equal(best[k], v) for k, v in tested.items())

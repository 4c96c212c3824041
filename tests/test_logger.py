"""RunLogger: metrics.jsonl, resume truncation, W&B mode resolution, and a real offline W&B run read back."""

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
from wandb.proto import wandb_internal_pb2

from rl_lab.errors import UserError
from rl_lab.logger import RunLogger, resolve_wandb_mode

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


def read_wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Parse a .wandb transaction log: a leveldb-style log of protobuf `Record`s.

    wandb 0.31 has no Python reader (wandb-core writes the file), so this follows the format its old
    `wandb/sdk/internal/datastore.py` documented: a 7-byte header (b":W&B", magic 0xBEE1, version 0), then
    32 KiB blocks of chunks, each `<crc32 (seeded with the type byte), uint16 length, uint8 type>` + data;
    types FULL=1, FIRST=2, MIDDLE=3, LAST=4; a block tail shorter than a chunk header is zero padding.
    """
    data = path.read_bytes()
    assert data[:7] == struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
    records, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        assert crc == zlib.crc32(chunk, zlib.crc32(bytes([kind]))), "corrupt .wandb chunk"
        buf += chunk
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(buf))
            buf = b""
    return records


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


def test_resume_continues_the_same_wandb_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    RunLogger(run_dir, {}, wandb_mode="offline", progress=False).close()
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    RunLogger(run_dir, {}, wandb_mode="offline", progress=False, resume_lines=0).close()
    logs = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert [p.name for p in logs] == [f"run-{run_id}.wandb"] * 2


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
def test_failing_wandb_does_not_stop_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, api_key: str | None
) -> None:
    if api_key:
        monkeypatch.setenv("WANDB_API_KEY", api_key)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: connection refused
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    logger = RunLogger(tmp_path, {"lr": 1e-3}, wandb_mode="online", progress=False)
    logger.log(1, {"return": 1.0}, extra={"sps": 5.0})
    logger.progress(1, sps=5.0)
    logger.summary({"best": 1.0})
    logger.close()
    err = capsys.readouterr().err
    (warning,) = [line for line in err.splitlines() if "wandb unavailable (" in line]
    assert warning.endswith("); continuing without it")
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "return": 1.0}]


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

"""Files the lab writes and reads: atomic writes (a reader sees the old file or the new one, never half of either),
strict JSON (no bare NaN/Infinity) and user text files read with one clear error."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from rl_lab.errors import UserError


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a synced temp file beside `path`, then rename it over `path`; on failure the old file stays."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON null), in nested dicts and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps_json(value: Any, **kwargs) -> str:
    """Strict JSON that any parser reads: non-finite numbers become null (json.dumps would write NaN/Infinity)."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def read_user_text(path: Path, what: str) -> str:
    """A text file the user named (config, map, sweep), or one UserError: missing, unreadable or not UTF-8 text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}" if not path.exists() else f"{what} {path} is not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{what} {path} is not a text file (byte {err.object[err.start]:#04x} at offset {err.start} is not UTF-8)"
        ) from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror}") from None

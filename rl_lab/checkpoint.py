"""Checkpoints without pickle: tensors in safetensors files, everything else in JSON; sealed with digests, and
swapped into place so that `latest` names a complete checkpoint at every moment.

A checkpoint is a directory `checkpoints/step_<N>/`: model.safetensors (the nested torch state), arrays.safetensors
(numpy arrays, e.g. the replay buffer) and state.json (format, step, the torch state's skeleton, `meta`, the SHA-256
of each safetensors file, and a digest of state.json itself). `checkpoints/latest` is one line naming the newest.

The save sequence; a kill at any point of it leaves `latest` naming a complete checkpoint:
1. the new checkpoint is built and synced under `.tmp-step_<N>-<pid>`, a name no reader looks at;
2. a new step is renamed to `step_<N>`; the same step saved again (the end-of-run checkpoint right after a periodic
   one) is swapped with the old `step_<N>` in one atomic renameat2(RENAME_EXCHANGE), so `step_<N>` is the old
   checkpoint or the new one, never missing. A file system without that swap gets the new copy as `step_<N>.1`;
3. `latest` is replaced atomically, and only then is anything removed: the swapped-out copy, other copies of the
   step, checkpoints beyond `keep`. A directory `latest` names is never renamed or removed.

Loading verifies the digests and the JSON's schema (load_checkpoint, state_from_meta); resume_checkpoint falls
back to the newest complete checkpoint when `latest` is missing or damaged. Nothing non-finite is ever saved: a NaN
or infinite tensor raises Diverged instead, so the checkpoints on disk stay the last finite ones.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import sys
import types
import typing
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import SafetensorError

from rl_lab.errors import Diverged, UserError
from rl_lab.fileio import dumps_json, write_atomic

FORMAT_VERSION = 2  # 2: digests of every file; 1 (read, not verified): before digests
FILES = ("model.safetensors", "arrays.safetensors")
NAME = re.compile(r"step_(\d{10})(?:\.(\d+))?")  # step_<N>, or step_<N>.1 (a re-save without an atomic swap)


def flatten_state(state, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    """Split a nested dict/list state (e.g. an optimizer's) into named tensors and a JSON skeleton.

    Tensors are replaced in the skeleton by {"tensor": name}; dicts keep their key types (optimizers use int keys).
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node, path: str):
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous()
            return {"tensor": path}
        if isinstance(node, dict):
            return {"dict": [[key, walk(value, f"{path}.{key}" if path else str(key))] for key, value in node.items()]}
        if isinstance(node, (list, tuple)):
            return {"list": [walk(value, f"{path}.{i}") for i, value in enumerate(node)]}
        if node is None or isinstance(node, (bool, int, float, str)):
            return {"value": node}
        raise TypeError(f"cannot checkpoint {type(node).__name__} at {path}")

    return tensors, walk(state, prefix)


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton):
    def build(node):
        if "tensor" in node:
            return tensors[node["tensor"]]
        if "dict" in node:
            return {key: build(value) for key, value in node["dict"]}
        if "list" in node:
            return [build(value) for value in node["list"]]
        return node["value"]

    return build(skeleton)


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint directory from its name (step_<N> or step_<N>.<copy>); None for other names."""
    match = NAME.fullmatch(path.name)
    return int(match[1]) if match else None


# --------------------------------------------------------------------------------------------------------- saving


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    torch_state: dict,
    arrays: dict[str, np.ndarray],
    meta: dict,
    keep: int = 2,
) -> Path:
    """Write `torch_state` (nested tensors), `arrays` (numpy, e.g. replay) and `meta` (JSON) as checkpoint `step`,
    point `latest` at it and keep the newest `keep` steps; Diverged (nothing written) if a tensor is not finite."""
    if meta.get("step", step) != step:
        raise ValueError(f"meta step {meta['step']} of checkpoint step {step}")
    tensors, skeleton = flatten_state(torch_state)
    bad = nonfinite_tensors(tensors)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise Diverged(step, f"non-finite values in {', '.join(bad[:3])}{more} (not checkpointed)")
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    # A run has one writer at a time (rl_lab.runs locks its directory), so a temporary directory here was left by
    # a process killed mid-save: remove it rather than let dead copies pile up.
    for stale in checkpoints_dir.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in checkpoints_dir.glob(".latest.*.tmp"):  # write_atomic's temporary file of `latest`
        stale.unlink(missing_ok=True)
    tmp = checkpoints_dir / f".tmp-step_{step:010d}-{os.getpid()}"
    try:
        _write(tmp, step, tensors, skeleton, arrays, meta)
        final = _install(tmp, checkpoints_dir / f"step_{step:010d}")
    except BaseException:  # e.g. a full disk: no temporary copy left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomic(checkpoints_dir / "latest", final.name + "\n")
    _fsync_dir(checkpoints_dir)
    _remove_old(checkpoints_dir, final, keep)
    return final


def _write(tmp: Path, step: int, tensors: dict, skeleton, arrays: dict[str, np.ndarray], meta: dict) -> None:
    tmp.mkdir()
    with _io_errors(tmp / FILES[0]):
        safetensors.torch.save_file(tensors, str(tmp / FILES[0]))
    with _io_errors(tmp / FILES[1]):
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / FILES[1]))
    files = {name: _file_digest(tmp / name) for name in FILES}
    document = {"format_version": FORMAT_VERSION, "step": step, "torch_state": skeleton, "meta": meta, "files": files}
    (tmp / "state.json").write_text(_seal(document), encoding="utf-8")
    for name in (*FILES, "state.json"):
        _fsync(tmp / name)
    _fsync_dir(tmp)


@contextmanager
def _io_errors(path: Path):
    """safetensors reports a failed write (a full disk) as a SafetensorError naming the OS error: make it that
    OSError, as a Python write would raise it."""
    try:
        yield
    except SafetensorError as err:
        code = re.search(r"os error (\d+)", str(err))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from err


def _install(tmp: Path, final: Path) -> Path:
    """Move the complete checkpoint `tmp` to its name, the old copy of the same step staying in place until then."""
    if not final.exists():
        os.rename(tmp, final)
        return final
    if _exchange(tmp, final):  # `final` is now the new checkpoint, `tmp` the old one
        shutil.rmtree(tmp)
        return final
    named = _pointer_name(final.parent / "latest")
    for candidate in (final, final.with_name(f"{final.name}.1")):
        if candidate.name != named:  # the copy `latest` names stays until `latest` moves
            if candidate.exists():
                shutil.rmtree(candidate)
            os.rename(tmp, candidate)
            return candidate
    raise AssertionError("unreachable: latest names at most one of two copies")


def _remove_old(checkpoints_dir: Path, final: Path, keep: int) -> None:
    """After `latest` names `final`: remove other copies of its step and the steps beyond the newest `keep`."""
    step = checkpoint_step(final)
    found = [(path, checkpoint_step(path)) for path in checkpoints_dir.iterdir()]
    kept = sorted({s for _, s in found if s is not None}, reverse=True)[:keep]
    for path, s in found:
        if s is not None and path != final and (s == step or s not in kept):
            shutil.rmtree(path, ignore_errors=True)


@functools.cache
def _renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not glibc >= 2.28 (macOS, musl, Windows)
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    sys.audit("rl_lab.checkpoint.exchange", str(a), str(b))  # a file-system change, like os.rename's own event
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system (or kernel) without it
        return False
    raise OSError(code, os.strerror(code), str(b))


def _seal(document: dict) -> str:
    """state.json's text: strict JSON with a digest of its own canonical form, so any edit is detected."""
    return dumps_json({**document, "digest": _document_digest(json.loads(dumps_json(document)))})


def _document_digest(document: dict) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable (a power cut, not only a kill); a no-op where directories cannot sync."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------------------- finding


def _pointer_name(pointer: Path) -> str | None:
    try:
        return pointer.read_bytes()[:200].decode("utf-8", errors="replace").strip()
    except OSError:
        return None


def latest_checkpoint(checkpoints_dir: Path) -> Path:
    """The checkpoint `latest` names, which must be a step_<N> directory of this `checkpoints_dir` (not verified)."""
    pointer = checkpoints_dir / "latest"
    if not pointer.is_file():
        raise UserError(f"no checkpoint in {checkpoints_dir} (nothing to resume or evaluate)")
    name = _pointer_name(pointer) or ""
    if not NAME.fullmatch(name):
        raise UserError(f"{pointer} names {name[:60]!r}, not a checkpoint of this run (step_<N> in {checkpoints_dir})")
    path = checkpoints_dir / name
    if path.is_symlink() or not path.is_dir():
        raise UserError(f"{pointer} points at missing checkpoint {name}")
    return path


def resume_checkpoint(checkpoints_dir: Path) -> tuple[Path | None, str | None]:
    """The checkpoint a resumed run continues from, verified: `latest`, or when it is missing or damaged the
    newest complete checkpoint, with a note saying why `latest` was passed over. (None, None) when the run was
    killed before its first checkpoint (nothing saved): it starts from the beginning."""
    try:
        path = latest_checkpoint(checkpoints_dir)
        _read_document(path)
        return path, None
    except UserError as err:
        problem = err
    found = [p for p in checkpoints_dir.glob("step_*") if checkpoint_step(p) is not None and not p.is_symlink()]
    if not (checkpoints_dir / "latest").exists():
        if not found:
            return None, None
        problem = f"{checkpoints_dir / 'latest'} is missing"  # killed right after the first checkpoint's rename
    for path in sorted(found, key=lambda p: (checkpoint_step(p), p.name), reverse=True):
        try:
            _read_document(path)
        except UserError:
            continue
        return path, f"{problem}; continuing from {path.name}, the newest complete checkpoint"
    others = f"; no other complete checkpoint among {len(found)} in {checkpoints_dir}" if found else ""
    raise UserError(f"{problem}{others}")


# -------------------------------------------------------------------------------------------------------- loading


@contextmanager
def reading_checkpoint(path: Path):
    """Missing entries or mismatched types and shapes while loading `path` become one UserError, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"checkpoint {path} is incomplete or inconsistent ({type(err).__name__}: {err})") from None


def _corrupt(path: Path, detail: str) -> UserError:
    return UserError(f"checkpoint {path} is corrupt or incomplete ({detail})")


def _read_document(path: Path) -> dict:
    """state.json checked: its format, its own digest, the digests of the files, its step against the name."""
    try:
        document = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _corrupt(path, f"state.json: {type(err).__name__}: {err}") from None
    if not isinstance(document, dict):
        raise _corrupt(path, f"state.json holds a {type(document).__name__}, not an object")
    version = document.get("format_version")
    if type(version) is not int or version not in (1, FORMAT_VERSION):
        raise UserError(f"checkpoint {path} has format {version!r}, expected {FORMAT_VERSION}")
    if version == FORMAT_VERSION:
        if document.pop("digest", None) != _document_digest(document):
            raise _corrupt(path, "state.json was modified after it was saved: its digest does not match")
        files = document.get("files")
        for name in FILES:
            if not isinstance(files, dict) or not (path / name).is_file():
                raise _corrupt(path, f"{name} is missing")
            if _file_digest(path / name) != files.get(name):
                raise _corrupt(path, f"{name} does not match its SHA-256 digest in state.json")
    step, named = document.get("step"), checkpoint_step(path)
    if not _is_count(step) or (named is not None and step != named):
        raise UserError(f"checkpoint {path} is invalid: step {step!r} does not match its name {path.name}")
    meta = document.get("meta")
    if not isinstance(meta, dict) or meta.get("step", step) != step:
        raise UserError(f"checkpoint {path} is invalid: meta is not an object with step {step}")
    return document


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict, dict[str, np.ndarray], dict]:
    """Return (torch_state, arrays, meta) after verifying the checkpoint; any damage is a UserError, never a
    traceback or an unpickle. Check the meta's fields with state_from_meta."""
    document = _read_document(path)
    try:
        tensors = safetensors.torch.load_file(str(path / FILES[0]), device=str(device))
        arrays = safetensors.numpy.load_file(str(path / FILES[1]))
        torch_state = unflatten_state(tensors, document["torch_state"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise _corrupt(path, f"{type(err).__name__}: {err}") from None
    bad = nonfinite_tensors(tensors)
    if bad:
        raise UserError(f"checkpoint {path} holds non-finite values in {', '.join(bad[:3])}; it cannot be used")
    return torch_state, arrays, document["meta"]


def state_from_meta(cls: type, meta: dict, path: Path):
    """Dataclass `cls` (a loop's counters, e.g. LoopState) from a checkpoint's meta, each field's JSON value checked
    against its annotation (counts are non-negative integers, floats finite), so a bad value is one UserError."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in meta:
            raise UserError(f"checkpoint {path} is invalid: its meta has no {f.name}")
        value = meta[f.name]
        if not _matches(hints[f.name], value):
            raise UserError(
                f"checkpoint {path} is invalid: {f.name}={value!r} is not a valid {_describe(hints[f.name])}"
            )
        values[f.name] = value
    return cls(**values)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _matches(tp, value) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(arg, value) for arg in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return _is_count(value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if tp is list or origin is list:
        return isinstance(value, list) and all(_matches(args[0], v) for v in value) if args else isinstance(value, list)
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    raise TypeError(f"state_from_meta cannot check {tp}")


def _describe(tp) -> str:
    names = {int: "count (an integer >= 0)", float: "finite number", type(None): "null"}
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def load_module_state(module: torch.nn.Module, state: dict, what: str) -> None:
    """load_state_dict with a readable error when the checkpoint was made by a different network."""
    own = module.state_dict()
    if set(own) != set(state):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise UserError(f"checkpoint {what} does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, tensor in own.items():
        if tensor.shape != state[key].shape:
            raise UserError(
                f"checkpoint {what} does not match the model: {key} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(tensor.shape)} (check the encoder/network settings)"
            )
    module.load_state_dict(state)

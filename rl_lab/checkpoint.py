"""Checkpoints without pickle: tensors in safetensors files, everything else in JSON, written atomically.

A checkpoint is a directory `checkpoints/step_<N>/` built under a temporary name and renamed into place, then
`checkpoints/latest` (a one-line text file) is replaced to point at it. A crash at any moment leaves the
previous checkpoint intact and `latest` pointing at a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import SafetensorError

from rl_lab.errors import UserError
from rl_lab.fileio import write_atomic

FORMAT_VERSION = 1


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


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    torch_state: dict,
    arrays: dict[str, np.ndarray],
    meta: dict,
    keep: int = 2,
) -> Path:
    """Write `torch_state` (nested tensors), `arrays` (numpy, e.g. replay) and `meta` (JSON) atomically."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / f"step_{step:010d}"
    # One process writes a run's checkpoints at a time, so any temporary directory here was left by a process
    # killed mid-save (a resumed run has a new pid): remove it rather than let dead copies pile up.
    for stale in checkpoints_dir.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = checkpoints_dir / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    tensors, skeleton = flatten_state(torch_state)
    safetensors.torch.save_file(tensors, str(tmp / "model.safetensors"))
    safetensors.numpy.save_file(
        {k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / "arrays.safetensors")
    )
    document = {"format_version": FORMAT_VERSION, "step": step, "torch_state": skeleton, "meta": meta}
    (tmp / "state.json").write_text(json.dumps(document))
    for file in tmp.iterdir():
        _fsync(file)
    if final.exists():  # the same step saved again (e.g. final checkpoint right after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_atomic(checkpoints_dir / "latest", final.name + "\n")
    for old in sorted(checkpoints_dir.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def reading_checkpoint(path: Path):
    """Missing entries or mismatched types and shapes while loading `path` become one UserError, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"checkpoint {path} is incomplete or inconsistent ({type(err).__name__}: {err})") from None


def latest_checkpoint(checkpoints_dir: Path) -> Path:
    pointer = checkpoints_dir / "latest"
    if not pointer.is_file():
        raise UserError(f"no checkpoint in {checkpoints_dir} (nothing to resume or evaluate)")
    path = checkpoints_dir / pointer.read_text().strip()
    if not path.is_dir():
        raise UserError(f"{pointer} points at missing checkpoint {path.name}")
    return path


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict, dict[str, np.ndarray], dict]:
    """Return (torch_state, arrays, meta); any damage is a UserError, never a traceback or an unpickle."""
    try:
        document = json.loads((path / "state.json").read_text())
        if not isinstance(document, dict):
            raise ValueError(f"state.json holds a {type(document).__name__}, not an object")
        if document.get("format_version") != FORMAT_VERSION:
            raise UserError(f"checkpoint {path} has format {document.get('format_version')}, expected {FORMAT_VERSION}")
        tensors = safetensors.torch.load_file(str(path / "model.safetensors"), device=str(device))
        arrays = safetensors.numpy.load_file(str(path / "arrays.safetensors"))
        return unflatten_state(tensors, document["torch_state"]), arrays, document["meta"]
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise UserError(f"checkpoint {path} is corrupt or incomplete ({type(err).__name__}: {err})") from None


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


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())

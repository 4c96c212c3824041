"""Save and load encoders without pickle.

A save is a directory holding two files:
  encoder.json         the resolved EncoderSpec, human-readable
  encoder.safetensors  the state_dict, with the same spec in its metadata
Each file is written to a temp file in the same directory and moved into place with os.replace, so a
reader never sees a half-written file. The spec copy inside the safetensors metadata lets a load detect
a directory whose two files come from different saves (an overwrite interrupted between the two moves).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors
import safetensors.torch
from torch import nn

from rl_lab.backbone.encoders import Encoder, EncoderSpec, build_encoder, resolve_spec
from rl_lab.errors import UserError
from rl_lab.fileio import write_atomic

SPEC_FILE = "encoder.json"
WEIGHTS_FILE = "encoder.safetensors"


def save_encoder(encoder: Encoder, path: str | os.PathLike) -> None:
    """Save encoder into directory `path` (created if needed), replacing any earlier save there."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"cannot save encoder to {directory}: it is a file; pass a directory path")
    directory.mkdir(parents=True, exist_ok=True)
    spec_json = json.dumps(encoder.spec.to_dict(), sort_keys=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    write_atomic(directory / WEIGHTS_FILE, safetensors.torch.save(state, metadata={"spec": spec_json}))
    write_atomic(directory / SPEC_FILE, (spec_json + "\n").encode())


def _existing(directory: Path, name: str) -> Path:
    if not directory.exists():
        raise UserError(f"no encoder saved at {directory}: path not found; check the path")
    if not directory.is_dir():
        raise UserError(f"no encoder saved at {directory}: it is a file; pass the directory save_encoder wrote")
    file = directory / name
    if not file.is_file():
        raise UserError(f"no encoder saved at {directory}: {file} is missing; re-save the encoder")
    return file


def _parse_spec(text: str, source: Path) -> EncoderSpec:
    try:
        return EncoderSpec.from_dict(json.loads(text))
    except (json.JSONDecodeError, UserError) as e:
        raise UserError(f"corrupt encoder file {source}: {e}; re-save the encoder") from e


def _read(directory: Path) -> tuple[EncoderSpec, dict]:
    """Read and cross-check both files; return the saved spec and the state_dict (on CPU)."""
    spec_file = _existing(directory, SPEC_FILE)
    weights_file = _existing(directory, WEIGHTS_FILE)
    try:
        spec_text = spec_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"corrupt encoder file {spec_file}: not UTF-8 text; re-save the encoder") from e
    spec = _parse_spec(spec_text, spec_file)
    try:
        with safetensors.safe_open(str(weights_file), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except safetensors.SafetensorError as e:
        raise UserError(f"corrupt encoder file {weights_file}: {e}; re-save the encoder") from e
    if "spec" not in metadata:
        raise UserError(f"corrupt encoder file {weights_file}: no spec in its metadata; re-save the encoder")
    if _parse_spec(metadata["spec"], weights_file) != spec:
        raise UserError(
            f"corrupt encoder save {directory}: {SPEC_FILE} and {WEIGHTS_FILE} come from different saves "
            "(interrupted overwrite?); re-save the encoder"
        )
    return spec, state


def _load_state(encoder: nn.Module, state: dict, directory: Path) -> None:
    try:
        encoder.load_state_dict(state)
    except RuntimeError as e:
        first_line = str(e).strip().splitlines()[0]
        raise UserError(
            f"corrupt encoder file {directory / WEIGHTS_FILE}: tensors do not fit its spec ({first_line}); "
            "re-save the encoder"
        ) from e


def load_encoder(path: str | os.PathLike) -> Encoder:
    """Build the encoder from the saved spec and load its weights; the result is on CPU."""
    directory = Path(path)
    spec, state = _read(directory)
    try:
        encoder = build_encoder(spec)
    except UserError as e:
        raise UserError(f"cannot build encoder saved at {directory}: {e}") from e
    _load_state(encoder, state, directory)
    return encoder


def load_encoder_weights(encoder: Encoder, path: str | os.PathLike) -> None:
    """Load saved weights into an existing encoder, refusing if the saved spec differs from encoder.spec."""
    directory = Path(path)
    saved, state = _read(directory)
    try:
        saved = resolve_spec(saved)  # fills kwargs added since the save with their defaults
    except UserError as e:
        raise UserError(f"cannot use encoder saved at {directory}: {e}") from e
    if saved != encoder.spec:
        if saved.name == encoder.spec.name:
            keys = sorted(
                k
                for k in set(saved.kwargs) | set(encoder.spec.kwargs)
                if saved.kwargs.get(k) != encoder.spec.kwargs.get(k)
            )
        else:
            keys = None
        raise UserError(
            f"encoder spec mismatch: checkpoint {directory} has {saved.describe(keys)} "
            f"but the model declares {encoder.spec.describe(keys)}; "
            "build the model with the checkpoint's spec or use load_encoder() to build it from the checkpoint"
        )
    _load_state(encoder, state, directory)

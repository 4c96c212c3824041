"""Encoders by name, heads, and safe save/load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from rl_lab.backbone import (
    EncoderSpec,
    LinearHead,
    MLPHead,
    build_encoder,
    encoder_names,
    load_encoder,
    load_encoder_weights,
    save_encoder,
)
from rl_lab.errors import UserError

MLP = EncoderSpec("mlp", (4,), {"hidden_sizes": [64, 64]})
CNN = EncoderSpec("nature_cnn", (4, 84, 84), {})


def _frames(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_registry_lists_every_encoder_the_design_names() -> None:
    assert encoder_names() == ["gru", "lenet", "lstm", "mlp", "nature_cnn", "resnet", "vgg"]


@pytest.mark.parametrize(
    ("spec", "out_dim", "x"),
    [
        (EncoderSpec("mlp", (4,), {"hidden_sizes": [32, 16]}), 16, torch.randn(5, 4)),
        (EncoderSpec("mlp", (2, 3), {"hidden_sizes": []}), 6, torch.randn(5, 2, 3)),
        (EncoderSpec("mlp", (4,), {}), 64, torch.randn(5, 4)),  # default hidden_sizes [64, 64]
        (CNN, 512, torch.rand(5, 4, 84, 84)),
        (EncoderSpec("nature_cnn", (1, 64, 48), {"features": 128}), 128, torch.rand(5, 1, 64, 48)),
    ],
)
def test_build_by_name_out_dim_and_shape(spec: EncoderSpec, out_dim: int, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    enc = build_encoder(spec)
    y = enc(x)
    assert enc.out_dim == out_dim
    assert y.shape == (5, out_dim)
    assert y.dtype == torch.float32


def test_nature_cnn_matches_paper_layers() -> None:
    convs = [m for m in build_encoder(CNN).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)),
        (64, (4, 4), (2, 2)),
        (64, (3, 3), (1, 1)),
    ]
    linears = [m for m in build_encoder(CNN).modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64 * 7 * 7, 512)]


def test_nature_cnn_scales_uint8_inside_forward() -> None:
    torch.manual_seed(0)
    enc = build_encoder(CNN)
    frames = _frames()
    from_uint8 = enc(frames)
    assert torch.equal(from_uint8, enc(frames.float() / 255))
    # float input is taken as already scaled: scaling it again would make these equal
    assert not torch.allclose(from_uint8, enc(frames.float()))


@pytest.mark.parametrize("spec", [CNN, EncoderSpec("resnet", (3, 32, 32), {"norm": "batch"})], ids=lambda s: s.name)
def test_image_encoders_convolve_channels_last_on_the_cpu_with_the_same_results_and_plain_weights(
    spec: EncoderSpec,
) -> None:
    """The fast oneDNN layout changes how the convs run, not what they compute, nor the layout checkpoints store."""
    torch.manual_seed(0)
    enc = build_encoder(spec).eval()
    seen = []
    first_conv = next(m for m in enc.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    frames = torch.rand(8, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    out = enc(frames)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert torch.allclose(out, enc.net(frames), atol=1e-5)  # the same layers on the usual (N, C, H, W) layout
    enc.train()
    enc(frames).sum().backward()
    optimizer = torch.optim.Adam(enc.parameters())
    optimizer.step()
    tensors = [*enc.state_dict().values(), *(t for s in optimizer.state.values() for t in s.values() if t.dim())]
    assert all(t.is_contiguous() for t in tensors)
    assert enc.eval()(frames[:1]).shape == (1, enc.out_dim)  # a single frame too


def test_small_frames_keep_the_usual_layout_where_channels_last_gains_nothing() -> None:
    enc = build_encoder(EncoderSpec("nature_cnn", (4, 10, 10), {"features": 128, "convs": [[16, 3, 1]]}))
    seen = []
    enc.net[0].register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    enc(torch.rand(8, 4, 10, 10))
    assert seen[0].is_contiguous()


def test_build_fills_defaults_into_spec() -> None:
    enc = build_encoder(EncoderSpec("mlp", [4], {}))
    assert enc.spec == EncoderSpec("mlp", (4,), {"hidden_sizes": [64, 64], "activation": "relu", "init": "torch"})


def test_spec_json_round_trip() -> None:
    spec = EncoderSpec("mlp", (3, 2), {"hidden_sizes": (8, 8), "activation": "tanh"})
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["input_shape"] == [3, 2]
    assert EncoderSpec.from_dict(d) == spec


def test_unknown_encoder_name_lists_valid_names() -> None:
    with pytest.raises(UserError) as info:
        build_encoder(EncoderSpec("mpl", (4,), {}))
    msg = str(info.value)
    assert "mpl" in msg and "did you mean 'mlp'" in msg
    assert "mlp" in msg and "nature_cnn" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (EncoderSpec("mlp", (4,), {"hidden_size": [64]}), "hidden_size"),
        (EncoderSpec("mlp", (4,), {"hidden_sizes": [64, 0]}), "hidden_sizes"),
        (EncoderSpec("mlp", (4,), {"hidden_sizes": 64}), "hidden_sizes"),
        (EncoderSpec("mlp", (4,), {"activation": "gelu"}), "activation"),
        (EncoderSpec("nature_cnn", (4, 84, 84), {"features": -1}), "features"),
        (EncoderSpec("nature_cnn", (4, 84, 84), {"features": 1.5}), "features"),
        (EncoderSpec("nature_cnn", (4,), {}), "input_shape"),
        (EncoderSpec("nature_cnn", (4, 20, 20), {}), "36x36"),
        (EncoderSpec("mlp", (0,), {}), "input_shape"),
        (EncoderSpec("mlp", (4,), {"init": "xavier"}), "init"),
        (EncoderSpec("nature_cnn", (4, 84, 84), {"init": "kaiming"}), "init"),
    ],
)
def test_bad_kwargs_raise_user_error_naming_them(spec: EncoderSpec, named: str) -> None:
    with pytest.raises(UserError, match=named):
        build_encoder(spec)


@pytest.mark.parametrize("spec", [MLP, CNN])
def test_orthogonal_init_gives_orthogonal_weights_of_gain_sqrt2_and_zero_biases(spec: EncoderSpec) -> None:
    torch.manual_seed(0)
    default = build_encoder(spec)
    torch.manual_seed(0)
    orthogonal = build_encoder(EncoderSpec(spec.name, spec.input_shape, {**spec.kwargs, "init": "orthogonal"}))
    layers = [m for m in orthogonal.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(layers) == (2 if spec is MLP else 4)
    for layer in layers:
        w = layer.weight.flatten(1)  # (out, in): orthogonal rows (or columns, whichever are fewer), norm sqrt(2)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        assert torch.allclose(gram, 2 * torch.eye(len(gram)), atol=1e-4)
        assert not layer.bias.any()
    assert any(m.bias.any() for m in default.modules() if isinstance(m, torch.nn.Linear))  # torch's default differs


def test_spec_from_dict_rejects_malformed() -> None:
    with pytest.raises(UserError, match="input_shape"):
        EncoderSpec.from_dict({"name": "mlp", "input_shape": 4})
    with pytest.raises(UserError, match="unknown key"):
        EncoderSpec.from_dict({"name": "mlp", "input_shape": [4], "hidden_sizes": [8]})


def test_heads_shapes_and_validation() -> None:
    x = torch.randn(3, 16)
    assert LinearHead(16, 5)(x).shape == (3, 5)
    head = MLPHead(16, [32, 8], 5, activation="tanh")
    assert head(x).shape == (3, 5)
    assert [m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)] == [32, 8, 5]
    with pytest.raises(UserError, match="activation"):
        MLPHead(16, [32], 5, activation="swish")


@pytest.mark.parametrize(("spec", "x"), [(MLP, torch.randn(3, 4)), (CNN, _frames(3))])
def test_save_load_round_trip(tmp_path: Path, spec: EncoderSpec, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    enc = build_encoder(spec)
    save_encoder(enc, tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc")
    assert loaded.spec == enc.spec
    assert torch.equal(loaded(x), enc(x))

    torch.manual_seed(1)
    fresh = build_encoder(spec)
    assert not torch.equal(fresh(x), enc(x))
    load_encoder_weights(fresh, tmp_path / "enc")
    assert torch.equal(fresh(x), enc(x))


def test_load_weights_into_different_spec_is_user_error(tmp_path: Path) -> None:
    save_encoder(build_encoder(MLP), tmp_path)
    other = build_encoder(EncoderSpec("mlp", (4,), {"hidden_sizes": [256, 256]}))
    with pytest.raises(UserError) as info:
        load_encoder_weights(other, tmp_path)
    msg = str(info.value)
    assert msg.startswith("encoder spec mismatch")
    assert "mlp(input_shape=(4,), hidden_sizes=[64, 64])" in msg
    assert "mlp(input_shape=(4,), hidden_sizes=[256, 256])" in msg
    assert "\n" not in msg


def test_missing_save_names_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nowhere"):
        load_encoder(tmp_path / "nowhere")
    save_encoder(build_encoder(MLP), tmp_path)
    (tmp_path / "encoder.safetensors").unlink()
    with pytest.raises(UserError, match="encoder.safetensors"):
        load_encoder(tmp_path)


@pytest.mark.parametrize(
    ("file", "content"),
    [
        ("encoder.safetensors", b"not a safetensors file"),
        ("encoder.safetensors", None),  # truncated
        ("encoder.json", b"{not json"),
        ("encoder.json", b'{"name": "mlp"}'),
        ("encoder.json", b"\xff\xfe"),
    ],
)
def test_corrupt_file_is_user_error(tmp_path: Path, file: str, content: bytes | None) -> None:
    save_encoder(build_encoder(MLP), tmp_path)
    target = tmp_path / file
    target.write_bytes(target.read_bytes()[:-10] if content is None else content)
    with pytest.raises(UserError, match="corrupt encoder"):
        load_encoder(tmp_path)


def test_files_from_different_saves_are_detected(tmp_path: Path) -> None:
    save_encoder(build_encoder(MLP), tmp_path / "a")
    save_encoder(build_encoder(EncoderSpec("mlp", (4,), {"hidden_sizes": [8]})), tmp_path / "b")
    os.replace(tmp_path / "b" / "encoder.json", tmp_path / "a" / "encoder.json")
    with pytest.raises(UserError, match="different saves"):
        load_encoder(tmp_path / "a")


def test_overwrite_replaces_save_and_leaves_no_temp_files(tmp_path: Path) -> None:
    save_encoder(build_encoder(MLP), tmp_path)
    torch.manual_seed(3)
    new = build_encoder(EncoderSpec("mlp", (4,), {"hidden_sizes": [8]}))
    save_encoder(new, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "encoder.safetensors"]
    loaded = load_encoder(tmp_path)
    assert loaded.spec == new.spec
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), new(x))


def test_failed_save_keeps_old_save_and_cleans_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    old = build_encoder(MLP)
    save_encoder(old, tmp_path)

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_encoder(build_encoder(MLP), tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "encoder.safetensors"]
    x = torch.randn(2, 4)
    assert torch.equal(load_encoder(tmp_path)(x), old(x))


def test_save_files_are_plain_json_and_safetensors(tmp_path: Path) -> None:
    enc = build_encoder(MLP)
    save_encoder(enc, tmp_path)
    spec = json.loads((tmp_path / "encoder.json").read_text())
    assert spec == {
        "name": "mlp",
        "input_shape": [4],
        "kwargs": {"hidden_sizes": [64, 64], "activation": "relu", "init": "torch"},
    }
    tensors = safetensors.torch.load_file(tmp_path / "encoder.safetensors")
    assert tensors.keys() == enc.state_dict().keys()

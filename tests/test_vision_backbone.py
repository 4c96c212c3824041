"""Image encoders (LeNet-5, ResNet, VGG): shapes on every input size, norms, inits, dropout, validation."""

from __future__ import annotations

import math
import re

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from rl_lab.backbone import EncoderSpec, LinearHead, build_encoder, load_encoder, save_encoder
from rl_lab.errors import UserError

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 60, 60)]
SMALL = {  # narrow versions, to keep the tests fast
    "lenet": {},
    "resnet": {"width": 4, "blocks": [1, 1]},
    "vgg": {"channels": [4, 8], "hidden_sizes": [16]},
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets: one thread is faster than two fighting over a loaded 2-core machine (also used by
    test_diagnostics and test_gradcheck)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(name: str, shape: tuple, **kwargs) -> EncoderSpec:
    return EncoderSpec(name, shape, {**SMALL[name], **kwargs})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(SMALL))
def test_any_input_size_uint8_or_float(name: str, shape: tuple) -> None:
    torch.manual_seed(0)
    enc = build_encoder(_spec(name, shape)).eval()
    images = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    out = enc(images)
    assert out.shape == (3, enc.out_dim) and out.dtype == torch.float32
    torch.testing.assert_close(enc(images.float() / 255), out)  # uint8 is scaled to [0, 1] inside


def test_lenet5_has_the_paper_layers_on_mnist() -> None:
    enc = build_encoder(EncoderSpec("lenet", (1, 28, 28)))
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(6, (5, 5)), (16, (5, 5))]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(400, 120), (120, 84)]
    head = LinearHead(enc.out_dim, 10)
    assert sum(p.numel() for p in [*enc.parameters(), *head.parameters()]) == 61706  # LeNet-5's known count


@pytest.mark.parametrize("blocks", [[1, 1, 1], [2, 2, 2], [3]])
def test_resnet_depth_width_and_downsampling(blocks: list[int]) -> None:
    enc = build_encoder(EncoderSpec("resnet", (3, 32, 32), {"width": 8, "blocks": blocks}))
    convs3 = [m for m in enc.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) + 1 == 2 * sum(blocks) + 2  # ResNet-(6n+2) for [n, n, n], counting the classifier
    assert enc.out_dim == 8 * 2 ** (len(blocks) - 1)
    sizes = []
    for block in enc.net:  # each stage after the first halves the resolution
        if hasattr(block, "shortcut"):
            block.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    enc(torch.rand(1, 3, 32, 32))
    assert sizes == [32 // 2**s for s, n in enumerate(blocks) for _ in range(n)]


def test_resnet_shortcut_carries_the_input() -> None:
    """With the residual branch zeroed, a block whose shape does not change is the identity after ReLU."""
    enc = build_encoder(EncoderSpec("resnet", (1, 8, 8), {"width": 4, "blocks": [1], "norm": "none"}))
    block = enc.net[3]
    for p in block.body.parameters():
        nn.init.zeros_(p)
    x = torch.rand(2, 4, 8, 8)
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize(
    ("norm", "module", "groups"),
    [("batch", nn.BatchNorm2d, None), ("layer", nn.GroupNorm, 1), ("group", nn.GroupNorm, 2), ("none", None, None)],
)
def test_norm_kinds(name: str, norm: str, module: type | None, groups: int | None) -> None:
    enc = build_encoder(_spec(name, (1, 28, 28), norm=norm))
    found = [m for m in enc.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm))]
    if module is None:
        assert found == []
        assert all(m.bias is not None for m in enc.modules() if isinstance(m, nn.Conv2d))
        return
    assert found and isinstance(found[0], module)
    if groups is not None:
        assert {m.num_groups for m in found} == {groups}
    # a normalised first layer (no bias) makes the features blind to the input's scale
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(enc(3 * x), enc(x), atol=1e-4, rtol=1e-3)


def test_layer_norm_treats_examples_independently_batch_norm_does_not() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    for norm, independent in [("layer", True), ("group", True), ("batch", False)]:
        enc = build_encoder(_spec("vgg", (1, 28, 28), norm=norm))  # train mode
        alone, in_batch = enc(x[:2]), enc(x)[:2]
        assert torch.allclose(alone, in_batch, atol=1e-5) == independent, norm


@pytest.mark.parametrize("name", sorted(SMALL))
def test_inits(name: str) -> None:
    torch.manual_seed(0)
    big = {"lenet": {"channels": [64, 64]}, "resnet": {"width": 64}, "vgg": {"channels": [64, 64]}}[name]
    for init in ("kaiming", "xavier", "orthogonal"):
        enc = build_encoder(_spec(name, (1, 28, 28), init=init, norm="none", **big))
        conv = [m for m in enc.modules() if isinstance(m, nn.Conv2d)][1]  # 64 -> 64 channels
        fan_in, fan_out = conv.weight[0].numel(), conv.weight[:, 0].numel()
        std = conv.weight.std().item()
        if init == "kaiming":
            assert std == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
        elif init == "xavier":
            assert std == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
        else:
            w = conv.weight.flatten(1)
            torch.testing.assert_close(w @ w.T, 2 * torch.eye(64), atol=1e-4, rtol=0)  # gain sqrt(2) for ReLU
        assert all(m.bias.abs().max() == 0 for m in enc.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_dropout_only_in_train_mode(name: str) -> None:
    torch.manual_seed(0)
    enc = build_encoder(_spec(name, (1, 28, 28), dropout=0.5, norm="none"))
    x = torch.rand(4, 1, 28, 28)
    assert not torch.equal(enc(x), enc(x))
    enc.eval()
    assert torch.equal(enc(x), enc(x))
    assert [m.p for m in enc.modules() if isinstance(m, nn.Dropout)][-1] == 0.5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (EncoderSpec("resnet", (1, 8, 8), {"norm": "instance"}), "'norm' must be one of"),
        (EncoderSpec("vgg", (1, 8, 8), {"init": "he"}), "'init' must be one of"),
        (EncoderSpec("lenet", (1, 28, 28), {"norm": "group", "groups": 4}), "groups=4 must divide every layer"),
        (EncoderSpec("resnet", (1, 8, 8), {"dropout": 1.0}), "'dropout' must be a number in [0, 1)"),
        (EncoderSpec("resnet", (1, 8, 8), {"blocks": []}), "at least one stage"),
        (EncoderSpec("resnet", (1, 8, 8), {"width": 0}), "'width' must be a positive int"),
        (EncoderSpec("vgg", (1, 8, 8), {"channels": [8, 8, 8, 8]}), "8x8 are too small"),
        (EncoderSpec("lenet", (1, 2, 2), {}), "2x2 are too small"),
        (EncoderSpec("lenet", (1, 28, 28), {"pool": "min"}), "'pool' must be 'max' or 'avg'"),
        (EncoderSpec("lenet", (784,), {}), "needs input_shape (C, H, W)"),
        (EncoderSpec("vgg", (1, 8, 8), {"depth": 3}), "has no kwarg 'depth'"),
    ],
)
def test_bad_kwargs_are_user_errors(spec: EncoderSpec, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        build_encoder(spec)


def test_save_load_round_trip_keeps_batch_norm_statistics(tmp_path) -> None:
    torch.manual_seed(0)
    enc = build_encoder(_spec("resnet", (1, 8, 8)))
    enc(torch.rand(16, 1, 8, 8))  # updates running statistics
    enc.eval()
    save_encoder(enc, tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc").eval()
    assert loaded.spec == enc.spec
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(loaded(x), enc(x))


@pytest.mark.learning
@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_encoder_learns_digits(name: str) -> None:
    """Five epochs of Adam on 8x8 digits: each encoder plus a linear head classifies held-out digits."""
    torch.manual_seed(0)
    digits = load_digits()
    perm = torch.randperm(len(digits.target))
    x = torch.tensor(digits.images, dtype=torch.float32)[perm].unsqueeze(1) / 16
    y = torch.tensor(digits.target)[perm]
    enc = build_encoder(_spec(name, (1, 8, 8), **({"width": 8} if name == "resnet" else {})))
    model = nn.Sequential(enc, LinearHead(enc.out_dim, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        for idx in torch.randperm(1500).split(32):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    accuracy = (model(x[1500:]).argmax(1) == y[1500:]).float().mean().item()
    assert accuracy >= 0.88, accuracy  # chance is 0.1

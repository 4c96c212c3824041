"""The finite-difference gradient check, and our layers and losses passing it."""

from __future__ import annotations

import pytest
import torch
from test_vision_backbone import one_thread  # noqa: F401 - autouse fixture: one torch thread
from torch import nn

from rl_lab.agents.dqn import QNetwork
from rl_lab.backbone import EncoderSpec, build_encoder
from rl_lab.backbone.vision import BasicBlock, norm_layer
from rl_lab.gradcheck import check_gradients, check_module, relative_error

GOOD = 1e-4  # correct gradients: about 1e-6 in float64 (1e-4 next to a ReLU kink); wrong ones: above 1e-2


class _WrongSquare(torch.autograd.Function):
    """x**2 with the gradient 3x instead of 2x: the kind of bug a gradient check exists to catch."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x


def _leaf(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def test_catches_a_wrong_backward_and_passes_the_right_one() -> None:
    x = _leaf(5)
    assert check_gradients(lambda: _WrongSquare.apply(x), {"x": x})["x"] > 0.1
    assert check_gradients(lambda: x**2, {"x": x})["x"] < GOOD


def test_catches_a_gradient_that_misses_one_input() -> None:
    a, b = _leaf(3), _leaf(3, seed=1)
    errors = check_gradients(lambda: a * b.detach() + b, {"a": a, "b": b})  # detach hides b's product term
    assert errors["a"] < GOOD and errors["b"] > 0.1


def test_relative_error_is_scale_free_and_ignores_round_off_on_zero_gradients() -> None:
    a = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    assert relative_error(a, a * (1 + 1e-3)) == pytest.approx(1e-3, rel=1e-2)
    assert relative_error(1e6 * a, 1e6 * a * (1 + 1e-3)) == pytest.approx(1e-3, rel=1e-2)
    assert relative_error(a, a + torch.tensor([0, 0, 1e-12], dtype=torch.float64)) < 1e-9  # not 1.0


def test_rejects_float32() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="float64"):
        check_gradients(lambda: x**2, {"x": x})


@pytest.mark.parametrize("norm", ["batch", "layer", "group", "none"])
def test_resnet_basic_block_with_each_norm(norm: str) -> None:
    torch.manual_seed(0)
    kw = {"norm": norm, "groups": 2, "activation": "relu"}
    block = BasicBlock(2, 4, 2, kw)  # downsampling: the 1x1 conv shortcut is checked too
    errors = check_module(block, torch.randn(3, 2, 4, 4))
    assert len(errors) == 1 + len(list(block.parameters()))
    assert max(errors.values()) < GOOD, errors


@pytest.mark.parametrize(("kind", "image"), [("layer", True), ("group", True), ("layer", False), ("batch", False)])
def test_norm_layers(kind: str, image: bool) -> None:
    """Layer norm inside a conv net normalises each example over (C, H, W)."""
    torch.manual_seed(0)
    layer = norm_layer(kind, 4, 2, image)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    errors = check_module(layer, torch.randn(3, 4, 3, 3) if image else torch.randn(3, 4))
    assert max(errors.values()) < GOOD, errors


@pytest.mark.parametrize(
    ("name", "shape", "kwargs"),
    [
        ("lenet", (1, 8, 8), {"channels": [2, 3], "hidden_sizes": [4], "activation": "tanh", "pool": "avg"}),
        ("vgg", (1, 4, 4), {"channels": [2], "convs_per_block": 2, "hidden_sizes": [4], "norm": "layer"}),
        ("resnet", (1, 4, 4), {"width": 2, "blocks": [1, 1], "norm": "group", "activation": "elu"}),
        ("vgg", (1, 4, 4), {"channels": [2], "hidden_sizes": [6], "norm": "none", "dropout": 0.5}),
    ],
)
def test_vision_encoders(name: str, shape: tuple, kwargs: dict) -> None:
    torch.manual_seed(0)
    enc = build_encoder(EncoderSpec(name, shape, kwargs))
    for p in enc.parameters():  # zero biases put the pre-activations of dead regions exactly on ReLU's kink
        if p.dim() == 1:
            nn.init.uniform_(p, -0.1, 0.1)
    errors = check_module(enc, torch.rand(2, *shape))
    assert max(errors.values()) < GOOD, errors


def test_dueling_q_network() -> None:
    """DQN's dueling head, Q = V + A - mean(A), on an encoder."""
    torch.manual_seed(0)
    net = QNetwork(EncoderSpec("mlp", (4,), {"hidden_sizes": [5]}), 3, dueling=True)
    errors = check_module(net, torch.randn(6, 4))
    assert {"head.value.weight", "head.advantage.weight"} <= set(errors)
    assert max(errors.values()) < GOOD, errors

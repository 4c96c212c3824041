"""The lectures' diagnostics on small models and sklearn's 8x8 digits: each one's numbers and files."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import matplotlib.image
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from test_vision_backbone import one_thread  # noqa: F401 - autouse fixture: one torch thread
from torch import nn

from rl_lab import diagnostics as D
from rl_lab.agents.dqn import QNetwork
from rl_lab.backbone import EncoderSpec, LinearHead, build_encoder
from rl_lab.errors import UserError


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """200 digits as uint8 images (1, 8, 8) and their labels."""
    data = load_digits()
    images = torch.tensor(data.images[:200] * 255 / 16, dtype=torch.float32).round().to(torch.uint8).unsqueeze(1)
    return images, torch.tensor(data.target[:200])


class Classifier(nn.Module):
    """An encoder plus a linear head, as a supervised task builds it."""

    def __init__(self, name: str = "lenet", shape: tuple = (1, 8, 8), **kwargs) -> None:
        super().__init__()
        self.encoder = build_encoder(EncoderSpec(name, shape, kwargs))
        self.head = LinearHead(self.encoder.out_dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class Constant(nn.Module):
    """Logits that ignore the input: a model that cannot fit labels that vary."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), 10)


def _linear(weight: torch.Tensor) -> nn.Sequential:
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0]))
    with torch.no_grad():
        model[1].weight.copy_(weight)
        model[1].bias.zero_()
    return model


def _json(path) -> dict:
    return json.loads(path.read_text())


def test_initial_loss_is_log_c_and_flags_large_logits(digits, tmp_path) -> None:
    torch.manual_seed(0)
    model = Classifier()
    result = D.initial_loss(model, *digits, tmp_path)
    assert result["expected"] == pytest.approx(math.log(10))
    assert result["loss"] == pytest.approx(math.log(10), rel=0.25) and result["ok"]
    assert _json(tmp_path / "initial_loss.json") == result
    with torch.no_grad():
        model.head.linear.weight.mul_(100)  # confident random guesses: the loss far above log C
    assert not D.initial_loss(model, *digits, tmp_path)["ok"]


def test_overfit_tiny_reaches_100_percent_and_leaves_the_model_alone(digits, tmp_path) -> None:
    torch.manual_seed(0)
    model = Classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = D.overfit_tiny(model, *digits, tmp_path, n=20)
    assert result["ok"] and result["train_accuracy"] == 1.0 and result["n"] == 20
    assert result["steps_to_100"] <= 300
    assert (tmp_path / "overfit_tiny.png").stat().st_size > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    broken = D.overfit_tiny(Constant(), *digits, tmp_path / "broken", n=20, steps=100)
    assert not broken["ok"] and broken["train_accuracy"] < 0.5 and broken["steps_to_100"] is None


def test_activation_stats_show_vanishing_saturating_and_stable_inits(digits, tmp_path) -> None:
    """The lecture's figure: a 6-layer tanh net's activations by init."""
    torch.manual_seed(0)
    model = Classifier("mlp", hidden_sizes=[100] * 6, activation="tanh")
    result = D.activation_stats(model, *digits, tmp_path)
    assert result["layers"] == [f"encoder.net.{2 * i + 1}" for i in range(6)]
    stds = {k: [s["std"] for s in v] for k, v in result["inits"].items()}
    assert stds["too small (0.1)"][-1] < 1e-3 * stds["too small (0.1)"][0]  # collapses towards zero
    assert min(s["saturated_fraction"] for s in result["inits"]["too large (10)"]) > 0.5  # stuck at +-1
    assert stds["xavier (1)"][-1] > 0.5 * stds["xavier (1)"][0]  # keeps its spread
    first_tanh = model.encoder.net[:2](digits[0].float().div(255).flatten(1))  # the model's own weights
    assert stds["as given"][0] == pytest.approx(first_tanh.std().item(), rel=1e-5)
    assert (tmp_path / "activation_stats.png").is_file()


def test_update_ratios_are_exact_and_skip_biases() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    before = D.snapshot(model)
    assert sorted(before) == ["0.weight", "1.weight"]
    with torch.no_grad():
        model[0].weight.mul_(1.001)
        model[0].bias.add_(5)
    ratios = D.update_ratios(model, before)
    assert ratios["0.weight"] == pytest.approx(1e-3, rel=1e-3) and ratios["1.weight"] == 0.0


def test_update_ratio_check_about_1e_3_at_a_sane_learning_rate(digits, tmp_path) -> None:
    torch.manual_seed(0)
    sane = D.update_ratio_check(Classifier(), *digits, tmp_path, lr=1e-3, steps=20)
    assert sane["ok"] and 1e-4 <= sane["median_ratio"] <= 1e-2
    assert set(sane["median_ratio_per_weight"]) == set(D.snapshot(Classifier()))
    too_high = D.update_ratio_check(Classifier(), *digits, tmp_path, lr=1.0, steps=20)
    assert not too_high["ok"] and too_high["median_ratio"] > 1e-2
    assert _json(tmp_path / "update_ratio.json")["lr"] == 1.0


@pytest.mark.parametrize(
    ("model", "images", "layer", "tiles"),
    [
        (Classifier(), torch.rand(2, 1, 8, 8), "encoder.net.0", 6),
        (Classifier("resnet", (3, 32, 32), width=4, blocks=[1]), torch.rand(2, 3, 32, 32), "encoder.net.0", 4),
        (build_encoder(EncoderSpec("nature_cnn", (4, 84, 84))), torch.rand(2, 4, 84, 84), "net.0", 16),  # 32x4, capped
        (_linear(torch.randn(10, 64)), torch.rand(2, 1, 8, 8), "1", 10),  # a linear classifier's templates
    ],
)
def test_first_layer_filters(model, images, layer, tiles, tmp_path) -> None:
    result = D.first_layer_filters(model, images, None, tmp_path, max_filters=16)
    assert result["layer"] == layer and result["tiles"] == tiles
    picture = matplotlib.image.imread(tmp_path / "filters.png")
    assert picture.ndim == 3 and picture.std() > 0


def test_first_layer_filters_need_images(tmp_path) -> None:
    with pytest.raises(UserError, match="not images"):
        D.first_layer_filters(_linear(torch.randn(2, 4)), torch.rand(3, 4), None, tmp_path)


def test_saliency_of_a_linear_model_is_its_class_template(digits, tmp_path) -> None:
    images, labels = digits
    weight = torch.randn(10, 64)
    model = _linear(weight).train()
    maps = D.saliency(model, images[:5], labels[:5])
    torch.testing.assert_close(maps, weight[labels[:5]].abs().reshape(5, 8, 8))
    assert model.training  # mode restored
    rgb = _linear(torch.randn(10, 3 * 16))  # max over colour channels
    x = torch.rand(2, 3, 4, 4)
    expected = rgb[1].weight[labels[:2]].abs().reshape(2, 3, 4, 4).amax(1)
    torch.testing.assert_close(D.saliency(rgb, x, labels[:2]), expected)
    result = D.saliency_maps(model, images, labels, tmp_path, n=4)
    assert result["n"] == 4 and (tmp_path / "saliency.png").is_file()


def test_occlusion_changes_only_where_the_model_looks(digits, tmp_path) -> None:
    images, labels = digits
    weight = torch.zeros(10, 1, 8, 8)
    weight[:, :, 2:4, 5:7] = torch.randn(10, 1, 2, 2) * 5  # the model reads a 2x2 square only
    model = _linear(weight.flatten(1))
    maps = D.occlusion(model, images[:6], labels[:6], patch=2, stride=2)
    assert maps.shape == (6, 4, 4)
    clean = model(images[:6].float() / 255).softmax(1)[torch.arange(6), labels[:6]]
    untouched = torch.ones(4, 4, dtype=torch.bool)
    untouched[1, 2:4] = False  # patches at rows 2-3, columns 4-5 and 6-7 overlap the square
    torch.testing.assert_close(maps[:, untouched], clean[:, None].expand(6, 14))
    assert (maps[:, 1, 2:4] - clean[:, None]).abs().max() > 1e-3
    result = D.occlusion_maps(model, images, labels, tmp_path, n=3)
    assert (result["patch"], result["stride"]) == (2, 1)
    assert result["clean_probability"] == pytest.approx(clean[:3].tolist())
    assert (tmp_path / "occlusion.png").is_file()


def test_embeddings_separate_digits_and_not_noise(digits, tmp_path) -> None:
    images, labels = digits
    result = D.embeddings(nn.Flatten(), images, labels, tmp_path, methods=("tsne",))
    assert result["feature_dim"] == 64 and result["tsne"]["knn_accuracy"] > 0.85
    assert (tmp_path / "embedding_tsne.png").is_file() and _json(tmp_path / "embeddings.json") == result

    class Noise(nn.Module):
        def forward(self, x):
            return torch.randn(len(x), 16, generator=torch.Generator().manual_seed(0))

    assert D.embeddings(Noise(), images, labels, tmp_path, methods=("pca",))["pca"]["knn_accuracy"] < 0.3
    assert D.embeddings(Classifier(), images, labels, tmp_path, methods=("pca",))["feature_dim"] == 84  # the encoder's
    with pytest.raises(UserError, match="umap"):
        D.embeddings(nn.Flatten(), images, labels, tmp_path, methods=("umap",))


def test_works_on_an_rl_agents_q_network(tmp_path) -> None:
    """Vector observations (CartPole): Q-values serve as class scores, the encoder gives the embedding."""
    torch.manual_seed(0)
    net = QNetwork(EncoderSpec("mlp", (4,), {"hidden_sizes": [16, 16]}), 2)
    space = gym.spaces.Box(-1, 1, (4,), seed=0)
    obs = torch.tensor(np.stack([space.sample() for _ in range(40)]))
    actions = torch.randint(0, 2, (40,))
    assert D.saliency(net, obs, actions).shape == (40, 4)
    assert D.embeddings(net, obs, actions, tmp_path, methods=("pca",))["feature_dim"] == 16
    assert len(D.activation_stats(net, obs, actions, tmp_path)["layers"]) == 2
    assert D.overfit_tiny(net, obs, actions, tmp_path)["ok"]


def test_registry_names_every_diagnostic() -> None:
    assert set(D.DIAGNOSTICS) == {
        "initial_loss",
        "overfit_tiny",
        "activation_stats",
        "update_ratio",
        "filters",
        "saliency",
        "occlusion",
        "embeddings",
    }

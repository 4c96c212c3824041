"""The recurrent attention model (RAM; Mnih, Heess, Graves, Kavukcuoglu 2014): classify an image from a few glimpses.

State: the glimpses seen so far, held by a recurrent core h_t. Action: where to look next, l_t ~ N(mu(h_t), std^2),
and the class after the last glimpse. Reward: 1 if that class is right. Trained with the paper's hybrid loss:

  cross-entropy          classifier, core and glimpse networks (backpropagated through the whole trajectory)
  REINFORCE - baseline   location network only: its input h_t is detached, and so is every sampled l_t, so the
                         non-differentiable sensor never passes gradient to earlier steps
  squared error          baseline network b(h_t), which predicts the return; it is detached in the advantage

The three known pitfalls of open-source RAMs (no REINFORCE gradient reaching the location network, gradient leaking
through a sampled location, a baseline trained by the policy term) are tested in tests/test_ram.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rl_lab.agents.configs import RAMConfig
from rl_lab.backbone import EncoderSpec, build_encoder
from rl_lab.backbone.vision import fit_images
from rl_lab.ram.sensor import pad_for_glimpses, patch_sides, read_glimpses
from rl_lab.rl.returns import discounted_returns


@dataclass
class Trajectory:
    """One pass over a batch: T glimpses of B images."""

    logits: torch.Tensor  # (B, classes) after the last glimpse
    locations: torch.Tensor  # (T, B, 2) where each glimpse looked (clipped to [-1, 1], no gradient)
    log_probs: torch.Tensor  # (T, B) log pi(l_t | h_t) of the sampled locations; zeros in mean-location mode
    baselines: torch.Tensor  # (T, B) b(h_t), the predicted return before choosing l_t


class PlainRNN(nn.Module):
    """The paper's core: h_t = ReLU(Linear(h_{t-1}) + Linear(g_t)). State (1, B, hidden) like the backbone cores."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.out_dim = hidden
        self.input, self.recurrent = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden, bias=False)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(1, batch, self.out_dim, device=device)

    def forward(self, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.input(x[0]) + self.recurrent(state[0])).unsqueeze(0)
        return h, h


class RAM(nn.Module):
    def __init__(
        self, config: RAMConfig, image_shape: tuple[int, int, int], num_classes: int, what_shape: tuple | None = None
    ):
        """what_shape: the input shape of the glimpse encoder when it differs from the glimpses' (scales * C, g, g),
        e.g. a LeNet pretrained on 28x28 digits: glimpses are then resized and their channels averaged to fit."""
        super().__init__()
        c = self.config = config
        self.image_shape = tuple(image_shape)
        self.sensor_shape = (c.scales * image_shape[0], c.glimpse_size, c.glimpse_size)
        what_shape = tuple(what_shape or self.sensor_shape)
        self.what = build_encoder(EncoderSpec(c.encoder.name, what_shape, c.encoder.kwargs))
        self.fit = fit_images if what_shape != self.sensor_shape else None
        self.where = nn.Linear(2, c.location_hidden)
        self.what_to_g = nn.Linear(self.what.out_dim, c.glimpse_hidden)
        self.where_to_g = nn.Linear(c.location_hidden, c.glimpse_hidden)
        if c.core == "rnn":
            self.core = PlainRNN(c.glimpse_hidden, c.hidden_size)
        else:  # the backbone's LSTM/GRU; an empty mlp torso feeds g_t to the cell unchanged
            spec = {"torso": "mlp", "torso_kwargs": {"hidden_sizes": []}, "hidden_size": c.hidden_size}
            self.core = build_encoder(EncoderSpec(c.core, (c.glimpse_hidden,), spec))
        self.locator = nn.Linear(c.hidden_size, 2)  # mean of the location policy, squashed by tanh
        self.classifier = nn.Linear(c.hidden_size, num_classes)
        self.baseline = nn.Linear(c.hidden_size, 1)

    def glimpse_features(self, padded: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """g_t = ReLU(Linear(h_g) + Linear(h_l)) for images in [0, 1] (padded by `pad_for_glimpses`), loc (B, 2)."""
        c = self.config
        patches = read_glimpses(padded, loc, c.glimpse_size, c.scales, c.scale).flatten(1, 2)
        h_g = self.what(patches if self.fit is None else self.fit(patches, self.what.spec.input_shape))
        h_l = F.relu(self.where(loc))
        return F.relu(self.what_to_g(h_g) + self.where_to_g(h_l))

    def forward(self, images: torch.Tensor, sample: bool = True) -> Trajectory:
        """Look `glimpses` times, then classify. sample=False looks at the policy's mean (deterministic)."""
        c, batch = self.config, images.shape[0]
        state = self.core.initial_state(batch, images.device)
        h = torch.zeros(batch, c.hidden_size, device=images.device)
        no_reset = torch.zeros(1, batch, dtype=torch.bool, device=images.device)
        padded = pad_for_glimpses(images, c.glimpse_size, c.scales, c.scale)
        locations, log_probs, baselines = [], [], []
        for _ in range(c.glimpses):
            mean = torch.tanh(self.locator(h.detach()))
            if sample:
                raw = torch.normal(mean.detach(), c.std)  # sampled without a graph: l_t carries no gradient
                log_probs.append(torch.distributions.Normal(mean, c.std, validate_args=False).log_prob(raw).sum(-1))
                loc = raw.clamp(-1.0, 1.0)
            else:
                loc = mean.detach()
                log_probs.append(torch.zeros(batch, device=images.device))
            baselines.append(self.baseline(h.detach()).squeeze(-1))
            g = self.glimpse_features(padded, loc)
            out, state = self.core(g.unsqueeze(0), state, no_reset)
            h = out[0]
            locations.append(loc)
        return Trajectory(self.classifier(h), torch.stack(locations), torch.stack(log_probs), torch.stack(baselines))

    def patch_sides(self) -> list[int]:
        c = self.config
        return patch_sides(c.glimpse_size, c.scales, c.scale)


def rewards_and_returns(trajectory: Trajectory, labels: torch.Tensor, gamma: float) -> tuple[torch.Tensor, ...]:
    """Reward 1 at the last step for a correct class, else 0; returns-to-go (T, B) from the shared returns code."""
    steps, batch = trajectory.log_probs.shape
    rewards = torch.zeros(steps, batch, device=labels.device)
    rewards[-1] = (trajectory.logits.argmax(-1) == labels).float()
    terminated = torch.zeros(steps, batch, dtype=torch.bool, device=labels.device)
    terminated[-1] = True
    zeros = torch.zeros_like(rewards)
    return rewards, discounted_returns(rewards, zeros, terminated, torch.zeros_like(terminated), gamma)


def ram_losses(trajectory: Trajectory, labels: torch.Tensor, config: RAMConfig) -> dict[str, torch.Tensor]:
    """The hybrid loss, term by term; `loss` is their weighted sum."""
    rewards, returns = rewards_and_returns(trajectory, labels, config.gamma)
    advantages = returns - trajectory.baselines.detach()
    classification = F.cross_entropy(trajectory.logits, labels)
    reinforce = -(trajectory.log_probs * advantages).sum(0).mean()
    baseline = F.mse_loss(trajectory.baselines, returns)
    loss = classification + config.reinforce_coef * reinforce + config.baseline_coef * baseline
    return {
        "loss": loss,
        "classification": classification,
        "reinforce": reinforce,
        "baseline": baseline,
        "reward": rewards[-1].mean(),
    }


@torch.no_grad()
def predict(model: RAM, images: torch.Tensor, samples: int) -> torch.Tensor:
    """Class probabilities (B, classes): averaged over `samples` sampled trajectories (Monte Carlo), or, with
    samples=0, from the single deterministic trajectory that looks at the policy's mean locations."""
    if samples == 0:
        return model(images, sample=False).logits.softmax(-1)
    total = sum(model(images).logits.softmax(-1) for _ in range(samples))
    return total / samples

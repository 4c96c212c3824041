"""RAM: the hybrid loss's three gradient properties, Monte-Carlo evaluation, and training through the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import REPO, run_rl_lab, user_error_line

from rl_lab.agents.ram import RAM, RAMConfig, predict, ram_losses


def tiny_ram(**overrides) -> tuple[RAM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    config = RAMConfig(
        glimpses=3, glimpse_size=4, scales=2, location_hidden=8, glimpse_hidden=16, hidden_size=16, **overrides
    )
    images = torch.rand(8, 1, 12, 12)
    labels = torch.arange(8) % 3
    return RAM(config, (1, 12, 12), 3), images, labels


def grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def nonzero(grad: torch.Tensor | None) -> bool:
    return grad is not None and bool(grad.abs().sum() > 0)


@pytest.mark.parametrize("core", ["rnn", "lstm", "gru"])
def test_reinforce_term_trains_the_location_network(core):
    """(a) The REINFORCE term reaches the location network, and only it (its input h_t is detached)."""
    model, images, labels = tiny_ram(core=core)
    g = grads(model, ram_losses(model(images), labels, model.config)["reinforce"])
    assert nonzero(g["locator.weight"]) and nonzero(g["locator.bias"])
    others = [name for name, grad in g.items() if not name.startswith("locator.") and nonzero(grad)]
    assert others == []


@pytest.mark.parametrize("core", ["rnn", "gru"])
def test_no_gradient_flows_through_sampled_locations(core):
    """(b) Locations are detached samples: the classification loss, which depends on every location through the
    glimpses, gives the location network no gradient, and no location tensor carries a graph."""
    model, images, labels = tiny_ram(core=core)
    trajectory = model(images)
    assert not trajectory.locations.requires_grad
    g = grads(model, ram_losses(trajectory, labels, model.config)["classification"])
    assert not nonzero(g["locator.weight"]) and not nonzero(g["locator.bias"])
    assert nonzero(g["where.weight"]) and nonzero(g["core.input.weight" if core == "rnn" else "core.cell.weight_ih"])


def test_baseline_is_detached_inside_the_advantage():
    """(c) The REINFORCE term gives the baseline network no gradient; only the squared error trains it."""
    model, images, labels = tiny_ram()
    losses = ram_losses(model(images), labels, model.config)
    g = grads(model, losses["reinforce"])
    assert not nonzero(g["baseline.weight"]) and not nonzero(g["baseline.bias"])
    g = grads(model, ram_losses(model(images), labels, model.config)["baseline"])
    assert nonzero(g["baseline.weight"])
    assert [name for name, grad in g.items() if nonzero(grad)] == ["baseline.weight", "baseline.bias"]


def test_reinforce_gradient_is_the_score_function_times_advantage():
    """The REINFORCE term equals -mean_b sum_t (R - b_t) * log N(l_t; mu_t, std), with R = 1 for a right answer."""
    model, images, labels = tiny_ram()
    trajectory = model(images)
    losses = ram_losses(trajectory, labels, model.config)
    reward = (trajectory.logits.argmax(-1) == labels).float()
    expected = -((reward - trajectory.baselines.detach()) * trajectory.log_probs).sum(0).mean()
    torch.testing.assert_close(losses["reinforce"], expected)
    torch.testing.assert_close(losses["baseline"], ((trajectory.baselines - reward) ** 2).mean())
    assert losses["reward"] == reward.mean()


def test_locations_stay_in_range_and_follow_the_policy():
    model, images, _ = tiny_ram(std=5.0)  # wide noise: many samples fall outside [-1, 1] and get clipped
    trajectory = model(images)
    assert trajectory.locations.abs().max() <= 1.0
    assert (trajectory.locations.abs() == 1.0).any()
    mean = model(images, sample=False)
    assert (mean.log_probs == 0).all()
    torch.testing.assert_close(mean.locations, model(images, sample=False).locations)  # deterministic


def test_monte_carlo_evaluation():
    model, images, _ = tiny_ram()
    torch.manual_seed(1)
    probs = predict(model, images, samples=4)
    assert probs.shape == (8, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(8))
    torch.manual_seed(1)
    singles = torch.stack([model(images).logits.softmax(-1) for _ in range(4)])
    torch.testing.assert_close(probs, singles.mean(0))  # the average of M sampled trajectories' probabilities
    assert (singles.std(0) > 0).any()  # the trajectories differ, so averaging matters

    # More samples, less Monte-Carlo noise: two independent M=64 estimates agree better than two M=1 estimates.
    def spread(samples: int) -> float:
        return (predict(model, images, samples) - predict(model, images, samples)).abs().mean().item()

    assert spread(64) < spread(1) / 3

    # As the location noise vanishes, sampling becomes the deterministic mean-location mode.
    model.config.std = 1e-6
    torch.testing.assert_close(predict(model, images, samples=3), predict(model, images, samples=0))


# ---- RAM as a task through the CLI -----------------------------------------------------------------------------

QUIET = ["device=cpu", "logger.wandb.mode=disabled", "logger.progress=false"]
# 8x8 digits, tiny networks: a couple of seconds per run
TINY_RAM = [
    *QUIET,
    "data.name=digits",
    "train.epochs=2",
    "task.glimpses=3",
    "task.glimpse_size=4",
    "task.scales=2",
    "task.location_hidden=16",
    "task.glimpse_hidden=32",
    "task.hidden_size=32",
    "task.encoder.kwargs.hidden_sizes=[32]",
    "task.eval_samples=3",
    "task.figure_examples=3",
    "logger.log_every=10",
]


def test_ram_task_trains_resumes_exactly_and_evaluates(tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    result = run_rl_lab("train", REPO / "configs" / "ram_mnist.yaml", *TINY_RAM, f"run.dir={full}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert header.startswith("ram (3 glimpses) on digits: run dir")  # the model, not its glimpse encoder (mlp)
    assert "\nram (3 glimpses) on digits (seed 0): 2 epochs" in result.stdout
    summary = json.loads((full / "summary.json").read_text())
    for key in ("test_acc", "test_acc_mean_location", "test_error", "test_error_mean_location"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["glimpses"] == 3 and summary["eval_samples"] == 3
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert any("val/acc_mean_location" in r for r in rows) and any("train/reinforce" in r for r in rows)
    for name in ("glimpses.png", "glimpses.gif", "learning_curve.png", "confusion_matrix.png"):
        assert (full / "plots" / name).stat().st_size > 0

    # Interrupted after epoch 1: the same metrics.jsonl and summary as the uninterrupted run.
    shutil.copytree(full, resumed)
    (resumed / "summary.json").unlink()
    first = sorted((resumed / "checkpoints").glob("step_*"))[0]
    (resumed / "checkpoints" / "latest").write_text(first.name + "\n")
    result = run_rl_lab("train", "--resume", resumed, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (resumed / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    again = json.loads((resumed / "summary.json").read_text())
    assert again["test_acc"] == summary["test_acc"]
    assert again["test_acc_mean_location"] == summary["test_acc_mean_location"]

    result = run_rl_lab("eval", full, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test  accuracy" in result.stdout  # Monte Carlo over fresh samples: close to, not equal to, the run's


def test_glimpse_figures_reach_wandb(tmp_path):
    """After each epoch the glimpse paths (PNG) and their animation (GIF) are logged to W&B (offline here)."""
    run = tmp_path / "wb"
    overrides = [a for a in TINY_RAM if not a.startswith(("logger.wandb", "train.epochs"))]
    args = ("train", REPO / "configs" / "ram_mnist.yaml", *overrides, "train.epochs=1", "logger.wandb.mode=offline")
    result = run_rl_lab(*args, f"run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    media = [p.name for p in run.glob("wandb/offline-run-*/files/media/*/glimpses/*")]
    assert any(name.startswith("paths_") and name.endswith(".png") for name in media), media
    assert any(name.startswith("animation_") and name.endswith(".gif") for name in media), media


def test_ram_config_errors_are_one_line(tmp_path):
    config = REPO / "configs" / "ram_mnist.yaml"
    assert "task.std" in user_error_line(run_rl_lab("train", config, "task.std=-1", cwd=tmp_path))
    assert "task.core" in user_error_line(run_rl_lab("train", config, "task.core=transformer", cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config", ["glimpse_a2c.yaml", "glimpse_reinforce.yaml"])
def test_policy_gradient_agents_run_on_the_glimpse_env(tmp_path, config):
    """A2C and REINFORCE train on the glimpse task as an env (the shipped configs), end to end."""
    run = tmp_path / "run"
    result = run_rl_lab(
        "train",
        REPO / "configs" / config,
        *QUIET,
        "train.total_steps=512",
        "env.num_envs=4",
        *(["agent.episodes_per_update=8"] if "reinforce" in config else []),
        "eval.episodes=4",
        "eval.every=0",
        f"run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] >= 512
    assert 0.0 <= summary["final_eval"]["return_mean"] <= 1.0
    assert 1.0 <= summary["final_eval"]["length_mean"] <= 3.0  # the glimpse budget of the config


@pytest.mark.learning
def test_ram_learns_mnist_digits_with_6_glimpses(tmp_path):
    """The shipped config (6 glimpses, seed 0) on the bundled 28x28 digits: >= 90% test accuracy."""
    run = tmp_path / "ram"
    result = run_rl_lab(
        "train", REPO / "configs" / "ram_mnist.yaml", *QUIET, f"run.dir={run}", cwd=tmp_path, timeout=900
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["glimpses"] == 6
    assert summary["test_acc"] >= 0.90, summary
    assert summary["test_acc_mean_location"] >= 0.85, summary


def test_pretrained_encoder_plugs_into_the_glimpse_network(tmp_path):
    """A LeNet saved for 28x28 digits (as the classification task exports one) becomes RAM's glimpse encoder:
    its weights load, stay frozen, and 8x8 glimpses at 2 scales are resized and channel-averaged to fit it."""
    from rl_lab.backbone import EncoderSpec, build_encoder, save_encoder
    from rl_lab.loader import build_trainer, config_from_dict

    torch.manual_seed(3)
    saved = build_encoder(EncoderSpec("lenet", (1, 28, 28), {"channels": [4, 8], "hidden_sizes": [32]}))
    save_encoder(saved, tmp_path / "lenet")
    config = config_from_dict(
        {
            "device": "cpu",
            "task": {
                "name": "ram",
                "glimpses": 2,
                "scales": 2,
                "encoder": {
                    "name": "lenet",
                    "kwargs": {"channels": [4, 8], "hidden_sizes": [32]},
                    "init": str(tmp_path / "lenet"),
                    "freeze": True,
                },
            },
            "data": {"name": "digits"},
        }
    )
    trainer = build_trainer(config)
    what = trainer.model.ram.what
    assert what.spec.input_shape == (1, 28, 28)
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(what.state_dict()[name], tensor)
    assert not any(p.requires_grad for p in what.parameters())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in what.parameters())
    images = trainer.data["train"].images[:4].float() / 255
    trajectory = trainer.model.ram(images)
    assert trajectory.logits.shape == (4, 10)

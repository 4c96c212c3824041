"""Transfer both ways: export the encoder of a task run or an agent run, start a classifier or an agent from it
(`encoder.init`), freeze it (`encoder.freeze`) or train it slower (`encoder.lr_mult`)."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest
import safetensors.torch
import torch
from conftest import CARTPOLE_CONFIG, REPO, run_rl_lab

from rl_lab.agents.dqn import DQN, DQNConfig
from rl_lab.backbone import load_encoder
from rl_lab.checkpoint import latest_checkpoint, load_checkpoint
from rl_lab.config import EncoderConfig
from rl_lab.distributed import NullLogger
from rl_lab.errors import UserError
from rl_lab.loader import build_trainer, load_config
from rl_lab.runs import export_encoder, train_new

MNIST_CNN = REPO / "configs" / "mnist_cnn.yaml"
DIGITS = [
    "device=cpu",
    "torch_threads=1",
    "logger.wandb.mode=disabled",
    "logger.progress=false",
    "data.name=digits",
    "task.augment={}",
    "task.ema_decay=null",
    "train.batch_size=16",
    "task.optim={name: adam, lr: 0.003}",
]
MLP16 = "{name: mlp, kwargs: {hidden_sizes: [16]}"


def _trained(overrides: list[str], epochs: int):
    trainer = build_trainer(load_config(MNIST_CNN, [*DIGITS, *overrides, f"train.epochs={epochs}"]))
    for _ in range(epochs):
        trainer.train_epoch(NullLogger())
        trainer.end_epoch(trainer.validate(), NullLogger())
    return trainer


@pytest.fixture(scope="module")
def digits_encoder(tmp_path_factory) -> Path:
    """An MLP encoder pretrained on the digits classification task, exported from its run directory."""
    d = tmp_path_factory.mktemp("digits")
    train_new(MNIST_CNN, [*DIGITS, f"task.encoder={MLP16}}}", "train.epochs=4", f"run.dir={d / 'run'}"])
    return export_encoder(d / "run", d / "encoder")


def test_linear_probe_on_pretrained_encoder_beats_probe_on_random_encoder(digits_encoder):
    pretrained = _trained([f"task.encoder={MLP16}, freeze: true, init: {digits_encoder}}}"], 2)
    random = _trained([f"task.encoder={MLP16}, freeze: true}}"], 2)
    saved = load_encoder(digits_encoder).state_dict()
    for key, tensor in pretrained.model.encoder.state_dict().items():  # frozen: exactly the exported weights
        assert torch.equal(tensor, saved[key]), key
    trained = {id(p) for group in pretrained.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in pretrained.model.head.parameters()}  # the probe trains the head only
    assert pretrained.state.best_val["acc"] > random.state.best_val["acc"] + 0.2, (pretrained.state, random.state)


def test_encoder_lr_mult_sets_the_encoders_learning_rate(digits_encoder):
    enc = f"task.encoder={MLP16}, init: {digits_encoder}, lr_mult: 0.1}}"
    trainer = build_trainer(load_config(MNIST_CNN, [*DIGITS, enc, "task.optim={name: sgd, lr: 0.5, momentum: 0}"]))
    encoder_params = {id(p) for p in trainer.model.encoder.parameters()}
    lrs = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert sorted({lrs[i] for i in encoder_params}) == [pytest.approx(0.05)]
    assert {lr for i, lr in lrs.items() if i not in encoder_params} == {0.5}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_epoch(NullLogger())
    assert not torch.equal(before["encoder.net.0.weight"], trainer.model.state_dict()["encoder.net.0.weight"])


def test_init_with_another_spec_is_a_clear_error(digits_encoder):
    with pytest.raises(UserError, match="encoder spec mismatch.*hidden_sizes"):
        build_trainer(load_config(MNIST_CNN, [*DIGITS, f"task.encoder={{name: mlp, init: {digits_encoder}}}"]))


def test_dqn_starts_from_a_saved_encoder_frozen(digits_encoder):
    """An agent reuses a supervised encoder: digits-pretrained MLP weights as the Q-network's torso, frozen."""
    cfg = DQNConfig(encoder=EncoderConfig("mlp", {"hidden_sizes": [16]}, init=str(digits_encoder), freeze=True))
    obs_space = gym.spaces.Box(0.0, 1.0, (1, 8, 8))
    agent = DQN(cfg, obs_space, gym.spaces.Discrete(10), torch.device("cpu"), 1000)
    saved = load_encoder(digits_encoder).state_dict()
    for net in (agent.q_net, agent.target_net):
        for key, tensor in net.encoder.state_dict().items():
            assert torch.equal(tensor, saved[key]), key
    trained = {id(p) for group in agent.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in agent.q_net.head.parameters()}


def test_dqn_encoder_exported_from_a_pixel_run_loads_into_a_classifier(tmp_path):
    """A DQN agent on MinAtar Breakout (4x10x10 planes, LeNet torso) -> rl-lab export-encoder -> a digits
    classifier starts from those exact weights (digits fitted to 4x10x10) and learns from there."""
    lenet = "{name: lenet, kwargs: {channels: [4], hidden_sizes: [16]}}"
    run = tmp_path / "dqn"
    tiny = [
        "env.id=MinAtar/Breakout-v1",
        f"agent.encoder={lenet}",
        "train.total_steps=300",
        "agent.learning_starts=100",
        "agent.buffer_size=500",
        "eval.episodes=1",
        "eval.every=0",
        "run.checkpoint_every=0",
        "device=cpu",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
    ]
    train_new(CARTPOLE_CONFIG, [*tiny, f"run.dir={run}"])
    result = run_rl_lab("export-encoder", run, tmp_path / "encoder", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    q_net = load_checkpoint(latest_checkpoint(run / "checkpoints"))[0]["agent"]["q_net"]

    enc = f"task.encoder={lenet[:-1]}, init: {tmp_path / 'encoder'}}}"
    trainer = build_trainer(load_config(MNIST_CNN, [*DIGITS, enc, "train.epochs=3"]))
    assert trainer.model.encoder.spec.input_shape == (4, 10, 10)
    for key, tensor in trainer.model.encoder.state_dict().items():
        assert torch.equal(tensor, q_net[f"encoder.{key}"]), key
    safetensors.torch.load_file(tmp_path / "encoder" / "encoder.safetensors")  # a plain safetensors file
    for _ in range(3):
        trainer.train_epoch(NullLogger())
        trainer.end_epoch(trainer.validate(), NullLogger())
    assert trainer.state.best_val["acc"] > 0.5  # chance is 0.1


def test_export_encoder_of_a_non_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        export_encoder(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()

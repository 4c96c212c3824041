"""Every agent's settings (`agent.*` in a config), as plain dataclasses with no torch, so a config can be read,
checked and printed (`rl-lab config`) without loading the algorithms. Each is read by its agent's file only:
DQNConfig by agents/dqn.py, REINFORCEConfig by agents/reinforce.py, PPOConfig by agents/ppo.py, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rl_lab.config import EncoderConfig, OptimConfig, check


@dataclass
class DQNConfig:
    name: str = "dqn"
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig("mlp", {"hidden_sizes": [256, 256]}))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(grad_clip=10.0))  # Adam; schedule by env steps
    gamma: float = 0.99
    buffer_size: int = 100_000
    batch_size: int = 64
    learning_starts: int = 1_000  # environment steps of random-ish play before the first update
    # environment steps (summed over envs) between training phases: gradient_steps / train_freq gradient steps
    # per env step whatever env.num_envs is (8 envs, train_freq 4: two phases per step of the vector env)
    train_freq: int = 4
    gradient_steps: int = 1  # gradient steps per training phase
    target_update_interval: int = 1_000  # environment steps between target-network updates
    tau: float = 1.0  # 1 = hard copy; < 1 = Polyak averaging target <- tau * online + (1 - tau) * target
    exploration_initial: float = 1.0
    exploration_final: float = 0.05
    exploration_fraction: float = 0.1  # fraction of train.total_steps over which epsilon decays linearly
    loss: Literal["huber", "mse"] = "huber"
    double_dqn: bool = False
    dueling: bool = False  # Q = V + A - mean(A), two linear streams on the encoder features
    n_step: int = 1  # bootstrap after n rewards: sum_k gamma^k r_k + gamma^n max_a Q(s_n, a)
    prioritized: bool = False  # proportional prioritized replay
    per_alpha: float = 0.5  # priority exponent (0 = uniform)
    # importance-sampling exponent at the start, annealed to 1 over train.total_steps; priorities are refreshed
    # after each gradient step
    per_beta: float = 0.4
    # what the importance weights are divided by: "buffer", the largest weight over the buffer (Schaul et al. 2016;
    # one transition with a near-zero TD error then scales every update down), or "batch", the batch's largest
    # (Dopamine, whose Rainbow settings assume it: the largest weight of each batch is 1)
    per_weights: Literal["buffer", "batch"] = "buffer"
    per_eps: float = 1e-6  # added to |TD error| so no transition gets priority 0
    replay_device: Literal["cpu", "train"] = "cpu"  # "train": keep Atari frames on the training device (GPU)
    compile: bool = False  # torch.compile the Q-network (worth it on a GPU)

    def __post_init__(self):
        check(0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1]")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.buffer_size >= self.batch_size, "buffer_size", f"must be >= batch_size ({self.batch_size})")
        check(self.learning_starts >= 0, "learning_starts", "must be >= 0")
        check(self.train_freq >= 1, "train_freq", "must be >= 1")
        check(self.gradient_steps >= 1, "gradient_steps", "must be >= 1")
        check(self.target_update_interval >= 1, "target_update_interval", "must be >= 1")
        check(0.0 < self.tau <= 1.0, "tau", "must be in (0, 1]")
        for key in ("exploration_initial", "exploration_final", "exploration_fraction"):
            check(0.0 <= getattr(self, key) <= 1.0, key, "must be in [0, 1]")
        check(self.n_step >= 1, "n_step", "must be >= 1")
        check(self.per_alpha >= 0, "per_alpha", "must be >= 0")
        check(0.0 <= self.per_beta <= 1.0, "per_beta", "must be in [0, 1]")
        check(self.per_eps > 0, "per_eps", "must be > 0")
        check_env_step_schedule(self.optim)


@dataclass
class TabularQConfig:
    name: str = "tabular_q"
    lr: float = 0.5  # step size alpha; 1 is exact on a deterministic MDP, stochastic ones need it to decay
    lr_end: float | None = None  # if set, the step size decays linearly to lr_end over train.total_steps
    gamma: float = 0.99
    q_init: float = 0.0  # 0 is optimistic when moves cost: untried actions look best, so they get tried
    exploration_initial: float = 1.0
    exploration_final: float = 0.1
    exploration_fraction: float = 0.5  # fraction of train.total_steps over which epsilon decays linearly
    buffer_size: int = 1_000  # the loop's store of recent transitions; only the newest are learned from

    def __post_init__(self):
        check(0.0 < self.lr <= 1.0, "lr", "must be in (0, 1]")
        check(self.lr_end is None or 0.0 <= self.lr_end <= 1.0, "lr_end", "must be in [0, 1] or null")
        check(0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1]")
        for key in ("exploration_initial", "exploration_final", "exploration_fraction"):
            check(0.0 <= getattr(self, key) <= 1.0, key, "must be in [0, 1]")
        check(self.buffer_size >= 1, "buffer_size", "must be >= 1")


@dataclass
class PolicyGradientConfig:
    """Settings every policy-gradient agent shares; REINFORCE and A2C add their own."""

    name: str = ""
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig("mlp", {"hidden_sizes": [64, 64]}))
    shared_encoder: bool = False  # the critic reuses the actor's encoder (else it gets its own copy)
    optim: OptimConfig = field(default_factory=OptimConfig)  # adam or rmsprop; schedule by env steps
    gamma: float = 0.99
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    normalize_advantages: bool = False  # per batch: zero mean, unit std
    log_std_init: float = 0.0  # Gaussian policies: initial log standard deviation

    def __post_init__(self):
        check(0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1]")
        check(self.entropy_coef >= 0, "entropy_coef", "must be >= 0")
        check(self.value_coef >= 0, "value_coef", "must be >= 0")
        check_env_step_schedule(self.optim)


@dataclass
class REINFORCEConfig(PolicyGradientConfig):
    name: str = "reinforce"
    episodes_per_update: int = 8  # m: complete episodes per gradient step (a multiple of env.num_envs)
    reward_to_go: bool = True  # False: every step is weighted by its episode's whole return
    baseline: Literal["none", "moving_average", "learned_value"] = "learned_value"
    baseline_momentum: float = 0.9  # moving_average: b <- momentum * b + (1 - momentum) * batch mean of G

    def __post_init__(self):
        super().__post_init__()
        check(self.episodes_per_update >= 1, "episodes_per_update", "must be >= 1")
        check(0.0 <= self.baseline_momentum < 1.0, "baseline_momentum", "must be in [0, 1)")


@dataclass
class A2CConfig(PolicyGradientConfig):
    name: str = "a2c"
    n_steps: int = 5  # rollout length per env
    advantage: Literal["gae", "nstep"] = "gae"
    gae_lambda: float = 0.95

    def __post_init__(self):
        super().__post_init__()
        check(self.n_steps >= 1, "n_steps", "must be >= 1")
        check(0.0 <= self.gae_lambda <= 1.0, "gae_lambda", "must be in [0, 1]")


@dataclass
class PPOConfig(PolicyGradientConfig):
    """PPO-clip (agents/ppo.py). Defaults: CleanRL's / SB3's (n_steps 128 is CleanRL's Atari rollout)."""

    name: str = "ppo"
    n_steps: int = 128  # rollout length per env; a rollout holds n_steps * env.num_envs samples
    epochs: int = 4  # passes over each rollout
    batch_size: int = 256  # samples per minibatch (all torchrun processes'); recurrent: batch_size // seq_len sequences
    seq_len: int | None = None  # recurrent policies: sequence length of a minibatch (null: n_steps, whole rollouts)
    gae_lambda: float = 0.95
    clip_range: float = 0.2  # epsilon of the clipped surrogate
    clip_range_end: float | None = None  # if set, epsilon decays linearly to it over train.total_steps
    clip_value: float | None = None  # if set, the value loss is the larger of the plain and clipped errors
    target_kl: float | None = None  # stop the update at a minibatch whose approximate KL exceeds 1.5 * target_kl
    normalize_advantages: bool = True  # per minibatch: zero mean, unit std

    def __post_init__(self):
        super().__post_init__()
        check(self.n_steps >= 1, "n_steps", "must be >= 1")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        if self.seq_len is not None:
            check(1 <= self.seq_len <= self.n_steps, "seq_len", f"must be in [1, n_steps={self.n_steps}] or null")
            check(self.n_steps % self.seq_len == 0, "seq_len", f"must divide n_steps={self.n_steps}")
        check(0.0 <= self.gae_lambda <= 1.0, "gae_lambda", "must be in [0, 1]")
        check(self.clip_range > 0, "clip_range", "must be > 0")
        check(self.clip_range_end is None or self.clip_range_end >= 0, "clip_range_end", "must be >= 0 or null")
        check(self.clip_value is None or self.clip_value > 0, "clip_value", "must be > 0 or null")
        check(self.target_kl is None or self.target_kl > 0, "target_kl", "must be > 0 or null")


@dataclass
class RAMConfig:
    """The recurrent attention model and its loss; the task (rl_lab/ram/task.py) adds data, optimiser, evaluation."""

    glimpses: int = 6  # glimpses per image; the class is read after the last one
    glimpse_size: int = 8  # g: side of every patch after resizing
    scales: int = 1  # k patches per glimpse
    scale: int = 2  # each patch this many times wider than the previous one (an integer: pooling is exact)
    # h_g: the glimpse's "what" pathway, a backbone encoder over (scales * C, g, g); the paper's is Linear + ReLU
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig("mlp", {"hidden_sizes": [128]}))
    location_hidden: int = 128  # h_l: the "where" pathway
    glimpse_hidden: int = 256  # g_t = ReLU(Linear(h_g) + Linear(h_l))
    core: Literal["rnn", "lstm", "gru"] = "rnn"  # rnn: the paper's h_t = ReLU(Linear(h_{t-1}) + Linear(g_t))
    hidden_size: int = 256
    std: float = 0.15  # fixed standard deviation of the location policy (in units of half the image)
    gamma: float = 1.0  # discount of the single final reward
    reinforce_coef: float = 1.0
    baseline_coef: float = 1.0

    def __post_init__(self):
        for key in ("glimpses", "glimpse_size", "scales", "scale", "location_hidden", "glimpse_hidden", "hidden_size"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(self.std > 0, "std", "must be > 0")
        check(0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1]")
        check(self.reinforce_coef >= 0, "reinforce_coef", "must be >= 0")
        check(self.baseline_coef >= 0, "baseline_coef", "must be >= 0")


def check_env_step_schedule(optim: OptimConfig) -> None:
    """Agents anneal the learning rate by environment steps: only schedules that are functions of progress."""
    check(
        optim.schedule in ("constant", "linear", "cosine"),
        "optim.schedule",
        "agents anneal by environment steps: constant, linear or cosine",
    )

"""What REINFORCE, A2C and PPO have in common: the policy network (and critic), its optimiser, greedy acting, one
gradient step, and checkpoint state. Rollouts are collected by rl_lab.rl.onpolicy; each agent writes its loss.
"""

from __future__ import annotations

from rl_lab.agents.configs import PolicyGradientConfig
from rl_lab.backbone.transfer import init_encoder
from rl_lab.checkpoint import load_module_state
from rl_lab.distributed import average_gradients
from rl_lab.optim import anneal, clip_gradients, make_optimizer
from rl_lab.rl.policy import GreedyPolicy, PolicyNetwork


class PolicyGradientAgent:
    loop = "onpolicy"  # trained by rl_lab.rl.onpolicy.OnPolicyTrainer
    n_steps: int | None = None  # rollout of n steps per env ...
    episodes_per_update: int | None = None  # ... or of whole episodes

    def __init__(self, cfg: PolicyGradientConfig, observation_space, action_space, device, total_steps, value: bool):
        self.cfg, self.device, self.total_steps = cfg, device, total_steps
        self.net = PolicyNetwork(
            cfg.encoder, observation_space, action_space, value, cfg.shared_encoder, cfg.log_std_init
        ).to(device)
        encoders = self.net.encoders()
        for encoder in encoders:
            init_encoder(encoder, cfg.encoder)  # encoder.init (a saved encoder) and encoder.freeze
        self.optimizer = make_optimizer(self.net, encoders, cfg.encoder, cfg.optim)  # encoders at lr * lr_mult
        self.greedy = GreedyPolicy(self.net, device)

    def gradient_step(self, loss, step: int) -> float:
        """One optimizer step on `loss` at env step `step`; returns the gradient norm before clipping."""
        anneal(self.optimizer, self.cfg.optim, step, self.total_steps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.net.parameters())  # data-parallel (PPO under torchrun): the mean over processes
        norm = clip_gradients(self.net.parameters(), self.cfg.optim)
        self.optimizer.step()
        return norm

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict, weights_only: bool = False) -> None:
        load_module_state(self.net, state["net"], "net")
        if not weights_only:
            self.optimizer.load_state_dict(state["optimizer"])

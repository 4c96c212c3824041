"""rl-lab: reinforcement learning on PyTorch and gymnasium."""

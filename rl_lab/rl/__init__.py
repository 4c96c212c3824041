"""Reinforcement-learning machinery the agents share: the env loops (off-policy, on-policy), returns and
advantages, stochastic policies, evaluation, videos, and dynamic programming for small MDPs."""

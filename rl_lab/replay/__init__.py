"""Replay buffers: uniform (any observation), frame-once Atari stacks, and the proportional prioritized wrapper.

uniform.py      ReplayBuffer: whole observations in a ring, n-step returns, Batch
frames.py       FrameReplay: each 84x84 frame stored once, stacks rebuilt by index (Dopamine's design)
prioritized.py  Prioritized: a sum tree over any buffer, importance weights
"""

from rl_lab.replay.uniform import Batch, ReplayBuffer

__all__ = ["Batch", "ReplayBuffer"]

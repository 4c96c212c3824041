"""Proportional prioritized replay (Schaul et al. 2016) over any replay buffer, on a vectorised sum-tree.

P(i) = p_i^alpha / sum_k p_k^alpha with p_i = |TD error| + eps; a new transition gets the largest priority seen
so far, so it is replayed at least once soon. Importance weights w_i = (N P(i))^-beta correct the bias, divided by
the largest weight over the whole buffer, (N min_k P(k))^-beta, as in the paper (`normalize="buffer"`: they only
ever scale updates down, and a batch's weights do not depend on what else the batch drew), or by the batch's largest
(`"batch"`, Dopamine's convention: the scale of the updates does not hang on the least likely transition, whose
near-zero TD error can shrink every weight a hundredfold); beta anneals to 1 over training. Sampling
is stratified (one draw per equal slice of the total mass) and every tree operation works on a whole batch of
leaves at once; the tree also keeps the smallest positive leaf, for that largest weight.
"""

from __future__ import annotations

import numpy as np
import torch

from rl_lab.errors import UserError
from rl_lab.replay.uniform import Batch, to_device


class SumTree:
    """A complete binary tree over `capacity` leaves; each inner node holds the sum of its two children (and, in
    `mins`, the smallest positive leaf below it)."""

    def __init__(self, capacity: int):
        self.leaves = 1 << max(capacity - 1, 1).bit_length()
        self.tree = np.zeros(2 * self.leaves, dtype=np.float64)  # node 1 is the root; leaf i is node leaves + i
        self.mins = np.full(2 * self.leaves, np.inf)  # empty (zero) leaves count as +inf

    @property
    def total(self) -> float:
        return float(self.tree[1])

    @property
    def min(self) -> float:
        """The smallest positive leaf (inf when every leaf is 0)."""
        return float(self.mins[1])

    def values(self, idx: np.ndarray) -> np.ndarray:
        return self.tree[self.leaves + idx]

    def update(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Set leaves idx to values (duplicates: the last one wins), then re-sum their ancestors level by level."""
        nodes = self.leaves + np.asarray(idx, dtype=np.int64).ravel()
        self.tree[nodes] = np.broadcast_to(values, np.shape(idx)).ravel()
        self.mins[nodes] = np.where(self.tree[nodes] > 0, self.tree[nodes], np.inf)
        while len(nodes) and nodes[0] > 1:
            nodes = np.unique(nodes // 2)
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]
            self.mins[nodes] = np.minimum(self.mins[2 * nodes], self.mins[2 * nodes + 1])

    def find(self, mass: np.ndarray) -> np.ndarray:
        """The leaf whose prefix-sum interval holds each value of `mass` (in [0, total))."""
        nodes = np.ones(mass.shape, dtype=np.int64)
        mass = mass.astype(np.float64).copy()
        for _ in range(self.leaves.bit_length() - 1):  # depth of the tree
            left = self.tree[2 * nodes]
            right = mass >= left
            mass -= np.where(right, left, 0.0)
            nodes = 2 * nodes + right
        return nodes - self.leaves


class Prioritized:
    """Wraps a buffer with `add -> (added, lost)` slots, `gather(idx, device)`, `__len__` and state_dict."""

    def __init__(self, buffer, alpha: float = 0.5, eps: float = 1e-6, normalize: str = "buffer"):
        self.buffer, self.alpha, self.eps, self.normalize = buffer, alpha, eps, normalize
        self.tree = SumTree(buffer.capacity)
        self.max_priority = 1.0
        self.beta = 0.4  # set by the agent each training phase (annealed towards 1)

    def __len__(self) -> int:
        return len(self.buffer)

    def add(self, *transition, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        added, lost = self.buffer.add(*transition, **kwargs)
        self.tree.update(lost, 0.0)
        self.tree.update(added, self.max_priority**self.alpha)
        return added, lost

    def cut_episodes(self) -> None:
        self.buffer.cut_episodes()

    def sample_indices(self, shape: int | tuple, rng: np.random.Generator) -> np.ndarray:
        """Stratified: each row of a (..., batch) draw takes one leaf from each of `batch` equal slices of mass."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        batch = shape[-1]
        total = self.tree.total
        if total <= 0:
            raise ValueError("sampling from a prioritized buffer without transitions")
        mass = (np.arange(batch) + rng.random(shape)) * (total / batch)
        idx = self.tree.find(np.minimum(mass, np.nextafter(total, 0)))
        empty = self.tree.values(idx) <= 0  # float rounding at a slice edge can land on a zero leaf: redraw it
        while empty.any():
            idx[empty] = self.tree.find(rng.random(int(empty.sum())) * total)
            empty = self.tree.values(idx) <= 0
        return idx

    def sample(self, shape: int | tuple, rng: np.random.Generator, device: torch.device | str = "cpu") -> Batch:
        idx = self.sample_indices(shape, rng)
        batch = self.buffer.gather(idx, device)
        total, n = self.tree.total, len(self.buffer)
        weights = (n * self.tree.values(idx) / total) ** -self.beta
        if self.normalize == "batch":
            weights /= weights.max(axis=-1, keepdims=True)
        else:
            weights /= (n * self.tree.min / total) ** -self.beta  # the largest weight any stored transition has
        batch.weights = to_device(torch.from_numpy(weights.astype(np.float32)), device)
        batch.indices = idx
        return batch

    def update_priorities(self, idx: np.ndarray, td_errors: np.ndarray) -> None:
        priorities = np.abs(td_errors).astype(np.float64) + self.eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(idx, priorities**self.alpha)

    def state_dict(self) -> dict[str, np.ndarray]:
        state = self.buffer.state_dict()
        state["priorities"] = self.tree.values(self.buffer.stored_slots())  # beside the transitions, in their order
        state["max_priority"] = np.array([self.max_priority])
        return state

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore from `state_dict()`, also into a larger buffer (a run given a longer budget): the priorities
        follow their transitions to the slots the buffer puts them in."""
        saved = arrays.get("priorities")
        rest = {k: v for k, v in arrays.items() if k not in ("priorities", "max_priority")}
        if saved is not None and saved.shape == np.shape(arrays.get("rewards")):  # one per saved transition
            self.tree.update(self.buffer.load_state_dict(rest), saved)
        elif saved is not None and saved.shape == (self.tree.leaves,):  # older checkpoints: the whole tree's leaves
            self.buffer.load_state_dict(rest)
            self.tree.update(np.arange(self.tree.leaves), saved)
        else:
            raise UserError("checkpoint replay buffer has no priorities that fit its transitions")
        self.max_priority = float(arrays["max_priority"][0])

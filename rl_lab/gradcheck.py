"""Finite-difference gradient checks (CS231n): compare autograd with centred differences, in float64.

    errors = check_gradients(lambda: loss_fn(x, w), {"x": x, "w": w})   # leaf float64 tensors
    errors = check_module(layer, x)                                      # a module's inputs and parameters

Each returns {name: max relative error}; in float64 a correct gradient gives about 1e-6 or less (up to about
1e-4 next to kinks such as ReLU at 0), a wrong one about 1e-2 or more. Non-scalar outputs are reduced with a
fixed random projection, so every output element contributes. Each evaluation re-seeds torch, so dropout
draws the same mask every time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


def relative_error(analytic: torch.Tensor, numeric: torch.Tensor, scale: float | None = None) -> float:
    """max |a - n| / max(|a|, |n|) over elements, where entries below 1e-3 of `scale` (default: the largest
    gradient here) are compared on that floor instead: round-off on near-zero gradients is not an error."""
    if scale is None:
        scale = max(analytic.abs().max().item(), numeric.abs().max().item())
    floor = max(1e-3 * scale, 1e-30)
    return ((analytic - numeric).abs() / torch.maximum(analytic.abs(), numeric.abs()).clamp_min(floor)).max().item()


def _scalar(fn: Callable[[], torch.Tensor], seed: int) -> Callable[[], torch.Tensor]:
    """fn reduced to a scalar by a fixed random projection, re-seeded on every call."""
    projection: list[torch.Tensor] = []

    def scalar() -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = fn()
        if not projection:
            projection.append(torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed)))
        return (out * projection[0]).sum()

    return scalar


def check_gradients(
    fn: Callable[[], torch.Tensor], tensors: dict[str, torch.Tensor], eps: float = 1e-6, seed: int = 0
) -> dict[str, float]:
    """Max relative error between autograd and centred differences of fn() for each named tensor.

    The tensors must be float64 leaves with requires_grad; fn reads them (and may read anything else).
    """
    for name, t in tensors.items():
        if t.dtype != torch.float64 or not t.requires_grad or not t.is_leaf:
            raise ValueError(f"{name}: gradient checks need float64 leaf tensors with requires_grad")
    f = _scalar(fn, seed)
    grads = torch.autograd.grad(f(), list(tensors.values()), allow_unused=True)
    analytic = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors.values(), grads, strict=True)]
    numeric = []
    with torch.no_grad():
        for t in tensors.values():
            numeric.append(torch.zeros_like(t))
            flat, out = t.view(-1), numeric[-1].view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                plus = f().item()
                flat[i] = old - eps
                minus = f().item()
                flat[i] = old
                out[i] = (plus - minus) / (2 * eps)
    scale = max(g.abs().max().item() for g in analytic + numeric)  # the largest gradient in the whole check
    return {name: relative_error(a, n, scale) for name, a, n in zip(tensors, analytic, numeric, strict=True)}


def check_module(module: nn.Module, *inputs: torch.Tensor, eps: float = 1e-6, seed: int = 0) -> dict[str, float]:
    """Gradient check of a float64 copy of module, w.r.t. its floating inputs (`input0`, ...) and parameters."""
    double = copy.deepcopy(module).double()
    xs = [x.detach().double().requires_grad_() if x.is_floating_point() else x for x in inputs]
    named = {f"input{i}": x for i, x in enumerate(xs) if x.is_floating_point()}
    named.update((name, p) for name, p in double.named_parameters() if p.requires_grad)
    return check_gradients(lambda: double(*xs), named, eps, seed)

"""Decoding a sequence model word by word: greedy, temperature sampling and beam search with length normalisation.

A model offers `start(context) -> state` and `step(tokens, state, context) -> (logits, state, alpha)`, where
context and state are dicts of tensors with the batch first and alpha is (B, L) attention weights or None.
Every function returns tokens (B, T) that stop after `end` (then `pad`) and the attention weights (B, T, L) or None.
"""

from __future__ import annotations

import torch


def _select(tree: dict[str, torch.Tensor | None], index: torch.Tensor) -> dict:
    """Rows `index` of every tensor in a dict (beam reordering and expansion)."""
    return {k: None if v is None else v.index_select(0, index) for k, v in tree.items()}


def _stack(alphas: list) -> torch.Tensor | None:
    return None if not alphas or alphas[0] is None else torch.stack(alphas, 1)


@torch.no_grad()
def sample(
    model,
    context: dict,
    start: int,
    end: int,
    pad: int,
    max_steps: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """temperature 0: greedy (argmax each step); > 0: draw each word from softmax(logits / temperature)."""
    grid = next(v for v in context.values() if v is not None)
    batch = grid.shape[0]
    state = model.start(context)
    token = torch.full((batch,), start, dtype=torch.long, device=grid.device)
    done = torch.zeros(batch, dtype=torch.bool, device=token.device)
    tokens, alphas = [], []
    for _ in range(max_steps):
        logits, state, alpha = model.step(token, state, context)
        if temperature > 0:
            probs = torch.softmax(logits.float() / temperature, -1)
            token = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)
        else:
            token = logits.argmax(-1)
        token = token.masked_fill(done, pad)
        tokens.append(token)
        alphas.append(alpha)
        done = done | (token == end)
        if done.all():
            break
    return torch.stack(tokens, 1), _stack(alphas)


@torch.no_grad()
def beam_search(
    model,
    context: dict,
    start: int,
    end: int,
    pad: int,
    max_steps: int,
    beam: int = 3,
    length_alpha: float = 0.7,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep the `beam` best partial captions per image, ranked by log p / length**length_alpha.

    A finished caption stays in its beam (extended by <pad> at no cost, its length frozen) and competes with
    the unfinished ones. With beam=1 every step keeps the single most likely word: exactly greedy decoding.
    """
    grid = next(v for v in context.values() if v is not None)
    batch, device = grid.shape[0], grid.device
    context = _select(context, torch.arange(batch, device=device).repeat_interleave(beam))
    state = model.start(context)
    token = torch.full((batch * beam,), start, dtype=torch.long, device=device)
    scores = torch.full((batch, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: expand only the first
    lengths = torch.zeros(batch, beam, device=device)
    done = torch.zeros(batch * beam, dtype=torch.bool, device=device)
    tokens = torch.zeros(batch * beam, 0, dtype=torch.long, device=device)
    alphas = None
    for _ in range(max_steps):
        logits, state, alpha = model.step(token, state, context)
        logp = torch.log_softmax(logits.float(), -1)
        logp[done] = float("-inf")
        logp[done, pad] = 0.0
        vocab = logp.shape[-1]
        total = scores.view(-1, 1) + logp  # (B*K, V)
        new_len = lengths.view(-1, 1) + (~done).view(-1, 1).float()
        ranked = (total / new_len.clamp(min=1) ** length_alpha).view(batch, beam * vocab)
        best = ranked.topk(beam, -1).indices  # (B, K)
        source = (best // vocab + torch.arange(batch, device=device).view(-1, 1) * beam).view(-1)
        token = (best % vocab).view(-1)
        scores = total.view(batch, -1).gather(1, best)
        lengths = new_len.expand(-1, vocab).reshape(batch, -1).gather(1, best)
        state = _select(state, source)
        tokens = torch.cat([tokens[source], token[:, None]], 1)
        if alpha is not None:
            alphas = torch.cat([alphas[source], alpha[source, None]], 1) if alphas is not None else alpha[:, None]
        done = done[source] | (token == end)
        if done.all():
            break
    pick = (scores / lengths.clamp(min=1) ** length_alpha).argmax(-1) + torch.arange(batch, device=device) * beam
    return tokens[pick], None if alphas is None else alphas[pick]

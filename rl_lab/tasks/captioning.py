"""Image captioning on the shared backbone: a CNN encoder writes a feature grid, an LSTM/GRU writes the sentence.

Two decoders (Vinyals et al. 2015, Xu et al. 2015):
  attention=false  Show and Tell: the pooled image vector sets the RNN's initial state; the RNN sees only words.
  attention=true   Show, Attend and Tell: each step also reads a soft-attention average of the L = h*w grid
                   vectors, scaled by a gating scalar beta = sigmoid(f(h)); the loss adds the doubly stochastic
                   term lambda * mean_i (1 - sum_t alpha_ti)^2 so that every place gets looked at over the caption.
Teacher forcing with <pad> ignored by the loss; gradient clipping (task.optim.grad_clip). Metrics: BLEU-1..4 and
CIDEr-D from pycocoevalcap (the MS-COCO evaluation code), on the held-out splits.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_lab.backbone import EncoderSpec, build_encoder, load_encoder
from rl_lab.backbone.encoders import Encoder
from rl_lab.backbone.transfer import init_encoder, param_groups, saved_spec
from rl_lab.backbone.vision import feature_map
from rl_lab.checkpoint import latest_checkpoint, load_checkpoint, load_module_state, reading_checkpoint, save_checkpoint
from rl_lab.config import EncoderConfig, TaskConfig, check
from rl_lab.data.captions import (
    CAPTION_DATASETS,
    CAPTION_SPLITS,
    CaptionSplit,
    Vocabulary,
    load_captions,
    load_image,
)
from rl_lab.decoding import beam_search, sample
from rl_lab.errors import UserError
from rl_lab.logger import RunLogger
from rl_lab.seeding import rng_state, set_rng_state
from rl_lab.tasks.classification import epoch_seed
from rl_lab.tasks.training import OptimConfig, ScheduleConfig, batches, make_optimizer, make_schedule

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider")


def _small_cnn() -> EncoderConfig:
    """Three conv+pool blocks: 32x32 scenes -> a 4x4 grid of 64-d vectors (a grid cell per quarter object cell)."""
    return EncoderConfig("vgg", {"channels": [16, 32, 64], "convs_per_block": 1, "hidden_sizes": []})


@dataclass
class CaptioningConfig:
    name: str = "captioning"
    encoder: EncoderConfig = field(default_factory=_small_cnn)
    rnn: Literal["lstm", "gru"] = "lstm"
    attention: bool = True  # false: Show and Tell (image -> initial state only)
    embed_dim: int = 32
    hidden_size: int = 128
    attention_dim: int = 64
    dropout: float = 0.0  # before the output layer
    doubly_stochastic: float = 1.0  # lambda of the attention regulariser (Xu et al. eq. 14); 0 = off
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, grad_clip=5.0))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    min_count: int = 1  # rarer training words become <unk>
    max_length: int = 32  # words per caption; longer training captions are cut, generation stops there
    beam: int = 3  # decoding for evaluation; 1 = greedy
    length_alpha: float = 0.7  # beam ranking: log p / length**length_alpha
    final_beams: list[int] = field(default_factory=lambda: [1, 3, 5])  # the test set is also scored at each

    def __post_init__(self):
        for key in ("embed_dim", "hidden_size", "attention_dim", "min_count", "max_length", "beam"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(self.doubly_stochastic >= 0, "doubly_stochastic", "must be >= 0")
        check(self.length_alpha >= 0, "length_alpha", "must be >= 0")
        check(all(b >= 1 for b in self.final_beams), "final_beams", "beam sizes must be >= 1")


class Captioner(nn.Module):
    """encoder (backbone CNN) -> grid (B, L, D) -> LSTM/GRU decoder (the backbone's recurrent core) -> words."""

    def __init__(
        self,
        encoder: Encoder,
        vocab_size: int,
        *,
        rnn: str = "lstm",
        attention: bool = True,
        embed_dim: int = 64,
        hidden_size: int = 256,
        attention_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        with torch.no_grad():
            grid = feature_map(encoder.eval(), torch.zeros(1, *encoder.spec.input_shape))
        encoder.train()
        self.grid_size = tuple(grid.shape[2:])  # (h, w): attention maps are drawn at this resolution
        dim = grid.shape[1]
        self.attention = attention
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=Vocabulary.PAD)
        core_in = embed_dim + (dim if attention else 0)
        # the backbone's recurrent core, with an identity torso (an mlp with no hidden layers)
        core_spec = EncoderSpec(
            rnn, (core_in,), {"torso": "mlp", "torso_kwargs": {"hidden_sizes": []}, "hidden_size": hidden_size}
        )
        self.core = build_encoder(core_spec)
        self.init_state = nn.Linear(dim, self.core.parts * hidden_size)
        if attention:
            self.att_grid = nn.Linear(dim, attention_dim)
            self.att_hidden = nn.Linear(hidden_size, attention_dim)
            self.att_score = nn.Linear(attention_dim, 1)
            self.gate = nn.Linear(hidden_size, 1)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size + (dim if attention else 0), vocab_size)

    def train(self, mode: bool = True):
        super().train(mode)
        if not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics
        return self

    def encode(self, images: torch.Tensor) -> dict:
        """Grid vectors (B, L, D) and, with attention, their projections for the attention scores."""
        grid = feature_map(self.encoder, images).flatten(2).transpose(1, 2)
        return {"grid": grid, "keys": self.att_grid(grid) if self.attention else None}

    def start(self, context: dict) -> dict:
        """Initial RNN state from the pooled image vector (the mean of the grid)."""
        pooled = context["grid"].mean(1)
        h = torch.tanh(self.init_state(pooled)).view(len(pooled), self.core.parts, -1)
        return {"h": h}

    def step(self, tokens: torch.Tensor, state: dict, context: dict):
        """One word: (B,) previous tokens -> logits (B, V), next state, attention weights (B, L) or None."""
        x = self.embed(tokens)
        h = state["h"]  # (B, parts, H); parts 0 is the hidden state the attention and output read
        alpha = None
        if self.attention:
            scores = self.att_score(torch.tanh(context["keys"] + self.att_hidden(h[:, 0])[:, None])).squeeze(-1)
            alpha = torch.softmax(scores, -1)
            z = torch.sigmoid(self.gate(h[:, 0])) * (alpha[..., None] * context["grid"]).sum(1)
            x = torch.cat([x, z], -1)
        starts = torch.zeros(1, len(tokens), dtype=torch.bool, device=tokens.device)
        out, core_state = self.core(x[None], h.transpose(0, 1).contiguous(), starts)
        features = out[0] if alpha is None else torch.cat([out[0], z], -1)
        return self.out(self.dropout(features)), {"h": core_state.transpose(0, 1)}, alpha

    def forward(self, images: torch.Tensor, captions: torch.Tensor):
        """Teacher forcing: captions (B, T) = <start> w.. <end> <pad>..; logits (B, T-1, V), alphas (B, T-1, L)."""
        context = self.encode(images)
        state = self.start(context)
        logits, alphas = [], []
        for t in range(captions.shape[1] - 1):
            step_logits, state, alpha = self.step(captions[:, t], state, context)
            logits.append(step_logits)
            alphas.append(alpha)
        return torch.stack(logits, 1), None if alphas[0] is None else torch.stack(alphas, 1)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_steps: int, beam: int = 1, length_alpha: float = 0.7, **kw):
        """Token ids (B, T) and attention weights (B, T, L) or None; beam > 1 is beam search, else `sample`."""
        context = self.encode(images)
        ids = (Vocabulary.START, Vocabulary.END, Vocabulary.PAD, max_steps)
        if beam > 1:
            return beam_search(self, context, *ids, beam=beam, length_alpha=length_alpha)
        return sample(self, context, *ids, **kw)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, alphas: torch.Tensor | None, doubly_stochastic: float):
    """(total, cross-entropy): mean CE over the non-<pad> targets, plus the doubly stochastic attention term."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=Vocabulary.PAD)
    if alphas is None or doubly_stochastic == 0:
        return ce, ce
    mask = (targets != Vocabulary.PAD).to(alphas.dtype)[..., None]
    coverage = (alphas * mask).sum(1)  # (B, L): how much each place was attended over the caption
    return ce + doubly_stochastic * ((1 - coverage) ** 2).mean(), ce


def caption_scores(references: list[list[list[str]]], hypotheses: list[list[str]]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr(-D) of tokenised hypotheses against their references, with pycocoevalcap's scorers."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}, "cider": float(cider)}


def caption_encoder(cfg: EncoderConfig, image_shape: tuple[int, ...]) -> Encoder:
    """The task's CNN, with `encoder.init` applied and `encoder.freeze` honoured.

    A saved encoder of another input shape (e.g. pretrained on 1x8x8 digits) gives its architecture, built for
    this task's images, and its conv weights, which do not depend on the image size; a grey first layer is spread
    over RGB divided by 3 (a grey image then gets the pretrained response). Layers sized by the input (the fully
    connected ones) keep their fresh weights: captioning reads only the conv grid.
    """
    if not cfg.init or saved_spec(cfg.init).input_shape == tuple(image_shape):
        encoder = build_encoder(EncoderSpec(cfg.name, image_shape, cfg.kwargs))
        init_encoder(encoder, cfg)
        return encoder
    source = load_encoder(cfg.init)
    encoder = build_encoder(EncoderSpec(source.spec.name, image_shape, source.spec.kwargs))
    own, copied = encoder.state_dict(), 0
    for key, saved in source.state_dict().items():
        mine = own.get(key)
        if mine is None:
            continue
        if saved.shape == mine.shape:
            own[key], copied = saved, copied + 1
        elif saved.ndim == 4 and saved.shape[1] == 1 and saved.shape[0] == mine.shape[0]:
            own[key], copied = saved.expand_as(mine) / mine.shape[1], copied + 1
    if not copied:
        raise UserError(f"encoder.init={cfg.init}: no weights fit this task's {image_shape} images")
    encoder.load_state_dict(own)
    init_encoder(encoder, EncoderConfig(source.spec.name, freeze=cfg.freeze))
    return encoder


def build_model(c: CaptioningConfig, encoder: Encoder, vocab_size: int) -> Captioner:
    return Captioner(
        encoder,
        vocab_size,
        rnn=c.rnn,
        attention=c.attention,
        embed_dim=c.embed_dim,
        hidden_size=c.hidden_size,
        attention_dim=c.attention_dim,
        dropout=c.dropout,
    )


@torch.no_grad()
def describe(model: Captioner, images: torch.Tensor, vocab: Vocabulary, beam: int, length_alpha: float, batch=250):
    """Captions (token lists) and attention weights (N, T, L) or None of uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    words, alphas = [], []
    for start in range(0, len(images), batch):
        ids, alpha = model.generate(images[start : start + batch].to(device), vocab.max_length + 1, beam, length_alpha)
        words += [vocab.decode(row.tolist()) for row in ids.cpu()]
        alphas.append(alpha)
    model.train(was_training)
    if alphas[0] is None:
        return words, None
    steps = max(a.shape[1] for a in alphas)  # batches stop at their own longest caption
    return words, torch.cat([F.pad(a, (0, 0, 0, steps - a.shape[1])) for a in alphas]).cpu()


def evaluate_split(model: Captioner, data: CaptionSplit, vocab: Vocabulary, beam: int, length_alpha: float) -> dict:
    hypotheses, _ = describe(model, data.images, vocab, beam, length_alpha)
    return caption_scores(data.captions, hypotheses)


@dataclass
class CaptionState:
    epoch: int = 0  # finished epochs
    step: int = 0  # optimiser steps
    metrics_lines: int = 0
    best_val_cider: float = float("-inf")  # the best weights are those of the highest validation CIDEr
    best_epoch: int = 0
    train_captions: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    final: dict | None = None  # held-out scores of the best weights, once logged


class CaptioningTrainer:
    """The task's training loop, driven by rl_lab.run like the classification task (run, resume, state)."""

    def __init__(self, config: TaskConfig, device: torch.device, rng: np.random.Generator):
        self.config, self.device, self.rng = config, device, rng
        c, d = config.task, config.data
        if d.name not in CAPTION_DATASETS:
            raise UserError(f"task captioning needs a captions dataset: data.name one of {', '.join(CAPTION_DATASETS)}")
        self.data = {split: load_captions(d.name, split, **d.kwargs) for split in CAPTION_SPLITS[d.name]}
        train = self.data["train"]
        self.vocab = Vocabulary.build((cap for caps in train.captions for cap in caps), c.min_count, c.max_length)
        self.image_shape = tuple(train.images.shape[1:])
        self.model = build_model(c, caption_encoder(c.encoder, self.image_shape), len(self.vocab)).to(device)
        groups = param_groups(self.model, self.model.encoder, c.encoder, c.optim.lr, c.optim.weight_decay)
        self.optimizer = make_optimizer(groups, c.optim)
        self.schedule = make_schedule(self.optimizer, c.schedule, config.train.epochs)
        # every (image, reference caption) pair is one training example
        self.pair_image = torch.tensor([i for i, caps in enumerate(train.captions) for _ in caps])
        self.pair_caption = self.vocab.encode_batch([cap for caps in train.captions for cap in caps])
        self.best = copy.deepcopy(self.model.state_dict())
        self.state = CaptionState()

    def run(self, run_dir: Path, logger: RunLogger) -> dict:
        config, c, state = self.config, self.config.task, self.state
        self.vocab.save(run_dir / "vocab.json")
        start = time.perf_counter()
        while state.epoch < config.train.epochs:
            self.train_epoch(logger)
            self.end_epoch(logger)
            self.save(run_dir, logger, start)
        if state.final is None:  # a run resumed after its final checkpoint has logged this already
            best = self.best_model()
            held_out = [s for s in self.data if s != "train"]
            state.final = {s: evaluate_split(best, self.data[s], self.vocab, c.beam, c.length_alpha) for s in held_out}
            state.final["test_by_beam"] = {
                str(b): evaluate_split(best, self.data["test"], self.vocab, b, c.length_alpha) for b in c.final_beams
            }
            row = {f"{s}/{k}": v for s in held_out for k, v in state.final[s].items()}
            logger.log(state.step, {"epoch": state.epoch, **row})
            self.save(run_dir, logger, start)
        hypotheses, _ = describe(self.best_model(), self.data["test"].images[:5], self.vocab, c.beam, c.length_alpha)
        return {
            **{k: v for k, v in state.final.items()},
            "best_val_cider": state.best_val_cider,
            "best_epoch": state.best_epoch,
            "epochs": state.epoch,
            "steps": state.step,
            "dataset": config.data.name,
            "attention": c.attention,
            "beam": c.beam,
            "vocab_size": len(self.vocab),
            "examples": [
                {"id": i, "caption": " ".join(h), "reference": " ".join(refs[0])}
                for i, h, refs in zip(self.data["test"].ids, hypotheses, self.data["test"].captions, strict=False)
            ],
            "wall_time_s": state.wall_time_s + time.perf_counter() - start,
            "train_captions_per_s": state.train_captions / max(state.train_time_s, 1e-9),
        }

    def train_epoch(self, logger: RunLogger) -> None:
        config, c, state = self.config, self.config.task, self.state
        images = self.data["train"].images
        loader = batches(
            self.pair_image, self.pair_caption, config.train.batch_size, seed=epoch_seed(config.seed, state.epoch, 0)
        )
        self.model.train()
        start = time.perf_counter()
        for image_index, captions in loader:
            length = int((captions != Vocabulary.PAD).sum(1).max())  # drop the columns that are pad everywhere
            captions = captions[:, :length].to(self.device)
            logits, alphas = self.model(images[image_index].to(self.device), captions)
            loss, ce = caption_loss(logits, captions[:, 1:], alphas, c.doubly_stochastic)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.optim.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip)
            self.optimizer.step()
            state.step += 1
            state.train_captions += len(captions)
            if state.step % config.logger.log_every == 0:
                row = {"epoch": state.epoch, "train/loss": loss.item(), "train/ce": ce.item()}
                logger.log(state.step, row)
                logger.progress(state.step, epoch=state.epoch, loss=f"{row['train/loss']:.4f}")
        state.train_time_s += time.perf_counter() - start

    def end_epoch(self, logger: RunLogger) -> None:
        """Score the validation captions, step the schedule, remember the best weights, log the epoch."""
        c, state = self.config.task, self.state
        val = evaluate_split(self.model, self.data["val"], self.vocab, c.beam, c.length_alpha)
        lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0]["lr_mult"]
        if c.schedule.name == "plateau":
            self.schedule.step(-val["cider"])
        else:
            self.schedule.step()
        state.epoch += 1
        if val["cider"] > state.best_val_cider:
            state.best_val_cider, state.best_epoch = val["cider"], state.epoch
            self.best = copy.deepcopy(self.model.state_dict())
        logger.log(state.step, {"epoch": state.epoch, "lr": lr, **{f"val/{k}": v for k, v in val.items()}})

    def best_model(self) -> Captioner:
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.best)
        return model.eval()

    def save(self, run_dir: Path, logger: RunLogger, start: float) -> None:
        json_rng, tensor_rng = rng_state(self.rng)
        torch_state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "best": self.best,
            "rng": tensor_rng,
        }
        meta = {**vars(self.state), "metrics_lines": logger.lines, "rng": json_rng}
        meta["wall_time_s"] = self.state.wall_time_s + time.perf_counter() - start
        meta["model"] = self.model_meta()
        save_checkpoint(
            run_dir / "checkpoints", self.state.step, torch_state, {}, meta, self.config.run.keep_checkpoints
        )

    def model_meta(self) -> dict:
        """What `rl-lab caption` needs to rebuild the model without the data: encoder spec, image shape, vocab."""
        return {"encoder": self.model.encoder.spec.to_dict(), "vocab": self.vocab.to_json()}

    def resume(self, run_dir: Path) -> None:
        """Load the latest checkpoint: weights, optimiser, schedule, best weights, RNGs and counters."""
        path = latest_checkpoint(run_dir / "checkpoints")
        torch_state, _, meta = load_checkpoint(path, self.device)
        with reading_checkpoint(path):
            load_module_state(self.model, torch_state["model"], "model")
            self.optimizer.load_state_dict(torch_state["optimizer"])
            self.schedule.load_state_dict(torch_state["schedule"])
            self.best = torch_state["best"]
            set_rng_state(self.rng, meta.pop("rng"), torch_state["rng"])
            meta.pop("model")
            self.state = CaptionState(**meta)

    def load_weights(self, checkpoint: Path) -> Captioner:
        """The model a finished run was scored with (its best validation weights), in eval mode."""
        torch_state, _, _ = load_checkpoint(checkpoint, self.device)
        model = copy.deepcopy(self.model)
        load_module_state(model, torch_state["best"], f"{checkpoint} best weights")
        return model.eval()

    def evaluate(self, run_dir: Path) -> dict:
        """Held-out scores of a run's best weights at the config's beam (`rl-lab eval RUN_DIR`), as a table."""
        c = self.config.task
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
        model = self.load_weights(checkpoint)
        result = {s: evaluate_split(model, self.data[s], self.vocab, c.beam, c.length_alpha) for s in self.data}
        result.pop("train")
        print(f"{run_dir} at {checkpoint.name} ({self.config.data.name}, beam {c.beam})")
        self.print_scores(result)
        return result

    @staticmethod
    def print_scores(rows: dict[str, dict]) -> None:
        print(f"  {'split':<8}" + "".join(f"{m:>8}" for m in METRICS))
        for name, scores in rows.items():
            print(f"  {name:<8}" + "".join(f"{scores[m]:8.3f}" for m in METRICS))

    def report(self, summary: dict, run_dir: Path) -> None:
        """Print the held-out scores and a few captions (rl_lab.tasks.runner calls this after training)."""
        print(f"{self.config.data.name}: {summary['epochs']} epochs, {summary['steps']} steps, beam {summary['beam']}")
        rows = {s: summary[s] for s in self.data if s != "train"}
        self.print_scores({**rows, **{f"test b{b}": v for b, v in summary["test_by_beam"].items()}})
        for example in summary["examples"][:3]:
            print(f"  {example['caption']!r}  (reference: {example['reference']!r})")
        print(f"training: {summary['wall_time_s']:.1f} s, {summary['train_captions_per_s']:.0f} captions/s")
        print(f"run dir: {run_dir}")


def caption_image(
    run_dir: str | Path, image_path: str | Path, attention: bool = False, beam: int | None = None, out=None
) -> tuple[list[str], Path | None]:
    """`rl-lab caption`: print the caption a run's best weights give an image; with attention, draw where each
    word looked (a PNG, default RUN_DIR/plots/attention-IMAGE.png). Returns the words and the figure's path."""
    from rl_lab.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    if not isinstance(config, TaskConfig) or config.task.name != "captioning":
        raise UserError(f"{run_dir} is not a captioning run (its config has no task.name=captioning)")
    c = config.task
    if attention and not c.attention:
        raise UserError(f"{run_dir} was trained without attention (task.attention=false); drop --attention")
    if beam is not None and beam < 1:
        raise UserError(f"--beam {beam}: must be >= 1")
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    torch_state, _, meta = load_checkpoint(checkpoint)
    try:
        spec = EncoderSpec.from_dict(meta["model"]["encoder"])
        vocab = Vocabulary.from_json(meta["model"]["vocab"], f"{checkpoint} vocabulary")
    except (KeyError, TypeError) as err:
        raise UserError(f"checkpoint {checkpoint} has no model description ({err}); is it a captioning run?") from None
    model = build_model(c, build_encoder(spec), len(vocab))
    load_module_state(model, torch_state["best"], f"{checkpoint} best weights")
    image = torch.from_numpy(load_image(Path(image_path), spec.input_shape[1]))
    (words,), alphas = describe(model, image[None], vocab, beam or c.beam, c.length_alpha)
    print(" ".join(words))
    if not attention:
        return words, None
    path = Path(out) if out else run_dir / "plots" / f"attention-{Path(image_path).stem}.png"
    plot_attention(image, words, alphas[0], model.grid_size, path)
    print(f"attention map: {path}")
    return words, path


def plot_attention(image: torch.Tensor, words: list[str], alphas: torch.Tensor, grid: tuple[int, int], path: Path):
    """The image, then one panel per generated word (and <end>) with its attention weights laid over it."""
    from rl_lab.plots import plt

    tokens = (words + ["<end>"])[: len(alphas)]
    picture = image.permute(1, 2, 0).numpy()
    size = picture.shape[:2]
    cols = min(len(tokens) + 1, 8)
    rows = -(-(len(tokens) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.75 * rows), dpi=120, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title("image", fontsize=8)
    for ax, word, alpha in zip(axes.flat[1:], tokens, alphas, strict=False):
        weights = F.interpolate(alpha.view(1, 1, *grid).float(), size=size, mode="bilinear", align_corners=False)
        ax.imshow(picture)
        ax.imshow(weights[0, 0].numpy(), cmap="gray", alpha=0.6, vmin=0)
        ax.set_title(word, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

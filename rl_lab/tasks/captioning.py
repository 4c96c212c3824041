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

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_lab.backbone import EncoderSpec, build_encoder, load_encoder
from rl_lab.backbone.encoders import Encoder
from rl_lab.backbone.transfer import init_encoder, saved_spec
from rl_lab.backbone.vision import feature_map
from rl_lab.checkpoint import load_checkpoint, load_module_state
from rl_lab.config import EncoderConfig, TaskConfig
from rl_lab.data.captions import (
    CAPTION_DATASETS,
    CAPTION_SPLITS,
    CaptionSplit,
    Vocabulary,
    load_captions,
    load_image,
)
from rl_lab.errors import UserError
from rl_lab.extras import require
from rl_lab.figures import plot_loss_and_scores, pyplot, save_figure
from rl_lab.logger import RunLogger
from rl_lab.optim import make_epoch_schedule, make_optimizer
from rl_lab.tasks.base import EpochTrainer, epoch_seed
from rl_lab.tasks.configs import CaptioningConfig
from rl_lab.tasks.decoding import beam_search, sample
from rl_lab.tasks.training import batches

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider")


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


class CaptioningTrainer(EpochTrainer):
    """Epochs of teacher-forced (image, reference caption) pairs, validated by CIDEr; the held-out splits scored once
    at the end with the best weights, the test split also at each of `final_beams`."""

    selection = ("cider", "max")

    def __init__(self, config: TaskConfig, device: torch.device, rng: np.random.Generator):
        super().__init__(config, device, rng)
        require("caption", "pycocoevalcap", what="caption metrics (BLEU, CIDEr)")  # before training, not after
        c, d = config.task, config.data
        if d.name not in CAPTION_DATASETS:
            raise UserError(f"task captioning needs a captions dataset: data.name one of {', '.join(CAPTION_DATASETS)}")
        self.data = {split: load_captions(d.name, split, **d.kwargs) for split in CAPTION_SPLITS[d.name]}
        train = self.data["train"]
        self.vocab = Vocabulary.build((cap for caps in train.captions for cap in caps), c.min_count, c.max_length)
        self.image_shape = tuple(train.images.shape[1:])
        self.model = build_model(c, caption_encoder(c.encoder, self.image_shape), len(self.vocab)).to(device)
        self.optimizer = make_optimizer(self.model, self.model.encoder, c.encoder, c.optim)
        self.schedule = make_epoch_schedule(self.optimizer, c.optim, config.train.epochs)
        # every (image, reference caption) pair is one training example
        self.pair_image = torch.tensor([i for i, caps in enumerate(train.captions) for _ in caps])
        self.pair_caption = self.vocab.encode_batch([cap for caps in train.captions for cap in caps])
        self.ready()

    @property
    def total_steps(self) -> int:
        """An epoch is one pass over the (image, caption) pairs, not over the images."""
        return self.config.train.epochs * max(len(self.pair_image) // self.config.train.batch_size, 1)

    def run(self, run_dir: Path, logger: RunLogger) -> dict:
        self.vocab.save(run_dir / "vocab.json")
        return super().run(run_dir, logger)

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
            state.train_examples += len(captions)
            if state.step % config.logger.log_every == 0:
                row = {"epoch": state.epoch, "train/loss": loss.item(), "train/ce": ce.item()}
                logger.log(state.step, row)
                logger.progress(state.step, epoch=state.epoch, loss=f"{row['train/loss']:.4f}")
        state.train_time_s += time.perf_counter() - start

    def scores(self, model: Captioner, split: str, beam: int | None = None) -> dict[str, float]:
        c = self.config.task
        return evaluate_split(model, self.data[split], self.vocab, beam or c.beam, c.length_alpha)

    def validate(self) -> dict[str, float]:
        return self.scores(self.model, "val")

    def test(self, model: Captioner) -> dict:
        final = {s: self.scores(model, s) for s in self.data if s != "train"}
        final["test_by_beam"] = {str(b): self.scores(model, "test", b) for b in self.config.task.final_beams}
        return final

    def final_row(self, final: dict) -> dict[str, float]:
        return {f"{s}/{k}": v for s in self.data if s != "train" for k, v in final[s].items()}

    def checkpoint_meta(self) -> dict:
        """What `rl-lab caption` needs to rebuild the model without the data: encoder spec and vocabulary."""
        return {"model": {"encoder": self.model.encoder.spec.to_dict(), "vocab": self.vocab.to_json()}}

    def summary(self) -> dict:
        c, state = self.config.task, self.state
        hypotheses, _ = describe(self.best_model(), self.data["test"].images[:5], self.vocab, c.beam, c.length_alpha)
        test = self.data["test"]
        return {
            **state.final,
            "best_val_cider": state.best_val["cider"],
            "attention": c.attention,
            "beam": c.beam,
            "vocab_size": len(self.vocab),
            "examples": [
                {"id": i, "caption": " ".join(h), "reference": " ".join(refs[0])}
                for i, h, refs in zip(test.ids, hypotheses, test.captions, strict=False)
            ],
            "train_captions_per_s": state.train_examples / max(state.train_time_s, 1e-9),
        }

    def evaluate_checkpoint(self, checkpoint: Path, **options) -> tuple[dict, str]:
        """Held-out scores of a run's best weights at the config's beam (`rl-lab eval RUN_DIR`), as a table."""
        model = self.load_weights(checkpoint)
        result = {s: self.scores(model, s) for s in self.data if s != "train"}
        title = (
            f"{checkpoint.parent.parent} at {checkpoint.name} ({self.config.data.name}, beam {self.config.task.beam})"
        )
        return result, "\n".join([title, scores_table(result)])

    def report(self, summary: dict, run_dir: Path) -> str:
        """The learning curve (plots/learning_curve.png), the held-out scores and a few captions."""
        what = f"{'attention' if self.config.task.attention else 'no attention'}, seed {self.config.seed}"
        curve = plot_loss_and_scores(
            run_dir / "metrics.jsonl",
            run_dir / "plots" / "learning_curve.png",
            f"captioning on {self.config.data.name} ({what})",
            ("val/bleu4", "val/cider"),
        )
        rows = {s: summary[s] for s in self.data if s != "train"}
        rows.update({f"test b{b}": v for b, v in summary["test_by_beam"].items()})
        lines = [
            f"{self.config.data.name}: {summary['epochs']} epochs, {summary['steps']} steps, beam {summary['beam']}"
        ]
        lines.append(scores_table(rows))
        lines += [f"  {e['caption']!r}  (reference: {e['reference']!r})" for e in summary["examples"][:3]]
        lines.append(f"training: {summary['wall_time_s']:.1f} s, {summary['train_captions_per_s']:.0f} captions/s")
        lines.append(f"run dir: {run_dir}")
        lines.append(f"learning curve: {curve}")
        return "\n".join(lines)


def scores_table(rows: dict[str, dict]) -> str:
    lines = [f"  {'split':<8}" + "".join(f"{m:>8}" for m in METRICS)]
    lines += [f"  {name:<8}" + "".join(f"{scores[m]:8.3f}" for m in METRICS) for name, scores in rows.items()]
    return "\n".join(lines)


def caption_file(checkpoint: Path, c: CaptioningConfig, image_path, beam: int, attention_path: Path | None = None):
    """The words a captioning checkpoint's best weights give an image file (resized to the model's input); with
    `attention_path`, a figure of where each word looked. The model is rebuilt from the checkpoint alone."""
    torch_state, _, meta = load_checkpoint(checkpoint)
    try:
        spec = EncoderSpec.from_dict(meta["model"]["encoder"])
        vocab = Vocabulary.from_json(meta["model"]["vocab"], f"{checkpoint} vocabulary")
    except (KeyError, TypeError) as err:
        raise UserError(f"checkpoint {checkpoint} has no model description ({err}); is it a captioning run?") from None
    model = build_model(c, build_encoder(spec), len(vocab))
    load_module_state(model, torch_state["best"], f"{checkpoint} best weights")
    image = torch.from_numpy(load_image(Path(image_path), spec.input_shape[1]))
    (words,), alphas = describe(model, image[None], vocab, beam, c.length_alpha)
    if attention_path is not None:
        plot_attention(image, words, alphas[0], model.grid_size, attention_path)
    return words


def plot_attention(image: torch.Tensor, words: list[str], alphas: torch.Tensor, grid: tuple[int, int], path: Path):
    """The image, then one panel per generated word (and <end>) with its attention weights laid over it."""
    plt = pyplot()
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
    return save_figure(fig, path)

"""The lectures' sanity checks and visualisations for any model or encoder (CS231n L6-L7, L13).

Each diagnostic writes `<name>.json` (and a PNG where there is a picture) into out_dir and returns the
JSON's content as a dict. `model(images)` must give logits (N, classes) for the checks that need a loss or
a class score; an RL agent's Q-network works too (Q-values as scores). `images` are (N, C, H, W) uint8
(scaled to [0, 1]) or float, or (N, D) vectors; `labels` are int64 (N,). None of them changes the model
passed in: the checks that train or re-initialise work on a copy.

    function (writes into out_dir)                                                  files
    initial_loss(model, images, labels, out_dir, tolerance=0.25)                    initial_loss.json
    overfit_tiny(model, images, labels, out_dir, n=20, steps=1000, lr=3e-3, threshold=0.01, seed=0)
                                                                                    overfit_tiny.json/.png
    activation_stats(model, images, labels, out_dir, seed=0)                        activation_stats.json/.png
    update_ratio_check(model, images, labels, out_dir, lr=1e-3, steps=50, batch_size=32, seed=0, optim=None)
                                                                                    update_ratio.json/.png
    first_layer_filters(model, images, labels, out_dir, max_filters=64)             filters.json/.png
    saliency_maps(model, images, labels, out_dir, n=10)                             saliency.json/.png
    occlusion_maps(model, images, labels, out_dir, n=10, patch=None, stride=None)   occlusion.json/.png
    embeddings(model, images, labels, out_dir, methods=("pca", "tsne"), seed=0)     embeddings.json,
                                                                                    embedding_{pca,tsne}.json/.png

activation_stats and first_layer_filters do not use labels (None is fine); embeddings uses model.encoder
when the model has one; saliency_maps and occlusion_maps show the first example of each class (up to n), each
row of maps on one colour scale with its bar. A PNG's path is in the returned dict under "png".

For a training loop: `before = snapshot(model)` ahead of `optimizer.step()`, then `update_ratios(model,
before)` gives {parameter: |dW| / |W|} for the weight matrices and filters; about 1e-3 is healthy.
`saliency(...)` and `occlusion(...)` return the maps as tensors. DIAGNOSTICS maps names to the functions.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_lab.config import OptimConfig
from rl_lab.errors import UserError
from rl_lab.extras import require
from rl_lab.figures import pyplot, save_figure
from rl_lab.fileio import write_atomic
from rl_lab.optim import make_optimizer

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.ELU, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.SiLU)
# Re-initialisations compared by activation_stats: weight std = scale / sqrt(fan_in), biases zero.
INIT_SCALES = {"too small (0.1)": 0.1, "xavier (1)": 1.0, "kaiming (√2)": math.sqrt(2), "too large (10)": 10.0}


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def _write(out_dir: str | Path, name: str, result: dict, fig=None) -> dict:
    """Write result as out_dir/name.json and fig as out_dir/name.png (whose path joins result)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fig is not None:
        result["png"] = str(save_figure(fig, out / f"{name}.png", dpi=100))
    write_atomic(out / f"{name}.json", json.dumps(result, indent=2) + "\n")
    return result


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode, its own mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def _image_grid(rows: list[tuple], titles: list[str]):
    """One column per title and one figure row per (label, maps (n, H, W[, 3]), colormap, scale): scale None draws
    each map on its own range (images), else (vmin, vmax) or "shared" (the row's min and max) puts the row on one
    colour scale, with its colour bar at the row's end."""
    n = len(titles)
    fig, axes = pyplot().subplots(
        len(rows), n, figsize=(1.3 * n + 1.0, 1.45 * len(rows) + 0.3), squeeze=False, layout="constrained"
    )
    for r, (label, maps, cmap, scale) in enumerate(rows):
        if scale == "shared":
            scale = (float(np.min(maps)), float(np.max(maps)))
        limits = {} if scale is None else {"vmin": scale[0], "vmax": scale[1]}
        for i in range(n):
            shown = axes[r, i].imshow(maps[i], cmap=cmap, **limits)
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
        if scale is not None:
            bar = fig.colorbar(shown, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01)
            bar.ax.tick_params(labelsize=6)
    for i, title in enumerate(titles):
        axes[0, i].set_title(title, fontsize=8)
    return fig


def one_per_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first example of each class present, in class order, at most n."""
    classes = torch.unique(labels)[:n]
    return torch.stack([torch.nonzero(labels == c)[0, 0] for c in classes])


def _show(images: torch.Tensor) -> np.ndarray:
    """Images as (N, H, W) or (N, H, W, 3) arrays in [0, 1] for imshow."""
    x = _as_float(images).cpu()
    if x.dim() != 4:
        raise UserError(f"this diagnostic needs images (N, C, H, W), got shape {tuple(images.shape)}")
    x = x - x.amin(dim=(1, 2, 3), keepdim=True)
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return x.permute(0, 2, 3, 1).numpy() if x.shape[1] == 3 else x[:, 0].numpy()


def initial_loss(model: nn.Module, images, labels, out_dir, tolerance: float = 0.25) -> dict:
    """Softmax loss at initialisation should be about log(C): the network starts out guessing uniformly."""
    with torch.no_grad(), _eval_mode(model):
        logits = model(_as_float(images).to(_device(model)))
    loss = F.cross_entropy(logits, labels.to(logits.device)).item()
    expected = math.log(logits.shape[1])
    result = {
        "loss": loss,
        "expected": expected,
        "num_classes": logits.shape[1],
        "logit_std": logits.std().item(),
        "ok": abs(loss - expected) <= tolerance * expected,
    }
    return _write(out_dir, "initial_loss", result)


def overfit_tiny(
    model: nn.Module,
    images,
    labels,
    out_dir,
    n: int = 20,
    steps: int = 1000,
    lr: float = 3e-3,
    threshold: float = 0.01,
    seed: int = 0,
) -> dict:
    """Train a copy on the first n examples with Adam, without dropout, until the training loss is below
    `threshold`: a sound model and loss drive a tiny set's loss to about zero (the lectures' check). It fails when
    `steps` updates do not get there. steps_to_threshold: the updates it took; steps_to_100: the updates until the
    training predictions were all right."""
    torch.manual_seed(seed)
    net = copy.deepcopy(model).train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    device = _device(net)
    x, y = _as_float(images[:n]).to(device), labels[:n].to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    losses: list[float] = []
    steps_to_100 = steps_to_threshold = None
    for step in range(steps + 1):  # the loss before each update, and after the last
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        losses.append(loss.item())
        if steps_to_100 is None and bool((logits.argmax(1) == y).all()):
            steps_to_100 = step
        if losses[-1] < threshold:
            steps_to_threshold = step
            break
        if step < steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad(), _eval_mode(net):
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    ok = steps_to_threshold is not None
    fig, ax = pyplot().subplots(figsize=(5, 3.2))
    ax.semilogy(range(len(losses)), losses, "-" if len(losses) > 20 else "o-", color="tab:blue", label="loss")
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"target {threshold:g}")
    outcome = f"below {threshold:g} after {steps_to_threshold} steps" if ok else f"not below {threshold:g}"
    ax.set(xlabel="update", ylabel="training loss", title=f"overfitting {len(x)} examples: loss {outcome}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    result = {
        "n": len(x),
        "threshold": threshold,
        "steps_to_threshold": steps_to_threshold,
        "steps_to_100": steps_to_100,
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "train_accuracy": accuracy,
        "ok": ok,
    }
    return _write(out_dir, "overfit_tiny", result, fig)


def _watched_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The activation modules, else (for nets with functional activations) the conv and linear layers."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, ACTIVATIONS)]
    return layers or [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _activations(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each watched layer's output on x, in train mode (batch norm normalises) but without dropout."""
    outputs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: outputs.append(o.detach().flatten().cpu()))
        for _, m in _watched_layers(model)
    ]
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return outputs


def activation_stats(model: nn.Module, images, labels, out_dir, seed: int = 0) -> dict:
    """Per-layer activation histograms (the lecture's too-small / Xavier / too-large figure).

    Rows: the model as given (at initialisation, if called then), then copies whose conv and linear
    weights are redrawn as N(0, (scale / sqrt(fan_in))^2). Too small: activations shrink towards zero layer
    by layer; too large: tanh saturates at +-1 and ReLU activations grow; Xavier (tanh) or Kaiming (ReLU)
    keeps their spread about constant.
    """
    x = _as_float(images).to(_device(model))
    variants = {"as given": copy.deepcopy(model)}
    for label, scale in INIT_SCALES.items():
        torch.manual_seed(seed)
        net = copy.deepcopy(model)
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=scale / math.sqrt(m.weight[0].numel()))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        variants[label] = net
    names = [name for name, _ in _watched_layers(model)]
    result: dict = {"layers": names, "inits": {}}
    fig, axes = pyplot().subplots(
        len(variants), len(names), figsize=(1.8 * len(names) + 1, 1.5 * len(variants)), squeeze=False
    )
    for r, (label, net) in enumerate(variants.items()):
        acts = _activations(net, x)
        stats = []
        for c, a in enumerate(acts):
            stats.append(
                {
                    "mean": a.mean().item(),
                    "std": a.std().item(),
                    "zero_fraction": (a.abs() < 1e-6).float().mean().item(),
                    "saturated_fraction": (a.abs() > 0.99).float().mean().item(),
                }
            )
            ax = axes[r, c]
            ax.hist(a.numpy(), bins=40, color="tab:blue")
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            ax.set_title(f"{names[c]}\nμ={stats[-1]['mean']:.2g} σ={stats[-1]['std']:.2g}", fontsize=6)
        axes[r, 0].set_ylabel(label, fontsize=7)
        result["inits"][label] = stats
    return _write(out_dir, "activation_stats", result, fig)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the weight matrices and filters (biases and norm scales are left out: they start at 0 or 1)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad and p.dim() > 1}


def update_ratios(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    """|W_after - W_before| / |W_before| per weight tensor, for the parameters in `before`."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        return {name: ((params[name] - w).norm() / w.norm().clamp_min(1e-12)).item() for name, w in before.items()}


def update_ratio_check(
    model: nn.Module,
    images,
    labels,
    out_dir,
    lr: float = 1e-3,
    steps: int = 50,
    batch_size: int = 32,
    seed: int = 0,
    optim: OptimConfig | None = None,
) -> dict:
    """Train a copy for a few steps and plot each weight's update/weight ratio (aim: about 1e-3): with Adam at
    `lr`, or with `optim` (a run's agent.optim / task.optim: its optimiser at its learning rate)."""
    torch.manual_seed(seed)
    net = copy.deepcopy(model).train()
    device = _device(net)
    x, y = _as_float(images).to(device), labels.to(device)
    optim = optim or OptimConfig(lr=lr)
    lr = optim.lr
    optimizer = make_optimizer(net, [], None, optim)
    history: dict[str, list[float]] = {}
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), device=device)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        before = snapshot(net)
        optimizer.step()
        for name, ratio in update_ratios(net, before).items():
            history.setdefault(name, []).append(ratio)
    medians = {name: float(np.median(r)) for name, r in history.items()}
    overall = float(np.median(list(medians.values())))
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    for name, ratios in history.items():
        ax.semilogy(ratios, label=name, lw=1)
    ax.axhline(1e-3, color="k", ls="--", lw=1, label="1e-3")
    ax.set(xlabel="step", ylabel="|update| / |weight|", title=f"{optim.name} lr={lr:g}: median ratio {overall:.1e}")
    ax.legend(fontsize=6, ncol=2)
    result = {
        "optimizer": optim.name,
        "lr": lr,
        "steps": steps,
        "median_ratio": overall,
        "median_ratio_per_weight": medians,
        "ok": 1e-4 <= overall <= 1e-2,
    }
    return _write(out_dir, "update_ratio", result, fig)


def first_layer_filters(model: nn.Module, images, labels, out_dir, max_filters: int = 64) -> dict:
    """The first conv layer's filters as images; for a first linear layer over image pixels, its rows
    reshaped to the image (the templates of a linear classifier). RGB filters are drawn in colour."""
    name, layer = next(
        ((n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))), (None, None)
    )
    if layer is None:
        raise UserError("first_layer_filters: the model has no conv or linear layer")
    w = layer.weight.detach().cpu().float()
    if isinstance(layer, nn.Linear):
        shape = tuple(images.shape[1:])
        if images.dim() != 4 or w.shape[1] != math.prod(shape):
            raise UserError(
                f"first_layer_filters: the first layer ({name}) is linear over {w.shape[1]} features, not images"
            )
        w = w.reshape(-1, *shape)
    if w.shape[1] not in (1, 3):  # e.g. stacked frames: one tile per (filter, input channel)
        w = w.reshape(-1, 1, *w.shape[2:])
    w = w[:max_filters]
    tiles = _show(w)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(tiles):
            ax.imshow(tiles[i], cmap="gray", interpolation="nearest")
        ax.axis("off")
    fig.suptitle(f"{name}: {tuple(layer.weight.shape)}", fontsize=8)
    result = {"layer": name, "weight_shape": list(layer.weight.shape), "tiles": len(tiles)}
    return _write(out_dir, "filters", result, fig)


def saliency(model: nn.Module, images, labels) -> torch.Tensor:
    """|d score_y / d x| (Simonyan et al. 2014), max over channels: (N, H, W) for images, (N, D) for vectors."""
    x = _as_float(images).to(_device(model)).requires_grad_()
    with _eval_mode(model):
        scores = model(x).gather(1, labels.to(x.device).view(-1, 1))
    (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad.abs().amax(dim=1) if grad.dim() == 4 else grad.abs()


def saliency_maps(model: nn.Module, images, labels, out_dir, n: int = 10) -> dict:
    """One image per class (up to n classes) above its saliency map for its class, the maps on one scale."""
    pick = one_per_class(labels, n)
    images, labels = images[pick], labels[pick]
    maps = saliency(model, images, labels).cpu()
    rows = [("image", _show(images), "gray", None), ("saliency", maps.numpy(), "hot", "shared")]
    fig = _image_grid(rows, [f"class {c}" for c in labels.tolist()])
    result = {"n": len(pick), "classes": labels.tolist(), "max_saliency": maps.amax(dim=(1, 2)).tolist()}
    return _write(out_dir, "saliency", result, fig)


def _true_class_probability(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).softmax(1).gather(1, y.view(-1, 1))[:, 0].cpu()


def occlusion(model: nn.Module, images, labels, patch: int, stride: int, fill: float = 0.0) -> torch.Tensor:
    """Probability of the true class with a patch x patch square set to `fill` at each grid position
    (Zeiler & Fergus 2014): (N, rows, cols); low values mark the regions the prediction depends on."""
    x = _as_float(images).to(_device(model))
    y = labels.to(x.device)
    height, width = x.shape[-2:]
    tops, lefts = range(0, height - patch + 1, stride), range(0, width - patch + 1, stride)
    probs = torch.empty(len(x), len(tops), len(lefts))
    with torch.no_grad(), _eval_mode(model):
        for r, top in enumerate(tops):
            for c, left in enumerate(lefts):
                occluded = x.clone()
                occluded[..., top : top + patch, left : left + patch] = fill
                probs[:, r, c] = _true_class_probability(model, occluded, y)
    return probs


def occlusion_maps(
    model: nn.Module, images, labels, out_dir, n: int = 10, patch: int | None = None, stride: int | None = None
) -> dict:
    """Occlusion maps for one image per class (up to n classes), on the probability scale [0, 1]; patch defaults
    to a quarter of the image side, stride to half a patch."""
    pick = one_per_class(labels, n)
    images, labels = images[pick], labels[pick]
    patch = patch or max(1, min(images.shape[-2:]) // 4)
    stride = stride or max(1, patch // 2)
    maps = occlusion(model, images, labels, patch, stride)
    device = _device(model)
    with torch.no_grad(), _eval_mode(model):
        clean = _true_class_probability(model, _as_float(images).to(device), labels.to(device))
    rows = [("image", _show(images), "gray", None), ("p(true class)", maps.numpy(), "viridis", (0.0, 1.0))]
    fig = _image_grid(rows, [f"class {c}" for c in labels.tolist()])
    result = {
        "n": len(pick),
        "classes": labels.tolist(),
        "patch": patch,
        "stride": stride,
        "clean_probability": clean.tolist(),
        "min_occluded_probability": maps.amin(dim=(1, 2)).tolist(),
    }
    return _write(out_dir, "occlusion", result, fig)


def embeddings(
    model: nn.Module, images, labels, out_dir, methods: tuple[str, ...] = ("pca", "tsne"), seed: int = 0
) -> dict:
    """2-D PCA and t-SNE of the features (model.encoder's output if the model has an encoder, else the
    model's), coloured by label, with the 5-NN accuracy in each 2-D map as a measure of class separation."""
    require("vision", "sklearn", what="PCA and t-SNE embeddings")
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    unknown = set(methods) - {"pca", "tsne"}
    if unknown:
        raise UserError(f"embeddings: unknown method(s) {sorted(unknown)}; use pca and/or tsne")
    if len(labels) < 10:
        raise UserError(f"embeddings: need at least 10 examples for the 5-NN score, got {len(labels)}")
    encoder = getattr(model, "encoder", model)
    with torch.no_grad(), _eval_mode(encoder):
        features = encoder(_as_float(images).to(_device(encoder))).flatten(1).cpu().numpy()
    y = labels.cpu().numpy()
    result: dict = {"n": len(y), "feature_dim": features.shape[1]}
    for method in methods:
        if method == "pca":
            points = PCA(2, random_state=seed).fit_transform(features)
        else:
            points = TSNE(2, perplexity=min(30.0, len(y) - 1.0), init="pca", random_state=seed).fit_transform(features)
        knn = cross_val_score(KNeighborsClassifier(5), points, y, cv=5).mean()
        fig, ax = pyplot().subplots(figsize=(5, 4.5))
        sc = ax.scatter(points[:, 0], points[:, 1], c=y, cmap="tab10", s=6)
        ax.legend(*sc.legend_elements(), fontsize=6, loc="best", title="label")
        ax.set(
            title=f"{method.upper()} of {features.shape[1]}-d features: 5-NN accuracy {knn:.2f}", xticks=[], yticks=[]
        )
        result[method] = _write(out_dir, f"embedding_{method}", {"knn_accuracy": float(knn)}, fig)
    return _write(out_dir, "embeddings", result)


DIAGNOSTICS = {
    "initial_loss": initial_loss,
    "overfit_tiny": overfit_tiny,
    "activation_stats": activation_stats,
    "update_ratio": update_ratio_check,
    "filters": first_layer_filters,
    "saliency": saliency_maps,
    "occlusion": occlusion_maps,
    "embeddings": embeddings,
}

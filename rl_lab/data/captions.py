"""Captioned images: synthetic scenes (the default, no download), a COCO-captions-format loader, and the
vocabulary a captioning model is saved with.

Synthetic scenes put 1-4 objects (shape x colour x size) in distinct cells of a grid and describe them in reading
order, each linked to the next by a spatial relation ("a small red circle left of a large blue square"). Every
image has several captions: the canonical one first, then variants with synonyms and the reverse order
("a big blue box to the right of a little red circle"). Some colour-shape combinations are held out of
train/val/test and make up the `novel` split, to measure composition of attributes never seen together.

The COCO loader reads the captions JSON of MS-COCO (`images` + `annotations`), an image folder and a
Karpathy-style split file (`dataset_coco.json`: `images[].cocoid|filename|split`, `restval` counts as train).
"""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rl_lab.errors import UserError
from rl_lab.fileio import write_atomic

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (60, 100, 240), "yellow": (230, 210, 40)}
SIZES = {"small": 0.22, "large": 0.42}  # radius as a fraction of a grid cell's side
SYNONYMS = {
    "small": ("small", "little"),
    "large": ("large", "big"),
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
}
# relation of an object to the next one in reading order, and the reverse relation; canonical form first
RELATIONS = {
    "left": (("left", "of"), ("to", "the", "left", "of")),
    "above": (("above",), ("over",)),
    "right": (("right", "of"), ("to", "the", "right", "of")),
    "below": (("below",), ("under",)),
}
REVERSE = {"left": "right", "above": "below"}
SCENE_SPLITS = ("train", "val", "test", "novel")


@dataclass
class CaptionSplit:
    """One split of a captioned-image dataset, in memory; images stay uint8 like every other dataset."""

    name: str
    split: str
    images: torch.Tensor  # uint8 (N, C, H, W)
    captions: list[list[list[str]]]  # per image, its reference captions as token lists
    ids: list[int]  # image ids (scene index, or the COCO image id)

    def __len__(self) -> int:
        return len(self.captions)


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers, punctuation dropped (Karpathy's preprocessing of COCO captions)."""
    return re.findall(r"[a-z0-9]+", text.lower())


# ---------------------------------------------------------------------------------------------- synthetic scenes


def _draw(image: np.ndarray, shape: str, cx: float, cy: float, r: float, colour: np.ndarray) -> None:
    """Paint one filled shape centred at (cx, cy) with 'radius' r into image (H, W, 3)."""
    size = image.shape[0]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if shape == "circle":
        mask = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    elif shape == "square":
        mask = (np.abs(x - cx) <= 0.85 * r) & (np.abs(y - cy) <= 0.85 * r)
    else:  # triangle pointing up: the half-width grows from 0 at the apex to r at the base
        top, bottom = cy - r, cy + 0.8 * r
        mask = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= (y - top) / (bottom - top) * r)
    image[mask] = colour


def _phrase(obj: tuple[str, str, str], rng: np.random.Generator | None) -> list[str]:
    """'a small red circle'; with rng, each word picks one of its synonyms."""
    size, colour, shape = obj
    pick = (lambda w: SYNONYMS[w][rng.integers(len(SYNONYMS[w]))]) if rng is not None else (lambda w: SYNONYMS[w][0])
    return ["a", pick(size), colour, pick(shape)]


def _caption(objects: list, relations: list[str], rng: np.random.Generator | None) -> list[str]:
    """Objects in order joined by relations; rng=None gives the canonical caption, else a random variant."""
    reverse = rng is not None and bool(rng.integers(2))
    if reverse:
        objects = objects[::-1]
        relations = [REVERSE[rel] for rel in relations[::-1]]
    words = _phrase(objects[0], rng)
    for rel, obj in zip(relations, objects[1:], strict=True):
        forms = RELATIONS[rel]
        words += list(forms[rng.integers(len(forms))] if rng is not None else forms[0]) + _phrase(obj, rng)
    return words


def _combos(heldout: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(seen, held-out) colour-shape pairs; held-out entries are 'colour shape' strings."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    held = []
    for item in heldout:
        parts = tuple(item.split())
        if len(parts) != 2 or parts not in pairs:
            raise UserError(
                f"held-out combination {item!r} must be 'colour shape' with colour in {', '.join(COLOURS)} "
                f"and shape in {', '.join(SHAPES)}"
            )
        held.append(parts)
    seen = [p for p in pairs if p not in held]
    return seen, held


def scene_split(
    split: str,
    size: int,
    *,
    seed: int = 0,
    image_size: int = 32,
    grid: int = 2,
    max_objects: int = 4,
    captions_per_image: int = 5,
    heldout: Iterable[str] = ("green triangle", "blue circle"),
) -> CaptionSplit:
    """`size` generated scenes of one split, deterministic given (seed, split) and the arguments.

    train/val/test never show a held-out colour-shape pair; every `novel` scene shows at least one.
    """
    for key, value in (
        ("size", size),
        ("image_size", image_size),
        ("grid", grid),
        ("captions_per_image", captions_per_image),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"synthetic scenes: {key}={value!r} must be a positive integer")
    if isinstance(heldout, str) or not all(isinstance(h, str) for h in heldout):
        raise UserError(f"synthetic scenes: heldout={heldout!r} must be a list of 'colour shape' strings")
    if split not in SCENE_SPLITS:
        raise UserError(f"unknown split {split!r} for synthetic scenes; choose one of {', '.join(SCENE_SPLITS)}")
    if not 1 <= max_objects <= grid * grid:
        raise UserError(f"max_objects={max_objects} must be between 1 and grid*grid={grid * grid}")
    if image_size < 8 * grid:
        raise UserError(f"image_size={image_size} is too small for a {grid}x{grid} grid (needs >= {8 * grid})")
    seen, held = _combos(list(heldout))
    if split == "novel" and not held:
        raise UserError("the novel split needs at least one held-out colour-shape combination")
    rng = np.random.default_rng([seed, SCENE_SPLITS.index(split)])
    cell = image_size / grid
    images = np.zeros((size, image_size, image_size, 3), np.uint8)
    captions = []
    for i in range(size):
        n = int(rng.integers(1, max_objects + 1))
        cells = np.sort(rng.choice(grid * grid, n, replace=False))  # reading order: row by row
        pairs = [seen[j] for j in rng.integers(len(seen), size=n)]
        if split == "novel":
            pairs[rng.integers(n)] = held[rng.integers(len(held))]
        objects = []
        for c, (colour, shape) in zip(cells, pairs, strict=True):
            size_name = list(SIZES)[rng.integers(len(SIZES))]
            r = SIZES[size_name] * cell
            slack = cell / 2 - r - 1
            cx, cy = (c % grid + 0.5) * cell, (c // grid + 0.5) * cell
            cx, cy = cx + rng.uniform(-slack, slack), cy + rng.uniform(-slack, slack)
            tint = np.clip(np.array(COLOURS[colour]) + rng.integers(-25, 26, 3), 0, 255)
            _draw(images[i], shape, cx, cy, r, tint)
            objects.append((size_name, colour, shape))
        relations = ["left" if a // grid == b // grid else "above" for a, b in zip(cells[:-1], cells[1:], strict=True)]
        refs = [_caption(objects, relations, None)]
        refs += [_caption(objects, relations, rng) for _ in range(captions_per_image - 1)]
        captions.append(refs)
    ids = list(range(size))
    return CaptionSplit("shapes", split, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), captions, ids)


def load_shapes_captions(
    split: str,
    seed: int = 0,
    image_size: int = 32,
    grid: int = 2,
    max_objects: int = 4,
    captions_per_image: int = 5,
    heldout: tuple[str, ...] = ("green triangle", "blue circle"),
    num_train: int = 4000,
    num_val: int = 500,
    num_test: int = 500,
    num_novel: int = 500,
) -> CaptionSplit:
    """The `shapes_captions` dataset: scene_split with a size per split; `seed` is the data's, not the run's."""
    sizes = {"train": num_train, "val": num_val, "test": num_test, "novel": num_novel}
    if split not in sizes:
        raise UserError(f"unknown split {split!r} for shapes_captions; choose one of {', '.join(sizes)}")
    return scene_split(
        split,
        sizes[split],
        seed=seed,
        image_size=image_size,
        grid=grid,
        max_objects=max_objects,
        captions_per_image=captions_per_image,
        heldout=heldout,
    )


# ----------------------------------------------------------------------------------------------------- COCO format


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} is not valid JSON ({err})") from None


def load_image(path: Path, image_size: int) -> np.ndarray:
    """An image file as uint8 (3, S, S), resized bilinearly; a missing or broken file is a UserError."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            return np.array(img, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"image {path} is corrupt or not an image ({err})") from None


def save_image(image: np.ndarray, path: Path) -> Path:
    """A uint8 (3, S, S) image as a PNG file that load_image reads back unchanged (at the same size)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(path)
    return path


def load_coco_captions(
    split: str,
    captions_file: str | None = None,
    images_dir: str | None = None,
    split_file: str | None = None,
    image_size: int = 64,
) -> CaptionSplit:
    """One Karpathy split (train = train + restval, val, test) of a COCO-format captions set, resized square."""
    for key, value in (("captions_file", captions_file), ("images_dir", images_dir), ("split_file", split_file)):
        if not isinstance(value, str):
            raise UserError(f"coco_captions needs data.kwargs.{key} (a path), got {value!r}")
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split {split!r} for COCO captions; choose train, val or test")
    captions_file, images_dir, split_file = Path(captions_file), Path(images_dir), Path(split_file)
    coco = _read_json(captions_file, "COCO captions file")
    karpathy = _read_json(split_file, "split file")
    try:
        files = {int(img["id"]): img["file_name"] for img in coco["images"]}
        refs: dict[int, list[list[str]]] = {}
        for ann in coco["annotations"]:
            refs.setdefault(int(ann["image_id"]), []).append(tokenize(ann["caption"]))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"{captions_file} is not in COCO captions format (images[].id/file_name, "
            f"annotations[].image_id/caption): {type(err).__name__} {err}"
        ) from None
    try:
        wanted = [
            int(img["cocoid"])
            for img in karpathy["images"]
            if (img["split"] if img["split"] != "restval" else "train") == split
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"{split_file} is not a Karpathy-style split file (images[].cocoid/split): {type(err).__name__} {err}"
        ) from None
    missing = [i for i in wanted if i not in files or i not in refs]
    if missing:
        raise UserError(f"{split_file}: image id {missing[0]} has no image or no caption in {captions_file}")
    if not wanted:
        raise UserError(f"{split_file} has no images in split {split!r}")
    images = np.stack([load_image(images_dir / files[i], image_size) for i in wanted])
    return CaptionSplit("coco", split, torch.from_numpy(images), [refs[i] for i in wanted], wanted)


CAPTION_DATASETS = {"shapes_captions": load_shapes_captions, "coco_captions": load_coco_captions}
CAPTION_SPLITS = {"shapes_captions": ("train", "val", "test", "novel"), "coco_captions": ("train", "val", "test")}


def load_captions(name: str, split: str, **options) -> CaptionSplit:
    """One split of a captions dataset by name; an unknown option is a UserError naming the known ones."""
    if name not in CAPTION_DATASETS:
        raise UserError(f"unknown captions dataset {name!r}; choose one of {', '.join(CAPTION_DATASETS)}")
    loader = CAPTION_DATASETS[name]
    known = [p for p in inspect.signature(loader).parameters if p != "split"]
    for key in options:
        if key not in known:
            raise UserError(f"dataset {name!r} has no option {key!r}; options: {', '.join(known)}")
    return loader(split, **options)


# ------------------------------------------------------------------------------------------------------ vocabulary


class Vocabulary:
    """Words <-> ids, with <pad>=0 <start> <end> <unk>; captions longer than max_length words are cut."""

    SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
    PAD, START, END, UNK = range(4)

    def __init__(self, words: list[str], max_length: int) -> None:
        self.words = list(self.SPECIALS) + [w for w in words if w not in self.SPECIALS]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, captions: Iterable[list[str]], min_count: int = 1, max_length: int = 32) -> Vocabulary:
        """Words seen at least min_count times, most frequent first (ties alphabetical), for a stable order."""
        counts = Counter(w for caption in captions for w in caption)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words, max_length)

    def encode(self, caption: list[str]) -> list[int]:
        """<start> w1 .. wn <end> with n <= max_length; unknown words become <unk>."""
        ids = [self.index.get(w, self.UNK) for w in caption[: self.max_length]]
        return [self.START, *ids, self.END]

    def encode_batch(self, captions: list[list[str]]) -> torch.Tensor:
        """(N, max_length + 2) int64, padded with <pad>."""
        out = torch.full((len(captions), self.max_length + 2), self.PAD, dtype=torch.int64)
        for i, caption in enumerate(captions):
            ids = self.encode(caption)
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first <end>, without <start> and <pad>."""
        words = []
        for i in ids:
            if i == self.END:
                break
            if i not in (self.START, self.PAD):
                words.append(self.words[i])
        return words

    def to_json(self) -> str:
        return json.dumps({"words": self.words, "max_length": self.max_length}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "vocabulary") -> Vocabulary:
        try:
            data = json.loads(text)
            words, max_length = data["words"], data["max_length"]
            ok = isinstance(words, list) and all(isinstance(w, str) for w in words) and isinstance(max_length, int)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{source} is corrupt ({type(err).__name__}: {err})") from None
        if not ok or tuple(words[:4]) != cls.SPECIALS:
            raise UserError(f"{source} is corrupt (expected words starting with {' '.join(cls.SPECIALS)})")
        return cls(words[4:], max_length)

    def save(self, path: Path) -> None:
        write_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"vocabulary not found: {path}")
        return cls.from_json(path.read_text(encoding="utf-8"), str(path))

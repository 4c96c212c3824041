"""Captioned-image data: the synthetic scenes generator, the COCO-format loader and the vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rl_lab.data.captions import COLOURS, SHAPES, Vocabulary, load_captions, load_coco_captions, scene_split
from rl_lab.errors import UserError


def _pairs(caption: list[str]) -> set[tuple[str, str]]:
    """(colour, shape) pairs named in a canonical caption."""
    return {(a, b) for a, b in zip(caption, caption[1:], strict=False) if a in COLOURS and b in SHAPES}


def test_scenes_are_deterministic_by_seed_and_split():
    a, b = scene_split("train", 30, seed=3), scene_split("train", 30, seed=3)
    assert np.array_equal(a.images.numpy(), b.images.numpy()) and a.captions == b.captions
    assert not np.array_equal(a.images.numpy(), scene_split("train", 30, seed=4).images.numpy())
    assert not np.array_equal(a.images.numpy(), scene_split("test", 30, seed=3).images.numpy())
    assert a.images.shape == (30, 3, 32, 32) and a.images.dtype.is_floating_point is False


def test_captions_name_the_colours_in_the_picture_and_relate_every_object():
    data = scene_split("val", 60, image_size=48, grid=2, max_objects=4, captions_per_image=4)
    palette = np.array(list(COLOURS.values()), dtype=float)
    for image, refs in zip(data.images.numpy(), data.captions, strict=True):
        assert len(refs) == 4
        pixels = image.reshape(3, -1).T[image.reshape(3, -1).max(0) > 0].astype(float)
        nearest = np.linalg.norm(pixels[:, None] - palette[None], axis=2).argmin(1)
        seen = {list(COLOURS)[i] for i in np.unique(nearest)}
        canonical = refs[0]
        assert {c for c, _ in _pairs(canonical)} == seen
        objects = canonical.count("a")
        relations = sum(canonical.count(w) for w in ("left", "above"))
        assert relations == objects - 1  # reading order: each object is related to the next
        for variant in refs[1:]:  # synonyms and the reverse order keep the same number of objects
            assert variant.count("a") == objects


def test_held_out_combinations_appear_only_in_the_novel_split():
    held = {("green", "triangle"), ("blue", "circle")}
    for split in ("train", "val", "test"):
        data = scene_split(split, 200, max_objects=4)
        assert not any(_pairs(refs[0]) & held for refs in data.captions)
    novel = scene_split("novel", 100, max_objects=4)
    assert all(_pairs(refs[0]) & held for refs in novel.captions)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"heldout": ["purple circle"]}, "held-out combination"),
        ({"max_objects": 5, "grid": 2}, "max_objects=5"),
        ({"image_size": "big"}, "image_size='big'"),
    ],
)
def test_bad_scene_options_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        scene_split("train", 4, **kwargs)


def test_load_captions_rejects_unknown_options_and_datasets():
    with pytest.raises(UserError, match="no option 'colours'"):
        load_captions("shapes_captions", "train", colours=3)
    with pytest.raises(UserError, match="unknown captions dataset"):
        load_captions("flickr", "train")


def test_vocabulary_specials_min_count_max_length_and_json_round_trip():
    captions = [["a", "red", "circle"], ["a", "red", "square"], ["a", "blue", "circle", "left", "of", "a", "box"]]
    vocab = Vocabulary.build(captions, min_count=2, max_length=4)
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and vocab.PAD == 0
    assert set(vocab.words[4:]) == {"a", "red", "circle"}  # the words seen at least twice
    ids = vocab.encode(["a", "blue", "circle", "left", "of"])
    assert ids[0] == vocab.START and ids[-1] == vocab.END and len(ids) == 4 + 2  # cut to 4 words
    assert vocab.decode(ids) == ["a", "<unk>", "circle", "<unk>"]
    batch = vocab.encode_batch([["a"], ["a", "red", "circle"]])
    assert batch.shape == (2, 6) and batch[0, 3:].eq(vocab.PAD).all()
    again = Vocabulary.from_json(vocab.to_json())
    assert again.words == vocab.words and again.max_length == 4
    with pytest.raises(UserError, match="corrupt"):
        Vocabulary.from_json('{"words": ["a"], "max_length": 3}')
    with pytest.raises(UserError, match="corrupt"):
        Vocabulary.from_json("not json")


def _coco_fixture(root):
    """Five images in COCO captions format with a Karpathy split file: 2 train, 1 restval, 1 val, 1 test."""
    images_dir = root / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    coco = {"images": [], "annotations": []}
    karpathy = {"images": [], "dataset": "coco"}
    for n, split in enumerate(["train", "train", "restval", "val", "test"]):
        cocoid, name = 1000 + n, f"COCO_val2014_{1000 + n:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (20 + n, 30, 3), dtype=np.uint8)).save(images_dir / name)
        coco["images"].append({"id": cocoid, "file_name": name, "height": 20 + n, "width": 30})
        for k in range(2):
            coco["annotations"].append({"image_id": cocoid, "id": 10 * n + k, "caption": f"A Dog, number {n}-{k}."})
        karpathy["images"].append({"filepath": "val2014", "filename": name, "cocoid": cocoid, "split": split})
    (root / "captions.json").write_text(json.dumps(coco))
    (root / "dataset_coco.json").write_text(json.dumps(karpathy))
    return root / "captions.json", images_dir, root / "dataset_coco.json"


def test_coco_format_loader_reads_karpathy_splits(tmp_path):
    captions, images, splits = _coco_fixture(tmp_path)
    train = load_coco_captions("train", str(captions), str(images), str(splits), image_size=16)
    assert train.ids == [1000, 1001, 1002]  # restval counts as train
    assert train.images.shape == (3, 3, 16, 16)
    assert train.captions[2] == [["a", "dog", "number", "2", "0"], ["a", "dog", "number", "2", "1"]]
    test = load_captions(
        "coco_captions", "test", captions_file=str(captions), images_dir=str(images), split_file=str(splits)
    )
    assert test.ids == [1004] and test.images.shape == (1, 3, 64, 64)


def test_coco_format_loader_problems_are_user_errors(tmp_path):
    captions, images, splits = _coco_fixture(tmp_path)
    paths = (str(captions), str(images), str(splits))
    (images / "COCO_val2014_000000001004.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="corrupt or not an image"):
        load_coco_captions("test", *paths)
    (images / "COCO_val2014_000000001003.jpg").unlink()
    with pytest.raises(UserError, match="image not found"):
        load_coco_captions("val", *paths)
    captions.write_text('{"images": [], "annotations": [{"caption": "x"}]}')
    with pytest.raises(UserError, match="not in COCO captions format"):
        load_coco_captions("train", *paths)
    splits.write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_coco_captions("train", *paths)
    with pytest.raises(UserError, match="needs data.kwargs.images_dir"):
        load_captions("coco_captions", "train", captions_file=str(captions))

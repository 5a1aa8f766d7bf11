"""Analyze your own PyTorch classifier from Python.

    import torch, compute.api as atlas
    run = atlas.analyze(my_model, eval_data=my_test_set, train_data=my_train_set, epochs=0,
                        class_names=["cat", "dog"], layers=["layer4.*"], warehouse="warehouse/data")
    print(run.run_id, run.figures)

Datasets may be ``compute.datasets.sources.ImageSet`` or any map-style torch ``Dataset`` of
``(image, label)`` pairs with images as float tensors in [0, 1] (C, H, W) or uint8; the model must
take such images (put any normalisation inside the model). Probe points are found by tracing
the model's ReLU calls (see ``compute.nets.discover``) unless it names them itself (``probes``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from compute.datasets.sources import ImageSet, Splits, require_classes
from compute.distributed.executor import Executor, make_executor
from compute.nets.discover import trace_probes
from compute.errors import DataError
from compute.images.config import ImageConfig
from compute.run.config import RunConfig, RunSummary, default_run_id, settle_config
from compute.run.pipeline import analyze_into
from compute.threads import DEFAULT_THREADS
from warehouse.layout import check_run_id, default_path
from warehouse.parse import shown
from warehouse.publish import RunWriter


def _class_number(label: object) -> bool:
    """Whether ``label`` is one whole number (an int, or a one-element tensor or array of one), not a one-hot
    vector, a fraction or a name, which ``int()`` refuses with a traceback or truncates."""
    if isinstance(label, bool):
        return False
    try:
        t = torch.as_tensor(label)
    except (TypeError, ValueError, RuntimeError):
        return False
    return t.numel() == 1 and t.dtype not in (torch.bool, torch.complex64, torch.complex128) and float(t).is_integer()


def _image_tensor(x: object, index: int, name: str) -> torch.Tensor:
    """One example's image as a tensor; a PIL image or other object is named, with the transform it lacks."""
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"{name}: image {index} is a {type(x).__name__}, not a tensor or array; give the dataset a "
                        f"transform to tensors (e.g. torchvision.transforms.ToTensor()).") from None


def as_imageset(data: ImageSet | Dataset, class_names: Sequence[str] | None, name: str) -> ImageSet:
    """An in-memory ImageSet from an ImageSet or a map-style dataset of (image, label) pairs."""
    if isinstance(data, ImageSet):
        return data
    try:
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
    except TypeError as e:
        raise DataError(f"{name}: expected an ImageSet or a map-style Dataset with len(), got {type(data).__name__}.") from e
    if not items:
        raise DataError(f"{name} is empty: it holds no images.")
    pixels = [_image_tensor(x, i, name) for i, (x, _) in enumerate(items)]
    odd = next((i for i, x in enumerate(pixels) if x.shape != pixels[0].shape), None)
    if odd is not None:  # torch.stack's error names neither the dataset nor the fix
        raise DataError(f"{name}: image {odd} has shape {tuple(pixels[odd].shape)}, image 0 "
                        f"{tuple(pixels[0].shape)}; a model takes one image size: resize them to one size.")
    bad = next((i for i, (_, y) in enumerate(items) if not _class_number(y)), None)
    if bad is not None:
        raise DataError(f"{name}: the label of example {bad} is {shown(items[bad][1])}, not a class number; labels must "
                        f"be integers 0..K-1 (an int or a one-element integer tensor), with class_names for their names.")
    images = torch.stack(pixels)
    if images.dtype.is_floating_point:
        if not bool(torch.isfinite(images).all()):
            where = int((~torch.isfinite(images)).flatten(1).any(1).nonzero()[0])
            raise DataError(f"{name}: image {where} holds NaN or infinite pixel values; replace or drop it.")
        if float(images.min()) < 0 or float(images.max()) > 1:
            raise DataError(f"{name}: float images must lie in [0, 1] (found {float(images.min()):.3g}.."
                            f"{float(images.max()):.3g}); move normalisation into the model.")
        images = (images * 255).round().to(torch.uint8)
    if images.dim() == 3:
        images = images[:, None]
    labels = torch.tensor([int(y) for _, y in items], dtype=torch.long)
    if not class_names and int(labels.max()) >= len(labels):  # a name per class up to it: a label of 10**12, a hang
        raise DataError(f"{name}: label {int(labels.max())} implies more classes than its {len(labels)} examples; "
                        f"labels must be class numbers 0..K-1. Renumber them, or pass class_names.")
    names = tuple(class_names) if class_names else tuple(str(i) for i in range(int(labels.max()) + 1))
    return ImageSet(images.contiguous(), labels, names, name)


def analyze(model: nn.Module, eval_data: ImageSet | Dataset, *, train_data: ImageSet | Dataset | None = None,
            class_names: Sequence[str] | None = None, layers: Sequence[str] | None = None, epochs: int = 0,
            seed: int = 0, lr: float = 1e-3, batch_size: int = 64, warehouse: str | Path | None = None,
            run_id: str | None = None, dataset_name: str = "custom", device: str = "cpu",
            images: ImageConfig | None = ImageConfig(), executor: str | Executor = "in-process",
            ray_address: str | None = None, threads: int = DEFAULT_THREADS, ablate: str = "zero") -> RunSummary:
    """Probe every unit of ``model`` on ``eval_data`` and publish a run; train first if ``epochs > 0``.

    Without ``train_data`` the evaluation set stands in for it (its accuracy is reported as both).
    ``executor="ray"`` runs evaluation, statistics, ablation and curves on a Ray cluster (``ray_address``, e.g.
    ``auto``; none: a local Ray) with the same results; an ``Executor`` object is used as given
    (and left open, e.g. for several runs). ``threads``: torch threads for every stage
    (``compute.threads``; 0 = every CPU). ``ablate``: ``"zero"`` or ``"mean"`` (docs/metrics.md).
    """
    started = time.perf_counter()
    eval_set = as_imageset(eval_data, class_names, f"{dataset_name}/eval")
    train_set = as_imageset(train_data, eval_set.class_names, f"{dataset_name}/train") if train_data is not None else eval_set
    require_classes(eval_set)  # the statistics compare classes on the evaluation set
    if epochs > 0 and train_data is None:
        raise DataError("training (epochs > 0) needs train_data.")
    probed = model if hasattr(model, "probes") and hasattr(model, "probe_modules") else trace_probes(model, eval_set.shape)
    cfg = RunConfig(model=type(model).__name__, dataset=dataset_name, epochs=epochs, seed=seed, lr=lr,
                    batch_size=batch_size, device=device, layers=tuple(layers) if layers else None,
                    widths=(), eval_dataset=f"{dataset_name}/eval", images=images, threads=threads,
                    ablate=ablate)
    rid = check_run_id(run_id or default_run_id(cfg))
    torch.manual_seed(seed)
    runner = make_executor(executor, ray_address, device=device) if isinstance(executor, str) else executor
    try:
        with RunWriter(Path(warehouse) if warehouse else default_path(), rid) as writer:
            cfg = settle_config(cfg, rid, writer.stages_dir, resume=False)
            return analyze_into(writer, probed, None, Splits(train_set, eval_set), eval_set, cfg,  # type: ignore[arg-type]
                                started, runner)
    finally:
        if isinstance(executor, str):
            runner.close()

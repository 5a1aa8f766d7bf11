"""Live, per-example evidence of what one unit of a published run knows, for the unit page.

The warehouse holds which examples need a unit (``unit_examples``) but not the images; this reads the
run's evaluation set and checkpoint (cached per run by ``compute.run.whatif.load_run``) to show them,
and splits one class's examples by whether the unit fires (``compute.measure.firing``), with the
specificity test: does removing the unit cost the class's examples it fires on more, per unit of
activation removed, than the class's other examples it is active on (``compute.measure.subsets.specificity``)?
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compute.errors import ConfigError
from compute.measure.subsets import Specificity, SubsetEffect, layer_rule, scan_units, specificity
from compute.run.whatif import load_run


@dataclass
class FiringSplit:
    """One class's examples split by whether the unit fires (value above its firing threshold)."""

    cls: int
    fires: SubsetEffect
    silent: SubsetEffect
    specificity: Specificity  # within the class: firing vs other active examples, per unit of activation removed
    mean_fires: np.ndarray | None  # (H, W, C) float in [0, 1], None when the subset is empty
    mean_silent: np.ndarray | None
    mean_class: np.ndarray
    groups_fires: dict[str, int]  # subgroup -> examples among the firing ones (planted datasets)
    groups_silent: dict[str, int]


def _hwc(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 2, 3, 1)


def example_images(run_dir: Path, examples: list[int]) -> np.ndarray:
    """(n, H, W, C) uint8 images of the run's evaluation examples."""
    data = load_run(run_dir).data["eval"]
    idx = np.asarray(examples, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(data)):
        raise ConfigError(f"example indices must lie in 0..{len(data) - 1}.")
    return _hwc(data.images[idx].numpy())


def mean_image(run_dir: Path, examples: list[int]) -> np.ndarray | None:
    """Mean of the examples' images, (H, W, C) in [0, 1]; None for no examples."""
    return None if not len(examples) else example_images(run_dir, examples).mean(0) / 255.0


def firing_split(run_dir: Path, layer: str, unit: int, cls: int) -> FiringSplit:
    """Class ``cls``'s evaluation examples where the unit fires vs where it is silent, and what
    removing the unit does to each."""
    run = load_run(run_dir)
    data = run.data["eval"]
    probes = run.engine.model.probe_modules()
    if layer not in probes:
        raise ConfigError(f"unknown layer {layer!r}; this run's layers: {', '.join(probes)}.")
    if not 0 <= cls < data.n_classes:
        raise ConfigError(f"class {cls} is outside 0..{data.n_classes - 1}.")
    labels = data.labels.numpy()
    in_class = labels == cls
    sub = data.subset(np.flatnonzero(in_class))
    model = run.engine.model
    scan = scan_units(model, probes[layer], [int(unit)], data, layer_rule(model, probes[layer], [int(unit)], data))
    fires = scan.fires[0][in_class]
    images = sub.images.numpy().astype(np.float64) / 255.0

    def mean(mask: np.ndarray) -> np.ndarray | None:
        return _hwc(images[mask]).mean(0) if mask.any() else None

    def groups(mask: np.ndarray) -> dict[str, int]:
        if sub.groups is None:
            return {}
        names, counts = np.unique([str(g) for g in sub.groups[mask]], return_counts=True)
        return dict(zip(names.tolist(), counts.tolist()))

    return FiringSplit(cls, SubsetEffect.of(scan, 0, scan.fires[0] & in_class),
                       SubsetEffect.of(scan, 0, ~scan.fires[0] & in_class), specificity(scan, 0, labels, cls),
                       mean(fires), mean(~fires),
                       _hwc(images).mean(0), groups(fires), groups(~fires))

"""Single-unit zero ablation: the change in loss and accuracy when one unit is clamped to zero.

This is the straightforward method (one full evaluation pass per unit, the unit's post-ReLU output
zeroed by a hook). It is the reference that the fast engine (``compute.ablation.engine``) must reproduce
exactly; the pipeline uses the engine, tests and ``benchmarks/ablation_sweep.py`` use this.
"""

from __future__ import annotations

from torch import nn

from compute.ablation.outcome import LayerAblation, Outcome, outcome
from compute.datasets.sources import ImageSet
from compute.nets.probe import ZeroUnit
from compute.progress import bar


def single_unit_ablation(model: nn.Module, probes: dict[str, nn.Module], n_units: dict[str, int],
                         data: ImageSet, device: str = "cpu") -> tuple[Outcome, dict[str, LayerAblation]]:
    """Ablate every unit of every probed layer, one at a time."""
    base = outcome(model, data, device=device)
    results: dict[str, LayerAblation] = {}
    total = sum(n_units.values())
    progress = bar(None, "ablation", unit="unit", total=total)
    for name, module in probes.items():
        rows = []
        for u in range(n_units[name]):
            progress.update()
            with ZeroUnit(module, [u]):
                rows.append(outcome(model, data, device=device))
        results[name] = LayerAblation.from_outcomes(base, rows)
    progress.close()
    return base, results

"""The explorer's live what-if ablation: the one place the dashboard loads torch, and only on demand.

``compute.run.whatif`` keeps the loaded checkpoint and data cached per run, so after the first call an
ablation of LeNet-5 on the default run takes well under a second.
"""

from __future__ import annotations


import pandas as pd

from warehouse.layout import run_dir


def run(root: str, run_id: str, labels: list[str], split: str) -> tuple[dict[str, float], pd.DataFrame] | str:
    """Ablate the units named ``layer:unit`` together; a summary and per-class table, or an error message."""
    from compute.errors import AtlasError  # torch loads here, when a person asks for an ablation
    from compute.run.whatif import ablate_units

    units: dict[str, list[int]] = {}
    for label in labels:
        layer, _, unit = label.rpartition(":")
        units.setdefault(layer, []).append(int(unit))
    try:
        r = ablate_units(run_dir(root, run_id), units, split=split)
    except AtlasError as e:
        return f"Cannot ablate these units: {e}"
    summary = {"accuracy": r.ablated.accuracy, "acc_delta": r.acc_delta, "loss": r.ablated.loss,
               "loss_delta": r.loss_delta, "n_units": sum(len(u) for u in units.values()), "seconds": r.seconds}
    per_class = pd.DataFrame({"class_name": list(r.class_names), "acc_delta": r.class_acc_delta,
                              "loss_delta": r.class_loss_delta, "accuracy": r.ablated.class_accuracy})
    return summary, per_class
